"""Class x attribute matrices, generated rather than annotated (DSVA, Xu et al. 2023, Sec. 3.1).

Two routes:
- from images (what the paper describes and its code omits): under a dual image/text encoder, a class's
  value for an attribute is the mean, over that class's training images, of the cosine similarity
  between the image and the attribute phrase. Any dual encoder plugs in through two callables: an MSA
  run trained by rsz (`model_encoders`), or a CLIP model as the paper used, from a CLIP bundle
  (`rsz-export clip`) or straight from a CLIP checkpoint (`dual_encoder`); under CLIP a phrase is the
  bundle's prompt ensemble filled with it (rsz_infer.prompts), as a class is at labeling.
- from text alone (the default for training, and the only route for a class without images): the class
  description against the attribute phrases, rsz_infer.semantics.attribute_vectors through the stock
  MiniLM (`attributes_from_text`); inference computes exactly this for a new class file.

Training mixes them with `train.semantics: images` and `train.dual_encoder_run: runs/msa` (or a CLIP
bundle folder, an open_clip checkpoint file or a Hugging Face CLIPModel folder)
(rsz_train.train.build_semantics -> `generated_attributes`): training classes by the image route, val
and unseen classes (whose images a model may not see) by the text route, every row normalised alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rsz_infer.errors import RszError
from rsz_infer.preprocess import PreprocessSpec
from rsz_infer.scoring import l2_normalize
from rsz_infer.semantics import decorrelate_phrases, normalize_attribute_rows

if TYPE_CHECKING:
    from rsz_train.runs import RunInfo

ImageEncoder = Callable[[np.ndarray], np.ndarray]  # [N, H, W, 3] uint8 -> [N, D] embeddings
TextEncoder = Callable[[list[str]], np.ndarray]  # texts -> [T, D] embeddings


def attributes_from_images(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    attribute_phrases: list[str],
    encode_images: ImageEncoder,
    encode_texts: TextEncoder,
    batch_size: int = 128,
) -> np.ndarray:
    """[C, A] float32: row c is the mean image-phrase cosine over the images with label c.

    `images` [N, H, W, 3] uint8, `labels` [N] in [0, num_classes). A class without images is an error
    (use attributes_from_text for it).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(images) != len(labels):
        raise RszError(f"attributes_from_images: {len(images)} images but {len(labels)} labels")
    missing = sorted(set(range(num_classes)) - set(labels.tolist()))
    if missing:
        raise RszError(f"attributes_from_images: class {missing[0]} has no images (use the text route)")
    phrases = l2_normalize(np.asarray(encode_texts(list(attribute_phrases)), dtype=np.float32))
    sums = np.zeros((num_classes, len(attribute_phrases)), dtype=np.float64)
    for start in range(0, len(images), batch_size):
        emb = l2_normalize(np.asarray(encode_images(images[start : start + batch_size]), dtype=np.float32))
        np.add.at(sums, labels[start : start + batch_size], emb @ phrases.T)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return (sums / counts[:, None]).astype(np.float32)


def attributes_from_text(
    descriptions: list[str], attribute_phrases: list[str], phrase_ridge: float = 0.0, clauses: bool = False
) -> np.ndarray:
    """[C, A] description-derived attribute vectors (stock MiniLM; what inference computes)."""
    from rsz_train.text import class_attribute_vectors

    return class_attribute_vectors(list(descriptions), list(attribute_phrases), phrase_ridge, clauses)


