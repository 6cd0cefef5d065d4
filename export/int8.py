"""FP32 ONNX -> INT8 ONNX through onnxruntime.quantization, chosen by measurement on real tiles.

Candidates, all made from the FP32 graph after `quant_pre_process` (shape inference + ORT's basic
optimisations, which the quantizer wants):
  dynamic          quantize_dynamic: MatMul/Gemm weights INT8, activations quantized at run time
  static           quantize_static, QDQ on the inputs of the weighted ops (MatMul/Gemm/Conv) only, INT8
                   activations and weights (symmetric, per channel), ranges from the calibration tiles
                   (CalibrationDataReader below) by the 99.999th percentile of each tensor's histogram
  static-mixed-ends  the same, the first and the last MatMul/Gemm/Conv (patch embedding, output head) kept
                   in float (nodes_to_exclude)
The ops that lose the most in INT8 (Softmax, LayerNorm and its decomposition, GELU's Erf) are never
quantized: only the weighted ops' inputs are, so they stay float in every static candidate.
Each candidate is checked like FP16 (rsz_export.compare: embedding cosine against PyTorch FP32 on real tiles,
and top-1 labels) and timed; the fastest that passes is shipped. None passing: no INT8 graph (a note says
why). The QDQ candidates use symmetric INT8 activations and weights, the form TensorRT and TensorRT-RTX import
("explicit quantization"), so the engine is built from the same graph ONNX Runtime checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from rsz_export.compare import INT8_MAX_LABEL_CHANGE, INT8_MIN_COSINE, agreement
from rsz_infer.errors import RszError, first_line

WEIGHTED_OPS = ("MatMul", "Gemm", "Conv")  # the only ops the static candidates quantize
STATIC_CANDIDATES = ("static", "static-mixed-ends")
CALIBRATION_BATCH = 8  # with CalibMaxIntermediateOutputs 2-3: ViT-B/32 calibration under ~1.5 GB
TIMING_ROUNDS = 5


@dataclass
class Candidate:
    method: str
    path: Path | None
    excluded: list[str] = field(default_factory=list)
    min_cosine: float = 0.0
    label_changes: int = 0
    ms_per_batch: float = 0.0
    passed: bool = False
    reason: str = ""
    calibration: str = ""  # how the static ranges were set: percentile, or minmax where that failed

    def record(self) -> dict:
        return {
            "method": self.method,
            "calibration": self.calibration,
            "excluded_nodes": len(self.excluded),
            "min_cosine": round(self.min_cosine, 6),
            "label_changes": self.label_changes,
            "ms_per_batch": round(self.ms_per_batch, 2),
            "passed": self.passed,
            "reason": self.reason,
        }


@dataclass
class Int8Result:
    """What quantize_graph found: the chosen graph (None when no candidate passed) and every measurement."""

    chosen: Candidate | None
    qdq: Candidate | None  # the fastest passing QDQ graph: TensorRT engines are built from it
    candidates: list[Candidate]
    fp32_ms_per_batch: float
    batch: int
    timings: dict[str, float] = field(default_factory=dict)  # every graph timed in the same rounds

    def record(self) -> dict:
        return {
            "method": self.chosen.method if self.chosen else None,
            "excluded_nodes": self.chosen.excluded if self.chosen else [],
            "fp32_ms_per_batch": round(self.fp32_ms_per_batch, 2),
            "timing_batch": self.batch,
            "bound": {"min_cosine": INT8_MIN_COSINE, "max_label_change": INT8_MAX_LABEL_CHANGE},
            "candidates": [c.record() for c in self.candidates],
        }


def tiles_hash(paths: list[Path], root: Path) -> str:
    """sha256 over the calibration files' relative names and contents (what the manifest records)."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode("utf-8") + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


class TileReader:
    """onnxruntime.quantization.CalibrationDataReader over preprocessed tiles, in batches."""

    def __init__(self, input_name: str, tiles: np.ndarray, batch: int = CALIBRATION_BATCH) -> None:
        self.input_name, self.tiles, self.batch = input_name, tiles, batch
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._start >= len(self.tiles):
            return None
        chunk = self.tiles[self._start : self._start + self.batch]
        self._start += self.batch
        return {self.input_name: np.ascontiguousarray(chunk, dtype=np.float32)}

    def rewind(self) -> None:
        self._start = 0

    def __iter__(self):  # the reader protocol of onnxruntime.quantization
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def _reader(input_name: str, tiles: np.ndarray):  # a CalibrationDataReader
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(TileReader, CalibrationDataReader):
        pass

    return Reader(input_name, tiles)


