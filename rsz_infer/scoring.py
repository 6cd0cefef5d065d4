"""Scoring rules shared by training evaluation, inference and benchmarks (numpy)."""

from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def class_logits(image_emb: np.ndarray, class_emb: np.ndarray, rule: str, scale: float) -> np.ndarray:
    """[B, D] x [C, D] -> [B, C] logits by the model's rule.

    rule "cosine": scale * cos(image, class); rule "dot": scale * image . class.
    """
    if rule == "cosine":
        image_emb, class_emb = l2_normalize(image_emb), l2_normalize(class_emb)
    elif rule != "dot":
        raise ValueError(f"unknown scoring rule {rule!r}")
    return scale * (image_emb.astype(np.float32) @ class_emb.astype(np.float32).T)


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
