"""Class file -> class embeddings through the bundle's own text graphs, cached by content hash.

The rule comes from the manifest (`class_embedding`):
- "attributes" (DSVA): text graph on descriptions (or their clauses) and on the attribute phrases ->
  attribute_vectors [C, A]
- "semantic" (MCFA): text graph on descriptions -> semantic graph -> [C, D] (its `embedding`, the class
  posterior's mean; `semantic_outputs` also gives its `logvar` for rsz_infer.latent_classifier)
- "text" (MSA): text graph on text_prompt.format(name=, description=) -> [C, D]
- "templates" (CLIP): text graph on every prompt of rsz_infer.prompts.class_prompts -> normalised mean
Embeddings are computed once per (bundle, class file) and kept as a small .npy in the cache folder
($RSZ_CACHE_DIR, default ~/.cache/rsz), so labeling many folders with one class file pays once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rsz_infer.bundle import MANIFEST, Manifest, manifest_sha256
from rsz_infer.classfile import ClassEntry, class_file_hash
from rsz_infer.errors import RszError
from rsz_infer.prompts import class_prompts
from rsz_infer.runners.base import Runner
from rsz_infer.scoring import l2_normalize
from rsz_infer.semantics import description_attribute_vectors, description_clauses
from rsz_infer.tokenizer import Tokenizer

TEXT_BATCH = 64

# role -> Runner; lets callers choose the backend and open graphs only when the cache misses
OpenRunner = Callable[[str], Runner]


def cache_dir() -> Path:
    return Path(os.environ.get("RSZ_CACHE_DIR") or Path.home() / ".cache" / "rsz")


def load_tokenizer(bundle_dir: Path | str, manifest: Manifest) -> Tokenizer:
    return Tokenizer(Path(bundle_dir) / manifest.tokenizer, manifest.max_text_length)


def encode_texts(runner: Runner, tokenizer: Tokenizer, texts: list[str]) -> dict[str, np.ndarray]:
    """All outputs of the text graph for the texts, in batches; `tokens` (MSA) padded to one length."""
    parts: list[dict[str, np.ndarray]] = []
    step = runner.batch_size(TEXT_BATCH)  # engines and fixed graphs take some sizes only
    smallest = runner.batch_range[0]
    for start in range(0, len(texts), step):
        chunk = texts[start : start + step]
        padded = chunk + [chunk[-1]] * (smallest - len(chunk))  # repeat a text up to the smallest batch
        feeds = tokenizer.encode(padded)
        out = runner.infer({k: feeds[k] for k in runner.input_names})
        out["attention_mask"] = feeds["attention_mask"]
        parts.append({name: value[: len(chunk)] for name, value in out.items()})
    result = {}
    for name in parts[0]:
        arrays = [p[name] for p in parts]
        if arrays[0].ndim >= 2 and name in ("tokens", "attention_mask"):
            length = max(a.shape[1] for a in arrays)
            arrays = [np.pad(a, [(0, 0), (0, length - a.shape[1])] + [(0, 0)] * (a.ndim - 2)) for a in arrays]
        result[name] = np.concatenate(arrays)
    return result


def class_embeddings(
    bundle_dir: Path | str,
    manifest: Manifest,
    entries: list[ClassEntry],
    open_runner: OpenRunner,
    use_cache: bool = True,
) -> np.ndarray:
    """[C, D] float32 class embeddings for the entries, by the manifest's class_embedding rule."""
    bundle_dir = Path(bundle_dir)
    return cached_class_array(
        "class_embeddings",
        bundle_dir,
        entries,
        lambda cached: cached.shape[0] == len(entries),
        lambda: _compute(bundle_dir, manifest, entries, open_runner).astype(np.float32),
        use_cache,
    )


def cached_class_array(
    kind: str,
    bundle_dir: Path,
    entries: list[ClassEntry],
    valid: Callable[[np.ndarray], bool],
    compute: Callable[[], np.ndarray],
    use_cache: bool = True,
) -> np.ndarray:
    """An array made from a bundle and a class file, cached under cache_dir()/kind keyed by both hashes
    (.npy, never pickled); a cached array that is unreadable or not `valid` is computed again."""
    key = f"{manifest_sha256(bundle_dir)[:16]}-{class_file_hash(entries)[:16]}"
    cache_file = cache_dir() / kind / f"{key}.npy"
    if use_cache and cache_file.is_file():
        try:
            cached = np.load(cache_file, allow_pickle=False)
            if valid(cached):
                return cached
        except (OSError, ValueError):
            pass  # unreadable cache: recompute and overwrite
    array = compute()
    if use_cache:
        _save_quietly(cache_file, array)
    return array


