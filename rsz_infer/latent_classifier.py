"""MCFA's paper-size labeling, CADA-VAE's final stage, at inference time and without PyTorch.

A bundle exported from an MCFA run with `model.inference: classifier` ships a `classifier` graph (latent ->
logits over `Manifest.extra["classifier_classes"]`, the run's seen + unseen classes) and a semantic graph
with the class posterior (`embedding` = mu, `logvar`). A class file then labels by one of three rules
(`choose_rule`):
- SHIPPED: its classes are exactly the run's classes (any order): the shipped graph, columns reordered;
- FITTED: other classes: CADA-VAE's ZSL final stage for them, here: `samples_per_class` latents sampled
  from each class's posterior, a linear softmax classifier fitted on them (cross-entropy, Adam) with the
  settings the run trained its own with (`Manifest.extra["classifier_fit"]`), cached like class embeddings;
- NEAREST: a bundle exported before the semantic graph gave `logvar`: the nearest class latent
  (rsz_infer.scoring.class_logits), the rule of MCFA bundles without a classifier graph.
rsz_train.models.mcfa.fit_latent_classifier (PyTorch, training) draws its initial weights and batch orders
from `fit_plan`, so for the same samples it follows the same path as `fit_softmax_classifier` (the tests
compare them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsz_infer.bundle import MANIFEST, Manifest
from rsz_infer.classfile import ClassEntry, class_name_key
from rsz_infer.errors import RszError
from rsz_infer.runners.base import Runner

SHIPPED = "shipped classifier"
FITTED = "classifier fitted on the class file"
NEAREST = "nearest class latent"
ADAM_EPS = 1e-8  # torch.optim.Adam's default


@dataclass
class FitSettings:
    """How the final-stage classifier is fitted (manifest extra "classifier_fit", written by rsz-export)."""

    samples_per_class: int  # the run's classifier_zsl_samples
    epochs: int
    lr: float
    batch_size: int
    betas: tuple[float, float]
    seed: int

    @classmethod
    def from_manifest(cls, manifest: Manifest, where: str) -> FitSettings:
        d = manifest.extra.get("classifier_fit")
        try:
            settings = cls(
                samples_per_class=int(d["samples_per_class"]),
                epochs=int(d["epochs"]),
                lr=float(d["lr"]),
                batch_size=int(d["batch_size"]),
                betas=(float(d["betas"][0]), float(d["betas"][1])),
                seed=int(d["seed"]),
            )
        except (KeyError, IndexError, TypeError, ValueError):
            raise RszError(f"{where}: malformed extra.classifier_fit {d!r}") from None
        if min(settings.samples_per_class, settings.epochs, settings.batch_size) < 1 or not settings.lr > 0:
            raise RszError(f"{where}: extra.classifier_fit needs positive sizes and lr, got {d!r}")
        return settings


def choose_rule(manifest: Manifest, entries: list[ClassEntry]) -> tuple[str | None, str | None]:
    """(rule, note): which rule labels these classes with this bundle (None: a bundle without a classifier
    graph, which has only its own rule), and a line when it had to fall back."""
    if "classifier" not in manifest.graphs:
        return None, None
    shipped = manifest.extra.get("classifier_classes")
    logits = next((t for t in manifest.graphs["classifier"].outputs if t.name == "logits"), None)
    if (
        not isinstance(shipped, list)
        or not all(isinstance(c, str) for c in shipped)
        or logits is None
        or logits.shape[-1:] != [len(shipped)]
    ):
        raise RszError(
            f"{MANIFEST}: the classifier graph needs `logits` over extra.classifier_classes (a list of names)"
        )
    if sorted(map(class_name_key, shipped)) == sorted(class_name_key(e.name) for e in entries):
        return SHIPPED, None
    semantic = manifest.graphs.get("semantic")
    if semantic is None or "logvar" not in {t.name for t in semantic.outputs}:
        return NEAREST, (
            "the bundle's semantic graph has no logvar output (exported by an older rsz): classes other than "
            "its classifier's are labeled by the nearest class latent (export it again for the classifier)"
        )
    return FITTED, None


def fit_plan(
    n: int, dim: int, num_classes: int, epochs: int, seed: int
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(initial weight [K, D], initial bias [K], one sample order per epoch): torch.nn.Linear's default
    initialisation (uniform within +-1/sqrt(D)) and shuffled epochs, drawn by numpy from `seed`."""
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(dim)
    weight = rng.uniform(-bound, bound, (num_classes, dim)).astype(np.float32)
    bias = rng.uniform(-bound, bound, num_classes).astype(np.float32)
    return weight, bias, [rng.permutation(n) for _ in range(epochs)]


