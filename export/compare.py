"""Polygraphy-style Comparator: run the same feeds through two Runners and check the outputs agree."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rsz_infer.bundle import TensorSpec
from rsz_infer.errors import RszError
from rsz_infer.runners.base import Runner

FP32_MAX_RELATIVE_ERROR = 1e-4  # max |a-b| / max |reference|, per output
FP16_MIN_COSINE = 0.999  # cosine similarity of each embedding row, FP16 graph vs the FP32 reference
FP32_MIN_COSINE = 0.9999  # the same for the FP32 graph (besides the relative error)
# INT8 (rsz_export.int8), on real tiles only: every embedding row at cosine >= INT8_MIN_COSINE against PyTorch
# FP32, and at most INT8_MAX_LABEL_CHANGE of the tiles (rounded down: none for fewer than 100 tiles) with
# another top-1 class, which bounds the change of any accuracy figure on such tiles to about one point.
INT8_MIN_COSINE = 0.995
INT8_MAX_LABEL_CHANGE = 0.01


@dataclass
class Comparison:
    output: str
    relative_error: float
    min_cosine: float


def random_feeds(
    inputs: list[TensorSpec], batch: int = 3, seq: int = 12, seed: int = 0
) -> dict[str, np.ndarray]:
    """Fresh random inputs for a graph: floats ~ N(0,1), token ids in a small vocabulary with a
    right-padded attention mask (the first row full, the others shorter) as the tokenizer gives."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in inputs:
        shape = [seq if d == "seq" else batch if isinstance(d, str) else int(d) for d in spec.shape]
        if spec.name == "attention_mask":
            lengths = rng.integers(1, shape[1] + 1, size=shape[0])
            lengths[0] = shape[1]
            feeds[spec.name] = (np.arange(shape[1])[None, :] < lengths[:, None]).astype(np.int64)
        elif spec.dtype.startswith("int"):
            feeds[spec.name] = rng.integers(100, 1000, size=shape).astype(spec.dtype)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feeds


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    num = (a * b).sum(1)
    norm_a, norm_b = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    den = norm_a * norm_b
    # A zero row agrees only with a zero row: FP16 underflow that zeroes an embedding must fail the gate.
    both_zero = (norm_a == 0) & (norm_b == 0)
    cos = np.where(den > 0, num / np.maximum(den, 1e-30), np.where(both_zero, 1.0, 0.0))
    return float(cos.min()) if cos.size else 1.0


def label_changes(
    reference: np.ndarray,
    candidate: np.ndarray,
    class_embeddings: np.ndarray,
    scoring_rule: str,
    class_offsets: np.ndarray | None = None,
) -> int:
    """How many rows of two embedding batches get a different top-1 class (scored as the bundle labels:
    `class_offsets` is the model's hubness correction, or None)."""
    from rsz_infer.scoring import class_logits

    top_ref = class_logits(reference, class_embeddings, scoring_rule, 1.0, class_offsets).argmax(1)
    top_got = class_logits(candidate, class_embeddings, scoring_rule, 1.0, class_offsets).argmax(1)
    return int((top_ref != top_got).sum())


def agreement(
    reference: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    class_embeddings: np.ndarray | None,
    scoring_rule: str = "cosine",
    class_offsets: np.ndarray | None = None,
) -> dict:
    """The INT8 check of one graph's outputs on real tiles: min embedding cosine, label changes, verdict."""
    ref, got = reference["embedding"], candidate["embedding"]
    if not np.isfinite(got).all():
        return {"min_cosine": 0.0, "label_changes": len(got), "passed": False, "reason": "NaN or inf"}
    cosine = _min_cosine(got, ref)
    changes = (
        0
        if class_embeddings is None
        else label_changes(ref, got, class_embeddings, scoring_rule, class_offsets)
    )
    allowed = int(INT8_MAX_LABEL_CHANGE * len(ref))
    reasons = []
    if cosine < INT8_MIN_COSINE:
        reasons.append(f"embedding cosine {cosine:.5f} < {INT8_MIN_COSINE}")
    if changes > allowed:
        reasons.append(f"top-1 label of {changes} of {len(ref)} tiles changed (at most {allowed})")
    return {
        "min_cosine": cosine,
        "label_changes": changes,
        "passed": not reasons,
        "reason": " and ".join(reasons),  # "; " parts a note's candidates (rsz_export.api)
    }


def compare(
    reference: Runner,
    candidate: Runner,
    feeds: list[dict[str, np.ndarray]],
    precision: str,
    what: str,
    class_embeddings: np.ndarray | None = None,
    scoring_rule: str = "cosine",
    class_offsets: np.ndarray | None = None,
) -> list[Comparison]:
    """Check `candidate` against `reference` on every feed; raise one RszError line naming `what` (and the
    reference runner) on failure.

    fp32: every output within FP32_MAX_RELATIVE_ERROR and every `embedding` row at cosine >= FP32_MIN_COSINE.
    fp16: every `embedding` row at cosine >= FP16_MIN_COSINE and, given class embeddings, the same top-1
    class for every row.
    """
    ref_name = f"{reference.library} ({reference.name})"  # "PyTorch (torch:cpu)"
    results = []
    for feed in feeds:
        ref, got = reference.infer(feed), candidate.infer(feed)
        for name, expected in ref.items():
            actual = got[name]
            if actual.shape != expected.shape:
                raise RszError(
                    f"{what}: output {name} has shape {actual.shape}, {ref_name} gives {expected.shape}"
                )
            scale = max(float(np.abs(expected).max()), 1e-12) if expected.size else 1.0
            rel = float(np.abs(actual.astype(np.float64) - expected).max()) / scale if expected.size else 0.0
            results.append(Comparison(name, rel, _min_cosine(actual, expected)))
            if not np.isfinite(actual).all():
                raise RszError(f"{what}: output {name} has NaN or inf ({candidate.name} vs {reference.name})")
            if precision == "fp32" and rel > FP32_MAX_RELATIVE_ERROR:
                raise RszError(
                    f"{what}: output {name} differs from {ref_name} (relative error {rel:.2e} > "
                    f"{FP32_MAX_RELATIVE_ERROR:.0e}, {candidate.name} vs {reference.name})"
                )
        if "embedding" in ref:
            cosine = _min_cosine(got["embedding"], ref["embedding"])
            least = FP16_MIN_COSINE if precision == "fp16" else FP32_MIN_COSINE
            if cosine < least:
                raise RszError(
                    f"{what}: {precision.upper()} embedding cosine {cosine:.5f} < {least} against {ref_name}"
                )
        if precision == "fp16" and "embedding" in ref and class_embeddings is not None:
            changed = label_changes(
                ref["embedding"], got["embedding"], class_embeddings, scoring_rule, class_offsets
            )
            if changed:
                raise RszError(
                    f"{what}: FP16 changes the top-1 label of {changed} of {len(ref['embedding'])} tiles"
                )
    return results