def generated_attributes(
    descriptions: list[str],
    attribute_phrases: list[str],
    images: np.ndarray,
    labels: np.ndarray,
    encode_images: ImageEncoder,
    encode_texts: TextEncoder,
    batch_size: int = 128,
    phrase_ridge: float = 0.0,
    clauses: bool = False,
) -> tuple[np.ndarray, list[str]]:
    """Attribute vectors [C, A] of every class, and the route each took ("images" or "text").

    A class with at least one of `images` (labels index `descriptions`) takes the image route, every
    other class the text route; rows are normalised alike (normalize_attribute_rows). The caller passes
    only images a model may train on: images of val or unseen classes here would leak into training.
    `phrase_ridge` (rsz_infer.semantics.attribute_vectors) applies to both routes, each with its own
    encoder's phrase embeddings, so the rows of both routes follow one rule; `clauses`
    (rsz_infer.semantics.description_clauses) only the text route.
    """
    labels = np.asarray(labels, dtype=np.int64)
    with_images = sorted(set(labels.tolist()))
    if with_images and (with_images[0] < 0 or with_images[-1] >= len(descriptions)):
        raise RszError(f"generated_attributes: labels must index the {len(descriptions)} classes")
    attributes = np.zeros((len(descriptions), len(attribute_phrases)), dtype=np.float32)
    routes = ["text"] * len(descriptions)
    if with_images:
        position = {c: i for i, c in enumerate(with_images)}
        local = np.array([position[c] for c in labels.tolist()], dtype=np.int64)
        raw = attributes_from_images(
            images, local, len(with_images), attribute_phrases, encode_images, encode_texts, batch_size
        )
        phrase_emb = np.asarray(encode_texts(list(attribute_phrases)), dtype=np.float32)
        attributes[with_images] = normalize_attribute_rows(decorrelate_phrases(raw, phrase_emb, phrase_ridge))
        for c in with_images:
            routes[c] = "images"
    text_only = [c for c, route in enumerate(routes) if route == "text"]
    if text_only:
        attributes[text_only] = attributes_from_text(
            [descriptions[c] for c in text_only], attribute_phrases, phrase_ridge, clauses
        )
    return attributes, routes


def dual_encoder_from_run(
    run_dir: Path | str, device: str = "cpu"
) -> tuple[ImageEncoder, TextEncoder, RunInfo]:
    """(encode_images, encode_texts, RunInfo) of an rsz run whose model has an aligned text tower (MSA).

    The images given to encode_images must be RunInfo.preprocess.size square.
    """
    from rsz_train.models.registry import model_entry
    from rsz_train.runs import load_run

    model, info = load_run(run_dir, device=device)
    if not model_entry(info.kind).uses_captions:
        raise RszError(f"{run_dir}: is a {info.kind} run, but a dual encoder needs an image-text run (msa)")
    encode_images, encode_texts = model_encoders(model, info.preprocess, device)
    return encode_images, encode_texts, info


@dataclass
class DualEncoder:
    """Two aligned encoders and what attribute generation must know about them."""

    encode_images: ImageEncoder  # [N, S, S, 3] uint8, S = preprocess.size
    encode_texts: TextEncoder  # attribute phrases -> embeddings (CLIP: through the prompt ensemble)
    preprocess: PreprocessSpec
    seen: list[str]  # classes it was trained on (rsz runs); a val/unseen one among them would leak