def preprocess(fp32_path: Path, out_path: Path) -> Path:
    """quant_pre_process (symbolic shape inference, ORT basic optimisation, ONNX shape inference); graphs
    whose shapes the symbolic pass cannot follow get the ONNX shape inference only."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(fp32_path), str(out_path))
    except Exception:  # noqa: BLE001 - the symbolic pass raises many kinds of errors on exotic graphs
        quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True)
    return out_path


def _excluded_nodes(model: onnx.ModelProto, method: str) -> list[str]:
    if method == "static":
        return []
    weighted = [n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS]
    return weighted[:1] + weighted[-1:]


def _merge_every(batches: int) -> dict:
    """CalibMaxIntermediateOutputs: merge the ranges every k batches (bounded memory: every tensor of k
    batches is held; ViT-B/32 at 224 px: about 45 MB per tile). ORT 1.2x-1.3x lose everything when k
    divides the batch count (the last merge empties the buffer, then "No data is collected"), so k never
    does."""
    for k in (2, 3, 5, 7, 11, 13):
        if batches > k and batches % k:
            return {"CalibMaxIntermediateOutputs": k}
    return {}


def _quantize(method: str, pre_path: Path, out: Path, input_name: str, tiles: np.ndarray) -> Candidate:
    from onnxruntime.quantization import CalibrationMethod, QuantType, quantize_dynamic

    if method == "dynamic":
        quantize_dynamic(
            str(pre_path), str(out), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8
        )
        return Candidate(method, out)
    excluded = _excluded_nodes(onnx.load(str(pre_path), load_external_data=False), method)
    # Ranges clip each tensor's 0.001% tails (percentile): with INT8 only at the weighted ops this raised the
    # worst cosine on the demo run's validation tiles from 0.9971 (every op, MinMax) to 0.9992, and in
    # rsz-export's check the static graph went from 4 to 2 of 128 top-1 labels changed, and with the
    # first/last layers in float to 1 (passed), where no static graph had passed (benchmarks/RESULTS.md).
    # ORT's histogram collector fails on some graphs (ragged tensors, e.g. in open_clip's ViT): MinMax then.
    calibration = CalibrationMethod.Percentile
    try:
        _quantize_static(pre_path, out, input_name, tiles, excluded, calibration)
    except ValueError:
        calibration = CalibrationMethod.MinMax
        _quantize_static(pre_path, out, input_name, tiles, excluded, calibration)
    return Candidate(method, out, excluded, calibration=calibration.name.lower())


def _quantize_static(
    pre_path: Path, out: Path, input_name: str, tiles: np.ndarray, excluded: list[str], calibration
) -> None:  # noqa: ANN001 - a CalibrationMethod
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    # ORT's calibrator reports progress with print(): kept off stdout, where rsz-export's summary goes
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(
            str(pre_path),
            str(out),
            _reader(input_name, tiles),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            # INT8 only at the inputs of MatMul/Gemm/Conv: residual adds, softmax and normalisation stay float
            op_types_to_quantize=list(WEIGHTED_OPS),
            calibrate_method=calibration,
            # symmetric INT8 and float biases: what TensorRT imports (its parser refuses an INT32 bias
            # DequantizeLinear); ranges merged every few batches, so calibration memory stays bounded
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "QuantizeBias": False,
                **_merge_every(-(-len(tiles) // CALIBRATION_BATCH)),
            },
        )


def int8_ops(path: Path) -> int:
    """Weighted ops that compute in INT8 in a quantized graph (a candidate with none is no INT8 graph)."""
    model = onnx.load(str(path), load_external_data=False)
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    integer = {"MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv", "DynamicQuantizeMatMul"}
    return sum(
        n.op_type in integer or (n.op_type in WEIGHTED_OPS and any(i in dequantized for i in n.input[:2]))
        for n in model.graph.node
    )


@contextlib.contextmanager
def _root_logger_errors_only() -> Iterator[None]:
    """The quantizer warns on the root logger (per-channel axis of norm weights): errors only meanwhile.
    setLevel, not `.level =`: it clears logging's cached levels; restored even when quantizing fails."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


@contextlib.contextmanager
def _temporaries_in(folder: str) -> Iterator[None]:
    """ONNX Runtime's quantizers make their own temporary folders (ort.quant.*, pre.quant.*: the augmented
    graph, as large as the model) with tempfile's default folder: `folder` meanwhile, put back afterwards."""
    before = tempfile.tempdir
    tempfile.tempdir = folder
    try:
        yield
    finally:
        tempfile.tempdir = before


