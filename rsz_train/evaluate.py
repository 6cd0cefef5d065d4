"""Evaluation of a trained model with the numpy scoring and metrics that inference uses.

- ZSL: mean per-class top-1 on images of unseen classes, label space = the unseen classes.
- GZSL: label space = training classes + unseen classes; U, S, H after calibrated stacking with the lambda
  chosen on validation, and without calibration (lambda 0) to show what calibration buys.
- Retrieval (models with a text tower): R@1/5/10 both directions and their mean mR.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import numpy as np
import torch

from rsz_infer.metrics import choose_calibration, gzsl_report, per_class_accuracy, retrieval_metrics
from rsz_infer.preprocess import PreprocessSpec
from rsz_infer.scoring import class_logits, hubness_offsets
from rsz_train.data.batches import image_batch
from rsz_train.models.base import ClassSemantics, RszModel


def subset_semantics(semantics: ClassSemantics, indices: list[int] | np.ndarray) -> ClassSemantics:
    """The classes at `indices`, in that order."""
    idx = np.asarray(indices, dtype=np.int64)
    return replace(
        semantics,
        names=[semantics.names[i] for i in idx],
        descriptions=[semantics.descriptions[i] for i in idx],
        attributes=semantics.attributes[idx],
        sentence=semantics.sentence[idx],
        glove=None if semantics.glove is None else semantics.glove[idx],
    )


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision on GPU when `dtype` is given; a no-op otherwise (CPU runs in float32)."""
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


@torch.no_grad()
def embed_images(
    model: RszModel,
    images: np.ndarray,
    spec: PreprocessSpec,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    amp_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """[N, S, S, 3] uint8 images (resized, not augmented) -> [N, D] float32 image embeddings."""
    device = torch.device(device)
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = image_batch(images[start : start + batch_size], spec).to(device)
        with autocast(device, amp_dtype):
            out.append(model.encode_images(batch).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


@torch.no_grad()
def embed_classes(
    model: RszModel, semantics: ClassSemantics, device: torch.device | str = "cpu"
) -> np.ndarray:
    """Class embeddings [C, D] float32 of every class in `semantics`."""
    model.eval()
    return model.encode_classes(model.class_inputs(semantics, device)).float().cpu().numpy()


@torch.no_grad()
def embed_texts(
    model: RszModel, texts: list[str], device: torch.device | str = "cpu", batch_size: int = 256
) -> np.ndarray:
    """Text embeddings [T, D] for a model with a text tower (captions through encode_classes)."""
    model.eval()
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = {k: v.to(device) for k, v in model.tokenize(texts[start : start + batch_size]).items()}
        out.append(model.encode_classes(tokens).float().cpu().numpy())
    return np.concatenate(out)


def hubness_correction(model: RszModel, class_emb: np.ndarray, trained_ids: list[int]) -> np.ndarray | None:
    """[C] what the model's scoring subtracts from the similarity of each class of `class_emb` (all
    classes): DSVA's hubness_penalty x rsz_infer.scoring.hubness_offsets against the classes trained on
    (`trained_ids`, rows of class_emb), as the bundle does (rsz_infer.api.Scorer); None without one."""
    config = getattr(model, "config", None)
    penalty = float(getattr(config, "hubness_penalty", 0.0))
    if not penalty or not trained_ids:
        return None
    trained_row = np.full(len(class_emb), -1, dtype=np.int64)
    trained_row[np.asarray(trained_ids)] = np.arange(len(trained_ids))
    return penalty * hubness_offsets(
        class_emb, class_emb[trained_ids], trained_row, config.hubness_neighbours
    )


def model_class_logits(
    model: RszModel,
    image_emb: np.ndarray,
    class_emb: np.ndarray,
    class_ids: list[int],
    trained_ids: list[int],
) -> np.ndarray:
    """[B, len(class_ids)] logits of the classes at `class_ids` (rows of class_emb) by the model's own
    scoring: its rule, scale and hubness correction against `trained_ids`, the classes it trained on."""
    correction = hubness_correction(model, class_emb, trained_ids)
    offsets = None if correction is None else correction[class_ids]
    return class_logits(image_emb, class_emb[class_ids], model.scoring_rule, model.logit_scale(), offsets)


def model_zsl_gzsl_scores(
    model: RszModel,
    image_emb: np.ndarray,
    labels: np.ndarray,
    class_emb: np.ndarray,
    seen_ids: list[int],
    unseen_ids: list[int],
    seen_calibration: float | None = None,
) -> dict:
    """zsl_gzsl_scores by the model's own scoring: its rule, scale and hubness correction, `seen_ids` being
    the classes it trained on (the trainer's, rsz-bench accuracy's and a reloaded run's figures alike)."""
    correction = hubness_correction(model, class_emb, seen_ids)
    rule, scale = model.scoring_rule, model.logit_scale()
    return zsl_gzsl_scores(
        image_emb, labels, class_emb, seen_ids, unseen_ids, rule, scale, seen_calibration, correction
    )


def zsl_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean per-class top-1; `labels` index the columns of `logits` (the label space)."""
    return per_class_accuracy(logits.argmax(axis=1), labels)


def zsl_gzsl_scores(
    image_emb: np.ndarray,
    labels: np.ndarray,
    class_emb: np.ndarray,
    seen_ids: list[int],
    unseen_ids: list[int],
    rule: str,
    scale: float,
    seen_calibration: float | None = None,
    correction: np.ndarray | None = None,
) -> dict:
    """ZSL and GZSL scores of images of seen and unseen classes.

    `labels` and the id lists index the rows of `class_emb` (all classes); the GZSL label space is
    seen_ids + unseen_ids. With `seen_calibration` None (validation) the lambda is chosen here and
    returned; at test pass the validation lambda. `correction` [C]: hubness_correction's, or None.
    Returns {"zsl": acc, "gzsl": {U,S,H,seen_calibration}, "gzsl_uncalibrated": {U,S,H},
    "seen_calibration": lambda}.
    """
    space = list(seen_ids) + list(unseen_ids)
    position = {c: i for i, c in enumerate(space)}
    if any(int(c) not in position for c in labels):
        raise ValueError("zsl_gzsl_scores: an image label is neither a seen nor an unseen class")
    local = np.array([position[int(c)] for c in labels], dtype=np.int64)
    offsets = None if correction is None else correction[space]
    logits = class_logits(image_emb, class_emb[space], rule, scale, offsets)
    seen_mask = np.arange(len(space)) < len(seen_ids)
    is_unseen = ~seen_mask[local]
    zsl = zsl_accuracy(logits[is_unseen][:, ~seen_mask], local[is_unseen] - len(seen_ids))
    if seen_calibration is None:
        seen_calibration = choose_calibration(logits, local, seen_mask)
    calibrated = gzsl_report(logits, local, seen_mask, seen_calibration)
    return {
        "zsl": zsl,
        "gzsl": {**calibrated, "seen_calibration": float(seen_calibration)},
        "gzsl_uncalibrated": gzsl_report(logits, local, seen_mask, 0.0),
        "seen_calibration": float(seen_calibration),
    }


def retrieval_scores(
    image_emb: np.ndarray, text_emb: np.ndarray, text_to_image: np.ndarray
) -> dict[str, float]:
    """R@1/5/10 both directions and mR (percent) from cosine similarities."""
    sim = class_logits(image_emb, text_emb, "cosine", 1.0)
    return retrieval_metrics(sim, text_to_image)