def dual_encoder(path: Path | str, device: str = "cpu") -> DualEncoder:
    """The dual encoder at `path`: an MSA run folder, a CLIP (or MSA) bundle folder, or a CLIP checkpoint
    (open_clip .pt/.bin/.safetensors state dict, or a Hugging Face CLIPModel folder)."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        return _bundle_encoder(path)
    if path.is_file() or (path / "config.json").is_file():
        return _clip_checkpoint_encoder(path, device)
    encode_images, encode_texts, info = dual_encoder_from_run(path, device)
    return DualEncoder(encode_images, encode_texts, info.preprocess, list(info.seen))


def _ensemble(encode: TextEncoder, templates: list[str]) -> TextEncoder:
    """Phrases through a prompt ensemble: each phrase is the normalised mean of its filled templates."""

    def encode_phrases(phrases: list[str]) -> np.ndarray:
        prompts = [t.replace("{}", p) for p in phrases for t in templates]
        emb = l2_normalize(np.asarray(encode(prompts), dtype=np.float32)).reshape(
            len(phrases), len(templates), -1
        )
        return l2_normalize(emb.mean(axis=1))

    return encode_phrases


def _bundle_encoder(bundle: Path) -> DualEncoder:
    """The ONNX graphs of a bundle with aligned image and text graphs (clip, msa), on ONNX Runtime."""
    from rsz_infer.backend import open_runner
    from rsz_infer.bundle import load_manifest
    from rsz_infer.class_embeddings import encode_texts, load_tokenizer
    from rsz_infer.preprocess import to_model_input
    from rsz_infer.runners.base import Runner

    manifest = load_manifest(bundle)
    if manifest.class_embedding not in ("templates", "text"):
        raise RszError(f"{bundle}: a {manifest.model_kind} bundle; a dual encoder needs a clip or msa bundle")
    tokenizer = load_tokenizer(bundle, manifest)
    runners: dict[str, Runner] = {}  # a graph opened once, on first use, not per batch

    def runner(role: str) -> Runner:
        if role not in runners:
            runners[role] = open_runner(bundle, manifest, role, "ort", "cpu")
        return runners[role]

    def images_fn(images: np.ndarray) -> np.ndarray:
        x = np.stack([to_model_input(image, manifest.preprocess) for image in images])
        return runner("image").infer({"image": x})["embedding"]

    def texts_fn(texts: list[str]) -> np.ndarray:
        return encode_texts(runner("text"), tokenizer, list(texts))["embedding"]

    if manifest.class_embedding == "templates":
        texts_fn = _ensemble(texts_fn, manifest.prompt_templates)
    return DualEncoder(images_fn, texts_fn, manifest.preprocess, list(manifest.seen_classes))


def _clip_checkpoint_encoder(path: Path, device: str) -> DualEncoder:
    """A CLIP checkpoint in PyTorch (rsz_train.models.clip), phrases through rsz's default templates."""
    import torch

    from rsz_infer.preprocess import to_model_input
    from rsz_infer.prompts import DEFAULT_TEMPLATES
    from rsz_train.models.clip import load_clip

    model = load_clip(path).to(device)

    @torch.no_grad()
    def images_fn(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.stack([to_model_input(image, model.preprocess) for image in images]))
        return model.encode_images(x.to(device)).float().cpu().numpy()

    @torch.no_grad()
    def texts_fn(texts: list[str]) -> np.ndarray:
        tokens = {k: v.to(device) for k, v in model.tokenize(list(texts)).items()}
        return model.encode_text(tokens["input_ids"], tokens["attention_mask"]).float().cpu().numpy()

    return DualEncoder(images_fn, _ensemble(texts_fn, list(DEFAULT_TEMPLATES)), model.preprocess, [])


def model_encoders(model, spec, device: str = "cpu") -> tuple[ImageEncoder, TextEncoder]:
    """The two encoders of an rsz model with a text tower (MSA), for attributes_from_images.

    `model` is an RszModel, `spec` its rsz_infer.preprocess.PreprocessSpec (RunInfo.preprocess).
    """
    from rsz_train.evaluate import embed_images, embed_texts

    def images_fn(images: np.ndarray) -> np.ndarray:
        return embed_images(model, images, spec, device)

    def texts_fn(texts: list[str]) -> np.ndarray:
        return embed_texts(model, texts, device)

    return images_fn, texts_fn


def save_attribute_matrix(
    path: Path | str, class_names: list[str], attribute_names: list[str], matrix: np.ndarray
) -> None:
    """Write a matrix in the benchmark's attribute_matrix.csv layout (header "class,<attr>...")."""
    path = Path(path)
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.shape != (len(class_names), len(attribute_names)):
        expected = (len(class_names), len(attribute_names))
        raise RszError(f"{path}: matrix has shape {matrix.shape}, expected classes x attributes {expected}")
    lines = [",".join(["class", *attribute_names])]
    lines += [",".join([name, *(f"{v:.6g}" for v in row)]) for name, row in zip(class_names, matrix)]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)