def time_graphs(
    paths: dict[str, Path], input_name: str, batch: np.ndarray, rounds: int = TIMING_ROUNDS
) -> dict:
    """Median ms of one batch per graph through ONNX Runtime as rsz-infer opens it, timed in interleaved
    rounds (each graph once per round, after one warm-up call each), so load from other processes on a
    shared machine spreads over all of them rather than favouring one."""
    from rsz_infer.runners.ort import OrtRunner

    runners = {name: OrtRunner(path, device="cpu") for name, path in paths.items()}
    feeds = {input_name: batch}
    times: dict[str, list[float]] = {name: [] for name in runners}
    for runner in runners.values():
        runner.infer(feeds)
    for _ in range(rounds):
        for name, runner in runners.items():
            started = time.perf_counter()
            runner.infer(feeds)
            times[name].append(time.perf_counter() - started)
    return {name: float(np.median(t) * 1e3) for name, t in times.items()}


def quantize_graph(
    fp32_path: Path,
    out_path: Path,
    reference: dict[str, np.ndarray],
    calibration: np.ndarray,
    check: np.ndarray,
    class_embeddings: np.ndarray | None,
    scoring_rule: str,
    class_offsets: np.ndarray | None = None,
    methods: tuple[str, ...] = ("dynamic", *STATIC_CANDIDATES),
    keep_qdq: bool = False,
    also_timed: dict[str, Path] | None = None,
) -> Int8Result:
    """The INT8 variant of the image graph `fp32_path`, written to `out_path` when one passes.

    reference: PyTorch FP32 outputs on `check` (validation tiles, never the test split); calibration:
    preprocessed tiles for the static candidates. keep_qdq: when the fastest is not a QDQ graph, also keep
    the fastest passing QDQ graph beside it (`<out stem>.qdq.onnx`), for the TensorRT engine. also_timed:
    more graphs (the FP16 variant) timed in the same rounds (Int8Result.timings)."""
    from rsz_infer.runners.ort import OrtRunner

    if len(calibration) == 0 or len(check) == 0:
        raise RszError(f"{fp32_path}: INT8 needs calibration and check tiles (none found)")
    input_name = "image"
    timing = np.ascontiguousarray(check[: min(32, len(check))], dtype=np.float32)
    candidates: list[Candidate] = []
    # beside out_path (rsz-export: inside the bundle's staging folder), ONNX Runtime's temporaries too: a kill
    # mid-quantization leaves them where the next export removes them, not in $TMPDIR, where nothing would
    with (
        tempfile.TemporaryDirectory(prefix="rsz-int8-", dir=out_path.parent) as tmp,
        _temporaries_in(tmp),
        _root_logger_errors_only(),
    ):
        pre = preprocess(fp32_path, Path(tmp) / "pre.onnx")
        for method in methods:
            path = Path(tmp) / f"{method}.onnx"
            try:
                candidate = _quantize(method, pre, path, input_name, calibration)
                got = OrtRunner(path, device="cpu").infer({input_name: np.ascontiguousarray(check)})
            except Exception as err:  # noqa: BLE001 - a quantizer failure leaves this candidate out
                candidates.append(
                    Candidate(method, path, reason=f"failed: {first_line(err, repr(err))}"[:200])
                )
                continue
            found = agreement(reference, got, class_embeddings, scoring_rule, class_offsets)
            candidate.min_cosine, candidate.label_changes = found["min_cosine"], found["label_changes"]
            candidate.passed, candidate.reason = found["passed"], found["reason"]
            if not int8_ops(path):
                candidate.passed, candidate.reason = False, "no MatMul/Gemm/Conv left in INT8"
            candidates.append(candidate)
        timed = {"fp32": fp32_path} | (also_timed or {}) | {c.method: c.path for c in candidates if c.passed}
        timings = time_graphs(timed, input_name, timing)
        for c in candidates:
            c.ms_per_batch = timings.get(c.method, 0.0)
        passing = sorted((c for c in candidates if c.passed), key=lambda c: c.ms_per_batch)
        chosen = passing[0] if passing else None
        qdq = next((c for c in passing if c.method != "dynamic"), None)
        if chosen is not None:
            chosen.path = shutil.copyfile(chosen.path, out_path)
        if qdq is not None and qdq is not chosen:
            qdq.path = shutil.copyfile(qdq.path, out_path.with_suffix(".qdq.onnx")) if keep_qdq else None
    return Int8Result(chosen, qdq, candidates, timings["fp32"], len(timing), timings)
