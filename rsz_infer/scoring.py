"""Scoring rules shared by training evaluation, inference and benchmarks (numpy)."""

from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def class_logits(
    image_emb: np.ndarray,
    class_emb: np.ndarray,
    rule: str,
    scale: float,
    offsets: np.ndarray | None = None,
) -> np.ndarray:
    """[B, D] x [C, D] -> [B, C] logits by the model's rule.

    rule "cosine": scale * cos(image, class); rule "dot": scale * image . class. `offsets` [C], when
    given, are subtracted from the similarity before the scale (the hubness correction).
    """
    if rule == "cosine":
        image_emb, class_emb = l2_normalize(image_emb), l2_normalize(class_emb)
    elif rule != "dot":
        raise ValueError(f"unknown scoring rule {rule!r}")
    similarity = image_emb.astype(np.float32) @ class_emb.astype(np.float32).T
    if offsets is not None:
        similarity = similarity - offsets.astype(np.float32)[None, :]
    return scale * similarity


def hubness_offsets(
    class_emb: np.ndarray, trained_emb: np.ndarray, trained_row: np.ndarray, neighbours: int
) -> np.ndarray:
    """[C]: for each class [C, D], the mean cosine of its vector to its `neighbours` most similar vectors
    among the classes the model trained on [S, D], itself left out (`trained_row[c]`: its row there, or -1).

    A class near many training classes is a hub that draws tiles of other classes; a model's scores minus
    a multiple of this (DSVA's hubness_penalty) are the hubness correction. Training classes only: the
    correction of a class never depends on which other classes, or tiles, are being scored.
    """
    cos = l2_normalize(class_emb.astype(np.float32)) @ l2_normalize(trained_emb.astype(np.float32)).T
    is_trained = trained_row >= 0
    cos[np.flatnonzero(is_trained), trained_row[is_trained]] = -np.inf  # sorts last, never taken
    # each class's own k: a trained class has one neighbour fewer to choose from than a new one
    k = np.minimum(neighbours, trained_emb.shape[0] - is_trained.astype(np.int64))
    nearest_sum = np.cumsum(-np.sort(-cos, axis=1), axis=1)
    offsets = np.zeros(len(class_emb), np.float32)
    rows = np.flatnonzero(k >= 1)
    offsets[rows] = nearest_sum[rows, k[rows] - 1] / k[rows]
    return offsets


def calibrated_stacking(logits: np.ndarray, seen_mask: np.ndarray, seen_calibration: float) -> np.ndarray:
    """Generalised ZSL calibration (Chao et al. 2016): subtract the lambda `seen_calibration` (the one name
    of it in manifests, configs, the CLI and code) from seen-class scores."""
    return logits - seen_calibration * seen_mask.astype(logits.dtype)[None, :]


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest entries per row, best first."""
    k = min(k, probs.shape[1])
    idx = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(probs, idx, axis=1)
