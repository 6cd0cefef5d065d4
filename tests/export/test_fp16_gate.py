"""The FP16 gate of rsz-export on graphs that must fail it, the Comparator on outputs of known cosine, and the
INT8 gate (rsz_export.compare.agreement) on known cosines and label changes (test_int8.py exports a graph that
INT8 breaks).

Real drift, no mocked runtime: ONNX Runtime runs the FP16 graph that rsz_export.fp16 writes.
- An image head whose weights sit below FP16's normal range (6e-5): FP16 holds them as subnormals with a
  step of 6e-8, so they and their products lose most of their digits (cosine ~0.93), or, smaller still,
  rounds them to zero. The FP32 graph is fine.
- A healthy graph (cosine > 0.999) with two class embeddings placed so that the FP16 rounding of one
  tile's embedding flips its top-1 class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rsz_export.api import export_model
from rsz_export.compare import FP16_MIN_COSINE, compare
from rsz_export.fp16 import convert_fp16
from rsz_infer.errors import RszError
from rsz_infer.runners.ort import OrtRunner
from rsz_infer.runners.torch import TorchRunner
from rsz_infer.scoring import class_logits

from .test_export import ToyModel, _Image, _source


class _TinyHead(_Image):
    """A head with tiny weights (a scale-invariant F.normalize follows): FP32 computes it exactly; FP16
    holds weights of ~1e-7 as subnormals, multiples of 6e-8 (most digits lost), and rounds ~1e-10 to 0."""

    def __init__(self, scale: float) -> None:
        torch.manual_seed(0)
        super().__init__()
        with torch.no_grad():
            self.head.weight.mul_(scale)
            self.head.bias.mul_(scale)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _nothing_written(tmp_path: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}.")]  # no staging left


@pytest.mark.parametrize("scale", [3e-7, 1e-9], ids=["subnormal", "underflow"])
def test_fp16_drift_is_one_line_error_and_no_bundle(tmp_path, scale):
    model = ToyModel(_TinyHead(scale))
    out = tmp_path / "drifting"
    # the zeroed embedding meets F.normalize's epsilon, itself 0 in FP16: 0/0 fails as NaN first
    problem = (
        r"FP16 embedding cosine 0\.[0-9]+ < 0\.999" if scale > 1e-8 else "output embedding has NaN or inf"
    )
    with pytest.raises(RszError, match=rf"^image\.fp16\.onnx \(image, fp16\): {problem}") as err:
        export_model(_source(model, tmp_path), out, fp16=True, engine="none")
    assert "\n" not in str(err.value)
    _nothing_written(tmp_path, out)

    # the FP32 export of the same model passes; its FP16 conversion, run here, really drifts
    fp32 = export_model(_source(model, tmp_path), tmp_path / "fp32", fp16=False, engine="none")
    convert_fp16(fp32 / "image.onnx", tmp_path / "image.fp16.onnx")
    x = np.random.default_rng(4).standard_normal((6, 3, 16, 16)).astype(np.float32)
    ref = OrtRunner(fp32 / "image.onnx").infer({"image": x})["embedding"]
    half = OrtRunner(tmp_path / "image.fp16.onnx").infer({"image": x})["embedding"]
    assert not _cosines(half, ref).min() >= FP16_MIN_COSINE  # (NaN for the zeroed one)


def _flipping_classes(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Two unit class embeddings u, v: `reference` is nearer u, `candidate` (its FP16 result) nearer v.

    With |u| = |v| the cosine rule prefers u exactly when e . (u - v) > 0; w = u - v = |p|/2 r - p/|p|, with
    p the part of c orthogonal to r (r, c unit), gives r . w = |p|/2 > 0 and c . w ~ -|p|/2 < 0."""
    r, c = (e.astype(np.float64) / np.linalg.norm(e) for e in (reference, candidate))  # float32 would
    # leave p a component along r as large as the margin itself
    p = c - (c @ r) * r
    w = 0.5 * np.linalg.norm(p) * r - p / np.linalg.norm(p)
    m = np.random.default_rng(0).standard_normal(len(r))
    m -= (m @ w) / (w @ w) * w
    m *= np.sqrt(1.0 - (w @ w) / 4) / np.linalg.norm(m)  # |m +- w/2| = 1
    return np.stack([m + w / 2, m - w / 2]).astype(np.float32)


