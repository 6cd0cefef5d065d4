"""MCFA: Multi-level Cross-modal Feature Alignment (Liu et al., 2023) for zero-shot scene classification.

Two VAEs, one per modality (visual features of a backbone, semantic descriptors of the classes), share
one latent space. They are trained with reconstruction, cross-reconstruction and distribution alignment
(CADA-VAE) plus cross-instance contrast (visual-visual, visual-semantic, semantic-visual) on
class-balanced episodes. A tile is labelled by the nearest class latent (cosine between the visual
encoder's mean and the semantic encoder's mean), so a new class needs only its descriptor; or, with
`inference: classifier`, by CADA-VAE's final-stage softmax classifier (the run's classes: the shipped one;
new classes: fitted by rsz-infer on samples of their posteriors, rsz_infer.latent_classifier).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rsz_infer.errors import RszError
from rsz_infer.latent_classifier import fit_plan
from rsz_infer.preprocess import IMAGENET_MEAN, IMAGENET_STD
from rsz_train.config import ABOVE_ZERO, PROBABILITY, ZERO_OR_MORE
from rsz_train.losses import mcfa as losses
from rsz_train.models.backbones import GEOEMBED_MEAN, GEOEMBED_STD, create_resnet, pooled_features
from rsz_train.models.base import ClassSemantics, ExportGraph, RszModel, TaskInfo
from rsz_train.models.frozen import FrozenBackboneMixin, FrozenFeatureCache

SEMANTIC_SOURCES = ("phrases", "sentence", "glove", "attributes")


@dataclass
class MCFAConfig:
    """MCFA settings; the defaults train in minutes on CPU on the embedded 64 px benchmark."""

    # Episodes of 10 classes x 8 images, no augmentation: the frozen-feature cache then serves every
    # epoch after the first, so 25 epochs cost little (chosen on validation ZSL).
    train_defaults: ClassVar[dict] = {
        "epochs": 25,
        "augment": False,
        "classes_per_batch": 10,
        "images_per_class": 8,
    }

    backbone: str = "resnet18"  # any name of rsz_train.models.backbones.create_resnet
    pretrained: str | None = "geoembed"  # geoembed's aerial ResNet-18, None (random) or a checkpoint path
    freeze_backbone: bool = True  # train only the VAEs (fast on CPU); false fine-tunes the backbone too
    cache_features: bool = True  # frozen backbone: memoise features of identical input tiles (CPU speed)
    # Class descriptor fed to the semantic VAE:
    #   "phrases":    the MiniLM description embedding projected onto the task's attribute phrases inside
    #                 the model (rsz_infer.semantics.attribute_vectors), so it exports as sentence -> latent
    #   "sentence":   the raw MiniLM description embedding (384-d)
    #   "glove":      mean GloVe vector of the class name; "attributes": ClassSemantics.attributes
    #   (glove and attributes train and evaluate, but cannot be exported: inference only has descriptions)
    semantic_source: str = "phrases"
    latent_dim: int = 64
    hidden_dim: int = 512  # of the visual encoder and both decoders
    # Hidden width of the semantic encoder; 0 = linear. A few dozen training classes cannot pin down an
    # MLP over the descriptor, and new classes must map sensibly: linear scored higher ZSL on validation.
    semantic_hidden_dim: int = 0
    input_dropout: float = 0.3  # on both VAE inputs: a few training classes must not be memorised
    temperature: float = 0.15  # contrastive temperature; the cosine logit scale is 1 / temperature
    warmup_steps: int = 100  # linear ramp of the KL, cross-reconstruction and alignment weights
    reconstruction_weight: float = 1.0
    cross_reconstruction_weight: float = 1.0
    kl_weight: float = 0.01
    distribution_weight: float = 0.5  # 2-Wasserstein between the visual and semantic Gaussians
    contrast_vv_weight: float = 0.5  # supervised contrast among visual latents
    contrast_vs_weight: float = 1.0  # visual latent vs all class latents (the scoring rule)
    contrast_sv_weight: float = 0.5  # class latent vs the visual latents of the batch
    # "rsz": SupCon's mean of -log over the positives; visual latents contrast with every training class.
    # "authors" (masuqiang/MCFA-Pytorch ContrastiveLoss_new.py): -log of the positives' mean (v2v, s2v),
    # and visual latents contrast with the episode's classes only (v2s), as their batches carry those alone.
    contrast_form: str = "rsz"
    # Inference: "nearest" class latent (cosine; exports as image + semantic graphs, any class file), or
    # "classifier": CADA-VAE's final stage the MCFA paper uses (masuqiang/MCFA-Pytorch vaemodel.py
    # train_classifier): a softmax classifier on latents sampled from the seen images' posteriors
    # (classifier_seen_samples per seen class) and the classes' posteriors (classifier_unseen_samples per
    # unseen class) for GZSL, and on classifier_zsl_samples per unseen class alone for ZSL; it knows only
    # the run's classes (exported as the "classifier" graph).
    inference: str = "nearest"
    classifier_seen_samples: int = 200
    classifier_unseen_samples: int = 400
    classifier_zsl_samples: int = 200
    # the authors' cls_train_steps (single_experiment.py): 23 epochs for the GZSL classifier, 50 for the
    # ZSL one (also what rsz-infer fits new classes with, classifier_fit)
    classifier_epochs: int = 23
    classifier_zsl_epochs: int = 50
    classifier_lr: float = 0.001
    classifier_batch_size: int = 32

    # rsz_train.config.check_range, when the config is read
    ranges: ClassVar[dict] = {
        "latent_dim": ABOVE_ZERO,
        "hidden_dim": ABOVE_ZERO,
        "semantic_hidden_dim": ZERO_OR_MORE,  # 0 = linear
        "input_dropout": PROBABILITY,
        "temperature": ABOVE_ZERO,
        "warmup_steps": ZERO_OR_MORE,
        "reconstruction_weight": ZERO_OR_MORE,
        "cross_reconstruction_weight": ZERO_OR_MORE,
        "kl_weight": ZERO_OR_MORE,
        "distribution_weight": ZERO_OR_MORE,
        "contrast_vv_weight": ZERO_OR_MORE,
        "contrast_vs_weight": ZERO_OR_MORE,
        "contrast_sv_weight": ZERO_OR_MORE,
        "classifier_seen_samples": ABOVE_ZERO,
        "classifier_unseen_samples": ABOVE_ZERO,
        "classifier_zsl_samples": ABOVE_ZERO,
        "classifier_epochs": ABOVE_ZERO,
        "classifier_zsl_epochs": ABOVE_ZERO,
        "classifier_lr": ABOVE_ZERO,
        "classifier_batch_size": ABOVE_ZERO,
    }


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, out_dim))


def unit_rms(x: torch.Tensor) -> torch.Tensor:
    """Scale each row to unit root-mean-square, so a descriptor's reconstruction error weighs the same
    whatever its dimension or raw scale."""
    return F.normalize(x, dim=-1) * math.sqrt(x.shape[-1])


def phrase_attributes(sentence: torch.Tensor, phrases: torch.Tensor) -> torch.Tensor:
    """torch form of rsz_infer.semantics.attribute_vectors (the tests check they agree), so that it is part
    of the exported semantic graph: centred cosine to each phrase, L2-normalised per class."""
    cosine = F.normalize(sentence, dim=-1) @ F.normalize(phrases, dim=-1).T
    return F.normalize(cosine - cosine.mean(dim=-1, keepdim=True), dim=-1)


class GaussianEncoder(nn.Module):
    """features [N, F] -> (mu, logvar) [N, latent]; an MLP with one hidden layer, or linear (hidden 0)."""

    def __init__(self, in_dim: int, hidden: int, latent: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.net = _mlp(in_dim, hidden, 2 * latent) if hidden > 0 else nn.Linear(in_dim, 2 * latent)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(self.dropout(x)).chunk(2, dim=-1)
        return mu, logvar


class BackboneFeatures(nn.Module):
    """image -> the global-average-pooled maps of every backbone stage, concatenated [B, sum C]
    (the "multi-level" visual features: low stages see textures and small objects, high stages layout)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat(pooled_features(self.backbone(images)), dim=1)