def _compute(bundle_dir: Path, manifest: Manifest, entries: list[ClassEntry], open_runner: OpenRunner):
    rule = manifest.class_embedding
    if rule not in ("attributes", "semantic", "text", "templates"):
        raise RszError(f"{bundle_dir / MANIFEST}: unknown class_embedding {rule!r}")
    if rule == "semantic":
        return semantic_outputs(bundle_dir, manifest, entries, open_runner)["embedding"]
    tokenizer = load_tokenizer(bundle_dir, manifest)
    text_runner = open_runner("text")
    try:
        if rule == "templates":
            return _template_means(text_runner, tokenizer, entries, manifest.prompt_templates)
        if rule == "text":
            prompts = [prompt for (prompt,) in class_texts(manifest, entries)]
            return encode_texts(text_runner, tokenizer, prompts)["embedding"]
        if not manifest.attribute_phrases:
            raise RszError(f"{bundle_dir / MANIFEST}: class_embedding 'attributes' but no attribute_phrases")
        if len(manifest.attribute_phrases) != manifest.embedding_dim:  # one phrase per embedding column
            raise RszError(
                f"{bundle_dir / MANIFEST}: {len(manifest.attribute_phrases)} attribute_phrases but "
                f"embedding_dim {manifest.embedding_dim}"
            )
        phrases = encode_texts(text_runner, tokenizer, manifest.attribute_phrases)["embedding"]
        return description_attribute_vectors(
            [e.description for e in entries],
            lambda texts: encode_texts(text_runner, tokenizer, texts)["embedding"],
            phrases,
            manifest.phrase_ridge,
            manifest.description_clauses,
        )
    finally:
        text_runner.close()


def semantic_outputs(
    bundle_dir: Path, manifest: Manifest, entries: list[ClassEntry], open_runner: OpenRunner
) -> dict[str, np.ndarray]:
    """Every output of the semantic graph (MCFA) for the entries' descriptions: `embedding` [C, D], and
    `logvar` [C, D] in bundles exported with it."""
    tokenizer = load_tokenizer(bundle_dir, manifest)
    text_runner = open_runner("text")
    try:
        descriptions = encode_texts(text_runner, tokenizer, [e.description for e in entries])["embedding"]
    finally:
        text_runner.close()
    semantic_runner = open_runner("semantic")
    try:
        return semantic_runner.infer({"semantic": descriptions.astype(np.float32)})
    finally:
        semantic_runner.close()


def class_texts(manifest: Manifest, entries: list[ClassEntry]) -> list[list[str]]:
    """Per class, the texts the bundle's rule reads for it: its prompts ("templates"), its prompt ("text"),
    its clauses ("attributes" with description_clauses), else its description ("attributes", "semantic")."""
    if manifest.class_embedding == "templates":
        return [class_prompts(e, manifest.prompt_templates) for e in entries]
    if manifest.class_embedding == "text":
        return [[manifest.text_prompt.format(name=e.name, description=e.description)] for e in entries]
    if manifest.class_embedding == "attributes" and manifest.description_clauses:
        return [description_clauses(e.description) for e in entries]
    return [[e.description] for e in entries]


def cut_texts_note(bundle_dir: Path | str, manifest: Manifest, entries: list[ClassEntry]) -> str | None:
    """A note naming the classes whose text (description, prompt) is longer than the text graph reads
    (`max_text_length` tokens), else None. The rest is dropped without a trace: two classes alike up to
    the cut get one embedding and the same scores."""
    tokenizer = load_tokenizer(bundle_dir, manifest)
    cut = [e.name for e, t in zip(entries, class_texts(manifest, entries)) if any(tokenizer.cut(t))]
    if not cut:
        return None
    more = ", ..." if len(cut) > 3 else ""
    return (
        f"{len(cut)} class(es) ({', '.join(cut[:3])}{more}) have a description longer than the "
        f"{manifest.max_text_length} tokens the model reads: the rest is ignored (shorten it)"
    )


def _template_means(runner: Runner, tokenizer: Tokenizer, entries: list[ClassEntry], templates: list[str]):
    """[C, D]: per class, the normalised mean of its prompts' normalised embeddings (prompt ensemble)."""
    if not templates:
        raise RszError("manifest: class_embedding 'templates' but no prompt_templates")
    prompts = [class_prompts(entry, templates) for entry in entries]
    flat = [p for ps in prompts for p in ps]
    emb = l2_normalize(encode_texts(runner, tokenizer, flat)["embedding"].astype(np.float32))
    bounds = np.cumsum([0] + [len(ps) for ps in prompts])
    return l2_normalize(np.stack([emb[a:b].mean(0) for a, b in zip(bounds[:-1], bounds[1:])]))


def _save_quietly(path: Path, array: np.ndarray) -> None:
    """Write the cache atomically; a read-only home only costs the recomputation next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except OSError:
        pass