def test_fp16_top1_flip_is_one_line_error_and_no_bundle(tmp_path):
    source = _source(ToyModel(), tmp_path)
    healthy = export_model(source, tmp_path / "healthy", fp16=True, engine="none")
    tiles = np.ascontiguousarray(source.tiles, dtype=np.float32)
    with torch.no_grad():
        reference = source.model.image(torch.from_numpy(tiles)).numpy()
    candidate = OrtRunner(healthy / "image.fp16.onnx").infer({"image": tiles})["embedding"]
    assert _cosines(candidate, reference).min() >= FP16_MIN_COSINE  # passes the cosine gate ...
    classes = _flipping_classes(reference[0], candidate[0])
    top_ref = class_logits(reference, classes, "cosine", 1.0).argmax(1)
    top_fp16 = class_logits(candidate, classes, "cosine", 1.0).argmax(1)
    assert top_ref[0] == 0 and top_fp16[0] == 1  # ... but not the label of tile 0
    flipped = int((top_ref != top_fp16).sum())

    source.class_embeddings = classes
    out = tmp_path / "flipping"
    with pytest.raises(RszError, match=f"FP16 changes the top-1 label of {flipped} of 4 tiles") as err:
        export_model(source, out, fp16=True, engine="none")
    assert "\n" not in str(err.value) and "image.fp16.onnx (image, fp16) on tiles" in str(err.value)
    _nothing_written(tmp_path, out)
    assert export_model(source, tmp_path / "fp32", fp16=False, engine="none").is_dir()  # FP32 keeps labels


class _Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _Rotate(nn.Module):
    """Rotates every (x0, x1), (x2, x3), ... pair by `angle`: each row's cosine to its input is cos(angle)."""

    def __init__(self, angle: float) -> None:
        super().__init__()
        self.cos, self.sin = float(np.cos(angle)), float(np.sin(angle))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x[:, 0::2], x[:, 1::2]
        return torch.stack([a * self.cos - b * self.sin, a * self.sin + b * self.cos], dim=2).flatten(1)


class _Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def _runner(module: nn.Module) -> TorchRunner:
    return TorchRunner(module, input_names=["x"], output_names=["embedding"])


def test_comparator_on_a_known_cosine():
    x = np.random.default_rng(2).standard_normal((5, 8)).astype(np.float32)
    feeds = [{"x": x}]
    reference = _runner(_Identity())
    (passed,) = compare(reference, _runner(_Rotate(np.arccos(0.9995))), feeds, "fp16", "g.onnx")
    assert passed.output == "embedding" and passed.min_cosine == pytest.approx(0.9995, abs=1e-6)
    with pytest.raises(RszError, match=r"^g\.onnx: FP16 embedding cosine 0\.99800 < 0\.999 against PyTorch"):
        compare(reference, _runner(_Rotate(np.arccos(0.998))), feeds, "fp16", "g.onnx")
    # FP32: the largest error relative to the largest reference value, at 1e-4
    (passed,) = compare(reference, _runner(_Scale(1 + 5e-5)), feeds, "fp32", "g.onnx")
    assert passed.relative_error == pytest.approx(5e-5, rel=1e-2) and passed.min_cosine == pytest.approx(1.0)
    with pytest.raises(
        RszError, match=r"g\.onnx: output embedding differs from PyTorch.*relative error 2\.0"
    ):
        compare(reference, _runner(_Scale(1 + 2e-4)), feeds, "fp32", "g.onnx")
    with pytest.raises(RszError, match=r"FP16 embedding cosine 0\.00000 < 0\.999"):
        compare(reference, _runner(_Scale(0.0)), feeds, "fp16", "g.onnx")  # all zeros: not a match
    (zeros,) = compare(_runner(_Scale(0.0)), _runner(_Scale(0.0)), feeds, "fp16", "g.onnx")
    assert zeros.min_cosine == 1.0  # ... except with zeros
    with pytest.raises(RszError, match="g.onnx: output embedding has NaN or inf"):
        compare(reference, _runner(_Scale(float("inf"))), feeds, "fp16", "g.onnx")