class SemanticFeatures(nn.Module):
    """class descriptor [C, E] -> the semantic VAE's input: optionally projected onto the attribute
    phrases, then scaled to unit RMS."""

    def __init__(self, phrase_embeddings: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("phrases", phrase_embeddings)

    def forward(self, descriptor: torch.Tensor) -> torch.Tensor:
        if self.phrases is not None:
            descriptor = phrase_attributes(descriptor, self.phrases)
        return unit_rms(descriptor)


class _Chain(nn.Module):
    """Export wrapper: features module, then an optional standardiser, then the encoder's mean (and, with
    `posterior`, its logvar too)."""

    def __init__(
        self, features: nn.Module, standardise: nn.Module, encoder: GaussianEncoder, posterior: bool = False
    ) -> None:
        super().__init__()
        self.features, self.standardise, self.encoder = features, standardise, encoder
        self.posterior = posterior

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(self.standardise(self.features(x)))
        return (mu, logvar) if self.posterior else mu


INFERENCES = ("nearest", "classifier")
CONTRAST_FORMS = ("rsz", "authors")
CLASSIFIER_BETAS = (0.5, 0.999)  # CADA-VAE's final classifier's Adam


def latent_samples(
    mu: torch.Tensor, logvar: torch.Tensor, labels: torch.Tensor, per_class: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` latents of each label: its posteriors cycled up to that count (CADA-VAE's
    sample_train_data_on_sample_per_class_basis repeats features the same way), each z = mu + sigma * eps."""
    zs, ys = [], []
    for c in labels.unique(sorted=True):
        rows = torch.nonzero(labels == c).flatten()
        pick = rows[torch.arange(per_class) % len(rows)]
        eps = torch.randn(per_class, mu.shape[1], generator=generator)
        zs.append(mu[pick] + eps * torch.exp(0.5 * logvar[pick]))
        ys.append(torch.full((per_class,), int(c), dtype=torch.long))
    return torch.cat(zs), torch.cat(ys)


def fit_latent_classifier(
    z: torch.Tensor, y: torch.Tensor, num_classes: int, epochs: int, lr: float, batch_size: int, seed: int
) -> nn.Linear:
    """A linear softmax classifier on latents (cross-entropy, Adam), CADA-VAE's LINEAR_LOGSOFTMAX.

    The initial weights (nn.Linear's default distribution) and the epochs' sample orders come from
    rsz_infer.latent_classifier.fit_plan, so rsz-infer's numpy fit of new classes follows the same path."""
    weight, bias, orders = fit_plan(len(z), z.shape[1], num_classes, epochs, seed)
    classifier = nn.Linear(z.shape[1], num_classes)
    with torch.no_grad():
        classifier.weight.copy_(torch.from_numpy(weight))
        classifier.bias.copy_(torch.from_numpy(bias))
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr, betas=CLASSIFIER_BETAS)
    for order in orders:
        order = torch.from_numpy(order)
        for start in range(0, len(z), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(classifier(z[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return classifier.eval()


class MCFA(FrozenBackboneMixin, RszModel):
    kind = "mcfa"
    scoring_rule = "cosine"
    class_embedding = "semantic"

    def __init__(self, config: MCFAConfig, task: TaskInfo) -> None:
        super().__init__()
        source = config.semantic_source
        if source not in SEMANTIC_SOURCES:
            raise RszError(f"semantic_source={source!r}: expected one of {', '.join(SEMANTIC_SOURCES)}")
        if config.inference not in INFERENCES:
            raise RszError(f"model.inference {config.inference!r}: expected {' or '.join(INFERENCES)}")
        if config.contrast_form not in CONTRAST_FORMS:
            raise RszError(
                f"model.contrast_form {config.contrast_form!r}: expected {' or '.join(CONTRAST_FORMS)}"
            )
        self.config, self.task = config, task
        self.visual = BackboneFeatures(create_resnet(config.backbone, pretrained=config.pretrained))
        # The preprocessing the backbone was trained with (rsz_train.runs.preprocess_spec reads these).
        geoembed = config.pretrained == "geoembed"
        self.image_mean = GEOEMBED_MEAN if geoembed else IMAGENET_MEAN
        self.image_std = GEOEMBED_STD if geoembed else IMAGENET_STD
        if config.freeze_backbone:
            self.visual.backbone.requires_grad_(False)
        self.feature_cache = (
            FrozenFeatureCache() if config.freeze_backbone and config.cache_features else None
        )
        visual_dim = sum(self.visual.backbone.stage_channels)
        # Stages differ in scale by orders of magnitude; standardising each feature (running statistics,
        # part of the exported graph) keeps the large ones from drowning the rest.
        self.visual_standardise = nn.BatchNorm1d(visual_dim, affine=False)

        phrases = None
        if source == "phrases":
            if len(task.attribute_phrases) < 2:
                raise RszError(
                    f"MCFA needs attribute phrases (model.semantic_source 'phrases', the default), the data "
                    f"has {len(task.attribute_phrases)}: pass --attributes FILE ('name<TAB>group<TAB>phrase' "
                    "per line), or set model.semantic_source: sentence in a --config YAML (the description "
                    "embedding itself, no phrases)"
                )
            from rsz_train.text import encode_sentences

            phrases = torch.from_numpy(encode_sentences(list(task.attribute_phrases)))
        self.semantic = SemanticFeatures(phrases)
        semantic_dim = {
            "phrases": len(task.attribute_phrases),
            "sentence": 384,
            "glove": 50,
            "attributes": len(task.attribute_names),
        }[source]
        if semantic_dim == 0:
            raise RszError("semantic_source='attributes': the task has no attributes")
        h, z, p = config.hidden_dim, config.latent_dim, config.input_dropout
        self.visual_encoder = GaussianEncoder(visual_dim, h, z, p)
        self.semantic_encoder = GaussianEncoder(semantic_dim, config.semantic_hidden_dim, z, p)
        self.visual_decoder = _mlp(z, h, visual_dim)
        self.semantic_decoder = _mlp(z, h, semantic_dim)
        self.steps_done = 0  # drives the warm-up; restarts with a resumed run, which only re-ramps it
        # The final-stage classifier of a finished run (classes in task.extra["classifier_classes"]).
        classes = task.extra.get("classifier_classes")
        self.latent_classifier = nn.Linear(z, len(classes)) if classes else None

    def frozen_backbone(self) -> nn.Module | None:
        return self.visual.backbone if self.config.freeze_backbone else None

    # --- the RszModel interface -------------------------------------------------------------------

    def class_inputs(self, semantics: ClassSemantics, device: torch.device | str = "cpu") -> torch.Tensor:
        source = self.config.semantic_source
        matrix = getattr(semantics, "sentence" if source == "phrases" else source)
        if matrix is None:
            raise RszError(f"semantic_source={source!r}: these class semantics have no {source} vectors")
        return torch.as_tensor(np.asarray(matrix), dtype=torch.float32, device=device)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Standardised multi-level backbone features [B, sum C] (the visual VAE's input)."""
        if not self.config.freeze_backbone:
            raw = self.visual(images)
        elif self.feature_cache is not None:
            with torch.no_grad():
                raw = self.feature_cache(self.visual, images)
        else:
            with torch.no_grad():
                raw = self.visual(images)
        return self.visual_standardise(raw)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual_encoder(self.image_features(images))[0]

    def encode_classes(self, class_inputs: torch.Tensor) -> torch.Tensor:
        return self.semantic_encoder(self.semantic(class_inputs))[0]

    def image_posteriors(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.visual_encoder(self.image_features(images))

    def class_posteriors(self, class_inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.semantic_encoder(self.semantic(class_inputs))

    def final_stage(
        self,
        seen_posteriors: tuple[torch.Tensor, torch.Tensor],
        seen_labels: torch.Tensor,
        class_inputs: torch.Tensor,
        num_seen: int,
        seed: int,
    ) -> tuple[nn.Linear, nn.Linear]:
        """CADA-VAE's final stage -> (GZSL classifier over seen + unseen classes, ZSL classifier over the
        unseen ones). `seen_labels` index the first `num_seen` rows of `class_inputs` (seen, then unseen)."""
        cfg = self.config
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            class_mu, class_logvar = (t.float().cpu() for t in self.class_posteriors(class_inputs))
            unseen = torch.arange(num_seen, len(class_inputs))
            z_seen, y_seen = latent_samples(
                *seen_posteriors, seen_labels, cfg.classifier_seen_samples, generator
            )
            z_unseen, y_unseen = latent_samples(
                class_mu[unseen], class_logvar[unseen], unseen, cfg.classifier_unseen_samples, generator
            )
            z_zsl, y_zsl = latent_samples(
                class_mu[unseen],
                class_logvar[unseen],
                unseen - num_seen,
                cfg.classifier_zsl_samples,
                generator,
            )
        fit = dict(lr=cfg.classifier_lr, batch_size=cfg.classifier_batch_size)
        gzsl = fit_latent_classifier(
            torch.cat([z_seen, z_unseen]),
            torch.cat([y_seen, y_unseen]),
            len(class_inputs),
            epochs=cfg.classifier_epochs,
            seed=seed,
            **fit,
        )
        zsl = fit_latent_classifier(
            z_zsl, y_zsl, len(unseen), epochs=cfg.classifier_zsl_epochs, seed=seed + 1, **fit
        )
        return gzsl, zsl

    def classifier_fit(self) -> dict:
        """How rsz-infer fits the final stage for a class file's new classes (manifest extra
        "classifier_fit", read by rsz_infer.latent_classifier.FitSettings): CADA-VAE's ZSL classifier."""
        cfg = self.config
        return {
            "samples_per_class": cfg.classifier_zsl_samples,
            "epochs": cfg.classifier_zsl_epochs,
            "lr": cfg.classifier_lr,
            "batch_size": cfg.classifier_batch_size,
            "betas": list(CLASSIFIER_BETAS),
            "seed": 0,
        }

    def keep_classifier(self, classifier: nn.Linear, class_names: list[str]) -> None:
        """Keep the test GZSL classifier in the model (weights and the task, so load_run rebuilds it)."""
        self.latent_classifier = classifier
        self.task.extra["classifier_classes"] = list(class_names)

    def logit_scale(self) -> float:
        return 1.0 / self.config.temperature

    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg = self.config
        labels = batch["label"]
        visual = self.image_features(batch["image"])
        all_semantics = self.semantic(batch["class_inputs"])
        semantic = all_semantics[labels]

        mu_v, logvar_v = self.visual_encoder(visual)
        mu_s, logvar_s = self.semantic_encoder(semantic)
        z_v, z_s = losses.reparameterize(mu_v, logvar_v), losses.reparameterize(mu_s, logvar_s)
        target_v, target_s = visual.detach(), semantic

        parts = {
            "reconstruction": losses.reconstruction_loss(self.visual_decoder(z_v), target_v)
            + losses.reconstruction_loss(self.semantic_decoder(z_s), target_s),
            "cross_reconstruction": losses.reconstruction_loss(self.visual_decoder(z_s), target_v)
            + losses.reconstruction_loss(self.semantic_decoder(z_v), target_s),
            "kl": losses.kl_to_standard_normal(mu_v, logvar_v) + losses.kl_to_standard_normal(mu_s, logvar_s),
            "distribution": losses.wasserstein_gaussians(mu_v, logvar_v, mu_s, logvar_s),
        }
        class_mu = self.semantic_encoder(all_semantics)[0]
        present = labels.unique()
        authors = cfg.contrast_form == "authors"
        # the class latents a visual latent contrasts with: the episode's (authors) or every training class
        vs_ids = present if authors else torch.arange(len(class_mu), device=labels.device)
        t, pool = cfg.temperature, {"mean_in_log": authors}
        parts["contrast_vv"] = losses.supervised_contrastive(
            mu_v, mu_v, labels, labels, t, exclude_self=True, **pool
        )
        parts["contrast_vs"] = losses.supervised_contrastive(mu_v, class_mu[vs_ids], labels, vs_ids, t)
        parts["contrast_sv"] = losses.supervised_contrastive(
            class_mu[present], mu_v, present, labels, t, **pool
        )

        ramp = min(1.0, (self.steps_done + 1) / max(cfg.warmup_steps, 1))
        if self.training:
            self.steps_done += 1
        weights = {
            "reconstruction": cfg.reconstruction_weight,
            "cross_reconstruction": cfg.cross_reconstruction_weight * ramp,
            "kl": cfg.kl_weight * ramp,
            "distribution": cfg.distribution_weight * ramp,
            "contrast_vv": cfg.contrast_vv_weight,
            "contrast_vs": cfg.contrast_vs_weight,
            "contrast_sv": cfg.contrast_sv_weight,
        }
        parts["loss"] = sum(weights[name] * value for name, value in parts.items())
        return parts

    def export_graphs(self) -> list[ExportGraph]:
        from rsz_train.text import text_export_graph

        if self.config.semantic_source not in ("phrases", "sentence"):
            raise RszError(
                f"semantic_source={self.config.semantic_source!r}: only 'phrases' and 'sentence' models "
                "can be exported (inference derives class semantics from descriptions with MiniLM)"
            )
        self.eval()
        size = self.task.image_size
        image = ExportGraph(
            role="image",
            module=_Chain(self.visual, self.visual_standardise, self.visual_encoder),
            example_inputs=(torch.randn(2, 3, size, size),),
            input_names=["image"],
            output_names=["embedding"],
            dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}},
        )
        semantic = ExportGraph(
            role="semantic",
            # the class posterior: mu is the class embedding; logvar lets rsz-infer sample latents of new
            # classes for the final-stage classifier (rsz_infer.latent_classifier)
            module=_Chain(self.semantic, nn.Identity(), self.semantic_encoder, posterior=True),
            example_inputs=(F.normalize(torch.randn(3, 384), dim=-1),),
            input_names=["semantic"],
            output_names=["embedding", "logvar"],
            dynamic_axes={
                "semantic": {0: "classes"},
                "embedding": {0: "classes"},
                "logvar": {0: "classes"},
            },
        )
        graphs = [image, semantic, text_export_graph()]
        if self.latent_classifier is not None:
            graphs.append(
                ExportGraph(
                    role="classifier",
                    module=self.latent_classifier.eval(),
                    example_inputs=(torch.randn(2, self.config.latent_dim),),
                    input_names=["embedding"],
                    output_names=["logits"],
                    dynamic_axes={"embedding": {0: "batch"}, "logits": {0: "batch"}},
                )
            )
        return graphs


def build_mcfa(config: MCFAConfig, task: TaskInfo) -> MCFA:
    return MCFA(config, task)