def fit_softmax_classifier(
    z: np.ndarray, y: np.ndarray, num_classes: int, settings: FitSettings
) -> tuple[np.ndarray, np.ndarray]:
    """(weight [K, D], bias [K]) of a linear softmax classifier fitted on latents `z` [N, D] with labels `y`:
    mean cross-entropy per batch, Adam (torch.optim.Adam's update, float32) as fit_latent_classifier."""
    z = np.ascontiguousarray(z, dtype=np.float32)
    weight, bias, orders = fit_plan(len(z), z.shape[1], num_classes, settings.epochs, settings.seed)
    params = [weight, bias]
    first = [np.zeros_like(p) for p in params]
    second = [np.zeros_like(p) for p in params]
    beta1, beta2 = settings.betas
    step = 0
    for order in orders:
        for start in range(0, len(z), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            x = z[idx]
            logits = x @ weight.T + bias
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            probs[np.arange(len(idx)), y[idx]] -= 1.0  # d(mean cross-entropy)/d(logits), times the batch
            probs /= len(idx)
            grads = [probs.T @ x, probs.sum(axis=0)]
            step += 1
            step_size = settings.lr / (1.0 - beta1**step)
            root_correction = np.sqrt(1.0 - beta2**step)
            for p, g, m, v in zip(params, grads, first, second):
                m *= beta1
                m += (1.0 - beta1) * g
                v *= beta2
                v += (1.0 - beta2) * g * g
                p -= step_size * m / (np.sqrt(v) / root_correction + ADAM_EPS)
    return weight, bias


def class_latent_samples(
    mu: np.ndarray, logvar: np.ndarray, per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(z [C * per_class, D], labels): per class, z = mu + exp(logvar / 2) * eps with eps ~ N(0, I),
    seeded (the same class file gives the same samples)."""
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal((len(mu), per_class, mu.shape[1])).astype(np.float32)
    z = mu[:, None, :] + np.exp(0.5 * logvar)[:, None, :] * eps
    return z.reshape(-1, mu.shape[1]), np.repeat(np.arange(len(mu)), per_class)


class LatentClassifier:
    """Logits over the class file's classes, in its order, from the image graph's embeddings."""

    def __init__(self, logits: Callable[[np.ndarray], np.ndarray], close: Callable[[], None] | None = None):
        self._logits, self._close = logits, close

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        return self._logits(embeddings)

    def close(self) -> None:
        if self._close is not None:
            self._close()


def open_classifier(
    bundle_dir: Path | str,
    manifest: Manifest,
    entries: list[ClassEntry],
    rule: str | None,
    open_runner: Callable[[str], Runner],
    use_cache: bool = True,
) -> LatentClassifier | None:
    """The classifier of `rule` (choose_rule) for the entries; None where no classifier labels."""
    if rule == SHIPPED:
        position = {class_name_key(c): i for i, c in enumerate(manifest.extra["classifier_classes"])}
        columns = np.array([position[class_name_key(e.name)] for e in entries])
        runner = open_runner("classifier")
        return LatentClassifier(
            lambda emb: runner.infer({"embedding": emb})["logits"][:, columns], runner.close
        )
    if rule == FITTED:
        weight, bias = fitted_weights(Path(bundle_dir), manifest, entries, open_runner, use_cache)
        return LatentClassifier(lambda emb: emb.astype(np.float32) @ weight.T + bias)
    return None


def fitted_weights(
    bundle_dir: Path,
    manifest: Manifest,
    entries: list[ClassEntry],
    open_runner: Callable[[str], Runner],
    use_cache: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The FITTED classifier's (weight, bias), from the cache (one .npy [K, D + 1]: weight, then bias) or
    fitted on samples of the classes' posteriors (the semantic graph's embedding and logvar)."""
    from rsz_infer.class_embeddings import cached_class_array, semantic_outputs

    settings = FitSettings.from_manifest(manifest, str(bundle_dir / MANIFEST))

    def fit() -> np.ndarray:
        posterior = semantic_outputs(bundle_dir, manifest, entries, open_runner)
        z, y = class_latent_samples(
            posterior["embedding"], posterior["logvar"], settings.samples_per_class, settings.seed
        )
        weight, bias = fit_softmax_classifier(z, y, len(entries), settings)
        return np.concatenate([weight, bias[:, None]], axis=1).astype(np.float32)

    shape = (len(entries), manifest.embedding_dim + 1)
    packed = cached_class_array(
        "latent_classifiers",
        bundle_dir,
        entries,
        lambda cached: cached.shape == shape and cached.dtype == np.float32,
        fit,
        use_cache,
    )
    return packed[:, :-1], packed[:, -1]