# ------------------------------------------------------------ the INT8 gate (rsz_export.compare.agreement)


def _near_the_boundary(rows: int, flipped: int) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings a hair on class 0's side of the 0/1 boundary, and a copy with `flipped` rows a hair on
    class 1's side (cosine to the original > 0.99999)."""
    rest = np.random.default_rng(1).standard_normal((rows, 6))
    reference = np.column_stack([np.full(rows, 1.001), np.ones(rows), rest])
    candidate = reference.copy()
    candidate[:flipped, 0] = 0.999
    return reference.astype(np.float32), candidate.astype(np.float32)


def test_int8_agreement_on_known_cosines_and_label_changes():
    from rsz_export.compare import INT8_MIN_COSINE, agreement

    x = np.random.default_rng(2).standard_normal((50, 8)).astype(np.float32)
    for cosine, passed in ((INT8_MIN_COSINE + 1e-3, True), (INT8_MIN_COSINE - 1e-3, False)):
        rotated = _Rotate(np.arccos(cosine))(torch.from_numpy(x)).numpy()
        found = agreement({"embedding": x}, {"embedding": rotated}, None)
        assert found["min_cosine"] == pytest.approx(cosine, abs=1e-6) and found["passed"] is passed
        assert passed or found["reason"] == f"embedding cosine {cosine:.5f} < {INT8_MIN_COSINE}"
    zeros = agreement({"embedding": x}, {"embedding": np.zeros_like(x)}, None)
    assert not zeros["passed"] and zeros["min_cosine"] == 0.0

    classes = np.eye(8, dtype=np.float32)[:2]  # class 0 and class 1 axes
    # at most 1% of the tiles (rounded down) may change their top-1 class
    for rows, flipped, passed in ((100, 1, True), (100, 2, False), (99, 1, False), (100, 0, True)):
        reference, candidate = _near_the_boundary(rows, flipped)
        found = agreement({"embedding": reference}, {"embedding": candidate}, classes)
        assert found["label_changes"] == flipped and found["min_cosine"] > 0.99999
        assert found["passed"] is passed, (rows, flipped, found)
        if not passed:
            allowed = rows // 100
            assert found["reason"] == f"top-1 label of {flipped} of {rows} tiles changed (at most {allowed})"


def test_label_changes_count_the_labels_the_bundle_gives_with_its_hubness_correction():
    """A DSVA bundle labels by cosine minus its classes' hubness correction: the FP16 and INT8 gates count
    changes of that label, not of the raw cosine's."""
    from rsz_export.compare import agreement, label_changes

    classes = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    reference, candidate = np.array([[1.0, 0.9]]), np.array([[0.9, 1.0]])  # raw top-1: class 0, then 1
    offsets = np.array([0.0, 0.2])  # class 1 is the hub: corrected, class 0 wins both times
    assert label_changes(reference, candidate, classes, "cosine") == 1
    assert label_changes(reference, candidate, classes, "cosine", offsets) == 0
    many_ref, many_got = np.repeat(reference, 100, axis=0), np.repeat(candidate, 100, axis=0)
    assert agreement({"embedding": many_ref}, {"embedding": many_got}, classes)["label_changes"] == 100
    found = agreement({"embedding": many_ref}, {"embedding": many_got}, classes, "cosine", offsets)
    assert found["label_changes"] == 0
