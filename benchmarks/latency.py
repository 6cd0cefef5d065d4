"""Image-encoder latency and throughput per backend, precision and batch size.

No torch import at module level: on an edge device with only the inference side installed (bundle +
onnxruntime/TensorRT), `latency` runs the ort and trt backends; torch is imported only for ref: models and
the torch backends.

Timing: warm-up calls, then `iters` timed calls (`rounds` > 1: spread over interleaved rounds). On GPU
with torch the timer is a pair of CUDA events around
each call (device time, inputs already on the device); ort and trt are timed with perf_counter around
`Runner.infer`, which takes and returns host arrays, so their figure includes the host<->device copies.
"""

from __future__ import annotations

import copy
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rsz_bench import flops as flops_mod
from rsz_bench.checks import at_least, known_names, ort_device, torch_device
from rsz_infer.backend import ort_runner_on
from rsz_infer.errors import RszError, first_line

TORCH_BACKENDS = ("torch", "torch-compile", "torch-graphs", "torch-compile-graphs")
BACKENDS = ("ort", "trt", *TORCH_BACKENDS)
PRECISIONS = ("fp32", "fp16", "int8")
TORCH_NO_INT8 = "skipped: no INT8 in the PyTorch backend (INT8 runs through ONNX Runtime / TensorRT)"
# the torch rows where PyTorch is not installed (an edge device with the inference side only)
NEEDS_TORCH = "skipped (needs PyTorch)"


@dataclass
class LatencyConfig:
    backends: list[str] = field(default_factory=lambda: ["ort", "torch"])
    batches: list[int] = field(default_factory=lambda: [1, 8, 32])
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    iters: int = 30
    warmup: int = 5
    device: str = "auto"  # "auto" (cuda when torch sees one) | "cpu" | "cuda"
    image_size: int | None = None
    compile_mode: str = "default"  # torch.compile mode; "max-autotune" is slower to build
    threads: int = 0  # ORT intra-op threads (0: ORT's default, all cores)
    calibration: Path | None = None  # ref: models, int8: tiles to calibrate and check the INT8 graph on
    # 1: each row timed on its own, one after another; N > 1: every row opened first, then timed in N
    # interleaved rounds (rsz_bench.latency.time_rows), for ratios between rows on a shared machine
    rounds: int = 1


@dataclass
class ModelSource:
    """Where the graphs of one benchmarked model come from: a ref: model or a bundle folder."""

    name: str
    image_size: int
    onnx: dict[str, Path] = field(default_factory=dict)  # precision -> image ONNX graph
    engines: dict[str, Path] = field(default_factory=dict)  # precision -> TensorRT engine
    reference: Any = None  # rsz_bench.reference.ReferenceModel for ref: models
    torch_module: Any = None  # nn.Module (ref: models, or a bundle given its run)
    flops_per_image: float | None = None
    flops_method: str = "not counted"
    calibration: Path | None = None  # ref: models: tiles for their INT8 graph (rsz_export.int8)
    int8: dict = field(default_factory=dict)  # ref: models: what rsz_export.int8 measured and chose
    _tmp: Any = None

    def onnx_for(self, precision: str) -> Path | None:
        """The image graph of this precision. ref: models are exported on first use; an FP16 graph missing
        from a ref: model or an FP32 bundle is made here by the conversion rsz-export applies
        (rsz_export.fp16: FP32 islands, FP32 I/O), when the export side is installed."""
        if "fp32" not in self.onnx and self.reference is not None:
            from rsz_bench.reference import export_reference_onnx

            self.onnx["fp32"] = export_reference_onnx(self.reference, self._tmp)
        if precision == "fp16" and "fp16" not in self.onnx and "fp32" in self.onnx:
            try:
                from rsz_export.fp16 import convert_fp16
            except ImportError:
                return None
            out_dir = Path(self._tmp or tempfile.mkdtemp(prefix="rsz-bench-"))
            self.onnx["fp16"] = out_dir / (self.onnx["fp32"].stem + "_fp16.onnx")
            convert_fp16(self.onnx["fp32"], self.onnx["fp16"])
        if precision == "int8" and "int8" not in self.onnx and self.reference is not None:
            self._quantize_reference()
        return self.onnx.get(precision)

    def _quantize_reference(self) -> None:
        """The ref: model's INT8 graph, made and chosen as `rsz-export --int8` does (rsz_export.int8) on the
        --calibration tiles (every 4th held out for the check, against the PyTorch module)."""
        if self.calibration is None:
            self.int8 = {"note": "no INT8 graph: pass --calibration DIR (tiles to calibrate on)"}
            return
        import torch

        from rsz_export.api import int8_tiles
        from rsz_export.int8 import quantize_graph
        from rsz_infer.preprocess import PreprocessSpec

        calibration, check, info = int8_tiles(
            self.calibration, {}, PreprocessSpec(size=self.image_size), self.calibration
        )
        with torch.no_grad():
            out = self.torch_module(torch.from_numpy(check))
        out = out[0] if isinstance(out, tuple | list) else out
        out_dir = Path(self._tmp or tempfile.mkdtemp(prefix="rsz-bench-"))
        path = out_dir / (self.onnx["fp32"].stem + ".int8.onnx")
        result = quantize_graph(
            self.onnx["fp32"], path, {"embedding": out.numpy()}, calibration, check, None, "cosine"
        )
        self.int8 = result.record() | {"calibration": info}
        if result.chosen is not None:
            self.onnx["int8"] = path


def open_model(
    spec: str,
    image_size: int | None = None,
    run_dir: Path | None = None,
    tmp: Path | None = None,
    calibration: Path | None = None,
):
    """`ref:NAME` (rsz_bench.reference) or a bundle folder written by rsz-export."""
    if spec.startswith("ref:"):
        from rsz_bench.reference import build_reference

        ref = build_reference(spec, image_size)
        src = ModelSource(
            spec, ref.image_size, reference=ref, torch_module=ref.module, calibration=calibration, _tmp=tmp
        )
        src.flops_per_image = flops_mod.torch_flops(ref.module, ref.example(1))
        src.flops_method = "torch.utils.flop_counter.FlopCounterMode on the PyTorch module (batch 1)"
        return src
    return _open_bundle(Path(spec), image_size, run_dir)


def _open_bundle(bundle_dir: Path, image_size: int | None, run_dir: Path | None) -> ModelSource:
    from rsz_infer.backend import engine_precision
    from rsz_infer.bundle import open_bundle

    manifest = open_bundle(bundle_dir)  # a path that is not there says so, as rsz-infer and e2e do
    size = manifest.preprocess.size
    if image_size and image_size != size:
        raise RszError(f"--image-size {image_size}: the bundle {bundle_dir} takes {size} px images")
    src = ModelSource(str(bundle_dir), size)
    # An --fp16 export keeps the FP32 graph beside the default FP16 one (manifest extra "variants");
    # engines are built from the default graph (TensorRT-RTX takes precision from the graph itself).
    graph = manifest.graphs["image"]
    variants = manifest.extra.get("variants", {}).get("image", {graph.precision: graph.onnx})
    for precision, onnx_file in variants.items():
        src.onnx[precision] = bundle_dir / onnx_file
    for engine in graph.engines:  # the precision each engine was built in (its sidecar; INT8 from QDQ)
        src.engines.setdefault(engine_precision(bundle_dir / engine, graph.precision), bundle_dir / engine)
    if src.onnx:
        try:
            counted = flops_mod.onnx_flops(src.onnx.get("fp32") or next(iter(src.onnx.values())))
        except ImportError:  # an edge device with onnxruntime but without the onnx package
            counted = None
        if counted is not None:
            src.flops_per_image = counted
            src.flops_method = "sum of MatMul/Gemm/Conv in the ONNX image graph, shapes inferred at batch 1"
    if not _torch_installed():  # --run and the bundle's weights serve the torch rows only, which say so
        return src
    if run_dir is not None:
        src.torch_module = _image_module_from_run(run_dir)
    elif manifest.extra.get("torch"):  # the run's weights ship in the bundle (rsz_infer.runners.torch)
        src.torch_module = _image_module_from_bundle(bundle_dir, manifest)
    return src


def _torch_installed() -> bool:
    """Whether PyTorch imports here (the torch rows and --run need it)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _image_module_from_bundle(bundle_dir: Path, manifest):  # noqa: ANN001, ANN202 - nn.Module
    try:
        from rsz_infer.runners.torch import bundle_model

        model = bundle_model(bundle_dir, manifest)
    except (ImportError, RszError):  # an edge device without the training side: torch rows are skipped
        return None
    return next(g.module.eval() for g in model.export_graphs() if g.role == "image")


def _image_module_from_run(run_dir: Path):  # nn.Module
    """The trained model's image graph (role "image" of export_graphs), for the torch backends."""
    from rsz_train.runs import load_run

    model, _info = load_run(run_dir)
    for graph in model.export_graphs():
        if graph.role == "image":
            return graph.module.eval()
    raise RszError(f"{run_dir}: the model has no image graph")


# ----------------------------------------------------------------------------------------------------------
# timing


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def time_host(call: Callable[[], Any], iters: int, warmup: int) -> list[float]:
    """perf_counter around each call (calls that return when their work is done)."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return times


def time_cuda(call: Callable[[], Any], iters: int, warmup: int) -> list[float]:
    """CUDA events around each call: device time of the work the call enqueues."""
    import torch

    for _ in range(warmup):
        call()
    torch.cuda.synchronize()
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)
    ]
    for start, end in events:
        start.record()
        call()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) / 1e3 for start, end in events]


def _process_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _random_image(batch: int, size: int, dtype: str) -> np.ndarray:
    rng = np.random.default_rng(batch)
    return rng.standard_normal((batch, 3, size, size)).astype(dtype)


@dataclass
class TimedRow:
    """One (backend, precision, batch) row ready to time: its call, its timer and what the row reports."""

    call: Callable[[], Any]
    timer: Callable[[Callable[[], Any], int, int], list[float]]
    info: dict
    memory: Callable[[], dict] = lambda: {}  # peak memory after the row's calls
    reset_memory: Callable[[], None] = lambda: None
    times: list[float] = field(default_factory=list)


def _open_ort(
    src: ModelSource, precision: str, batch: int, cfg: LatencyConfig, device: str
) -> TimedRow | dict:
    from rsz_infer.runners.ort import OrtRunner

    path = src.onnx_for(precision)
    if path is None:
        why = f" ({src.int8['note']})" if precision == "int8" and src.int8.get("note") else ""
        return {"status": f"skipped: no {precision} ONNX image graph for {src.name}{why}"}
    runner = ort_runner_on(OrtRunner(path, device=device, threads=cfg.threads), device)
    feeds = {"image": _random_image(batch, src.image_size, _ort_input_dtype(runner))}
    return TimedRow(
        call=lambda: runner.infer(feeds),
        timer=time_host,
        info={"device": runner.name, "timer": "perf_counter, host arrays in/out"},
        memory=_host_memory,
    )


def _host_memory() -> dict:
    return {"peak_mem_mb": _process_peak_rss_mb(), "mem_kind": "process peak RSS"}


def _ort_input_dtype(runner) -> str:  # an OrtRunner
    """FP16 graphs written by export keep float32 inputs; a graph with float16 inputs gets float16."""
    return "float16" if runner.session.get_inputs()[0].type == "tensor(float16)" else "float32"


def _open_trt(src: ModelSource, precision: str, batch: int, cfg: LatencyConfig) -> TimedRow | dict:
    engine = src.engines.get(precision)
    if engine is None:
        return {"status": f"skipped: no {precision} TensorRT engine in {src.name}"}
    try:
        from rsz_infer.runners.trt import TrtRunner
    except ImportError as err:
        return {"status": f"skipped: TensorRT runner unavailable ({err})"}
    try:
        runner = TrtRunner(engine)
    except RszError as err:  # no GPU here, or one this engine was not built for: the other rows still run
        return {"status": f"skipped: {err}"}
    feeds = {"image": _random_image(batch, src.image_size, "float32")}  # export keeps FP32 I/O on FP16 graphs
    return TimedRow(
        call=lambda: runner.infer(feeds),
        timer=time_host,
        info={"device": "cuda", "timer": "perf_counter, host arrays in/out"},
    )


def _open_torch(
    src: ModelSource, backend: str, precision: str, batch: int, cfg: LatencyConfig
) -> TimedRow | dict:
    if not _torch_installed():  # the row says so; the ort and trt rows of the run still count
        return {"status": NEEDS_TORCH}
    import torch

    if src.torch_module is None:
        return {"status": f"skipped: no PyTorch module for {src.name} (pass --run runs/NAME)"}
    device = torch_device(cfg.device)
    if precision == "int8":
        return {"status": TORCH_NO_INT8}
    if precision == "fp16" and device == "cpu":
        return {"status": "skipped: fp16 on CPU is not a deployment target"}
    if "graphs" in backend and device == "cpu":
        return {"status": "skipped: CUDA graphs need a GPU"}
    dtype = torch.float16 if precision == "fp16" else torch.float32
    # a copy per row: casting the module to FP16 and back would round the weights other rows use
    module = copy.deepcopy(src.torch_module).to(device=device, dtype=dtype).eval()
    if "compile" in backend:
        if cfg.rounds == 1:
            torch._dynamo.reset()  # each row compiles afresh, for its own static shape
        fn = torch.compile(module, mode=cfg.compile_mode, dynamic=False)
    else:
        fn = module
    x = torch.randn(batch, 3, src.image_size, src.image_size, device=device, dtype=dtype)
    with torch.inference_mode():
        call = _cuda_graph(fn, x) if "graphs" in backend else (lambda: fn(x))

    def in_inference_mode(timer: Callable) -> Callable:
        """The timer's whole loop in inference mode, so no timed call pays for entering it."""

        def timed(call: Callable, iters: int, warmup: int) -> list[float]:
            with torch.inference_mode():
                return timer(call, iters, warmup)

        return timed

    if device != "cuda":
        return TimedRow(
            call=call,
            timer=in_inference_mode(time_host),
            info={"device": device, "timer": "perf_counter"},
            memory=_host_memory,
        )

    def reset_memory() -> None:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    return TimedRow(
        call=call,
        timer=in_inference_mode(time_cuda),
        info={"device": device, "timer": "CUDA events, device tensors"},
        memory=lambda: {
            "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20,
            "mem_kind": "torch peak allocated",
        },
        reset_memory=reset_memory,
    )


def time_rows(rows: list[TimedRow], iters: int, warmup: int, rounds: int) -> None:
    """Time every row: one after another (rounds 1), or interleaved in `rounds` rounds that each time every
    row for its share of `iters` calls (after one warm-up call), so that load from other processes falls on
    all rows alike. Times go to each row's `times`; peak memory is the most any round of the row saw."""
    per_round = [iters // rounds + (1 if r < iters % rounds else 0) for r in range(rounds)]
    for r, n in enumerate(per_round):
        if n == 0:
            continue
        for row in rows:
            row.reset_memory()
            row.times += row.timer(row.call, n, warmup if r == 0 else min(warmup, 1))
            mem = row.memory()
            if mem and mem["peak_mem_mb"] >= row.info.get("peak_mem_mb", -1):
                row.info.update(mem)


def _cuda_graph(fn: Callable, x):  # torch types
    """Capture one call of fn(x) into a CUDA graph; replaying it skips all launch overhead."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires
        for _ in range(3):
            fn(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(x)
    return graph.replay


def check_config(cfg: LatencyConfig) -> None:
    """Every option of a latency run, before any work (a bad one would fail inside each row instead)."""
    known_names(cfg.backends, BACKENDS, "--backend")
    known_names(cfg.precisions, PRECISIONS, "--precision")
    if not cfg.batches or min(cfg.batches) < 1:
        raise RszError(f"--batch {','.join(map(str, cfg.batches))}: expected positive integers")
    at_least(cfg.iters, 1, "--iters")
    at_least(cfg.warmup, 0, "--warmup")
    at_least(cfg.threads, 0, "--threads", "0: all cores")
    at_least(cfg.rounds, 1, "--rounds")
    if cfg.image_size is not None:
        at_least(cfg.image_size, 1, "--image-size")


def run_latency(spec: str, cfg: LatencyConfig, run_dir: Path | None = None, tmp: Path | None = None) -> dict:
    """All (backend, precision, batch) rows for one model, plus FLOPs and the measured peaks."""
    check_config(cfg)
    # the devices first: --device cuda that cannot run on a GPU is refused before any model is built
    ort = ort_device(cfg.device) if "ort" in cfg.backends else "cpu"
    if any(b in TORCH_BACKENDS for b in cfg.backends):
        torch_device(cfg.device)
    src = open_model(spec, cfg.image_size, run_dir, tmp, cfg.calibration)
    rows, timed = [], []
    for backend in cfg.backends:
        for precision in cfg.precisions:
            for batch in cfg.batches:
                row: dict[str, Any] = {"backend": backend, "precision": precision, "batch": batch}
                try:
                    if backend == "ort":
                        opened = _open_ort(src, precision, batch, cfg, ort)
                    elif backend == "trt":
                        opened = _open_trt(src, precision, batch, cfg)
                    else:
                        opened = _open_torch(src, backend, precision, batch, cfg)
                    if isinstance(opened, TimedRow) and cfg.rounds == 1:
                        time_rows([opened], cfg.iters, cfg.warmup, 1)  # timed now, then released
                        row.update(opened.info, **percentiles_ms(opened.times))
                    elif isinstance(opened, TimedRow):
                        timed.append((row, opened))
                    else:
                        row.update(opened)
                except RszError:
                    raise
                except Exception as err:  # one failing configuration must not lose the others' numbers
                    row["status"] = f"error: {type(err).__name__}: {first_line(err, limit=200)}"
                rows.append(row)
    if timed:
        try:
            time_rows([t for _, t in timed], cfg.iters, cfg.warmup, cfg.rounds)
            for row, t in timed:
                row.update(t.info, **percentiles_ms(t.times))
        except Exception as err:  # noqa: BLE001 - the failing row cannot be told apart in a round
            for row, _ in timed:
                row["status"] = f"error: {type(err).__name__}: {first_line(err, limit=200)}"
    for row in rows:
        row.setdefault("status", "ok")
    peaks = _measure_peaks(rows)
    for row in rows:
        if row["status"] != "ok":
            continue
        row["images_per_s"] = batch_rate(row["batch"], row["p50_ms"])
        if src.flops_per_image:
            row["achieved_tflops"] = src.flops_per_image * row["images_per_s"] / 1e12
            peak = peaks.get("cuda" if row["device"].startswith("cuda") else "cpu")
            if peak:
                row["fraction_of_peak"] = row["achieved_tflops"] / peak["tflops"]
    add_speed_ratios(rows)
    return {
        "model": spec,
        "image_size": src.image_size,
        "flops_per_image": src.flops_per_image,
        "flops_method": src.flops_method,
        "peaks": peaks,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(cfg).items()},
        "int8": src.int8,
        "rows": rows,
    }


def add_speed_ratios(rows: list[dict]) -> None:
    """Each measured row's images/s over its batch's baseline row in this run ("baseline", "x_baseline"):
    PyTorch FP32 (eager) where it was measured, else the first measured row. Absolute speeds differ
    between hosts and between loads of one host; a ratio of rows timed in one run is what compares."""
    for batch in dict.fromkeys(r["batch"] for r in rows):
        ok = [r for r in rows if r["batch"] == batch and r.get("status") == "ok"]
        if len(ok) < 2:  # nothing to compare with
            continue
        base = next((r for r in ok if (r["backend"], r["precision"]) == ("torch", "fp32")), ok[0])
        for r in ok:
            r["baseline"] = f"{base['backend']} {base['precision']}"
            r["x_baseline"] = r["images_per_s"] / base["images_per_s"]


def ratios_markdown(rows: list[dict]) -> list[str]:
    """The headline of a latency table: the ratios (speeds only compare within one run)."""
    lines = []
    for batch in dict.fromkeys(r["batch"] for r in rows):
        rated = [r for r in rows if r["batch"] == batch and "x_baseline" in r]
        named = [(f"{r['backend']} {r['precision']}", r) for r in rated]
        others = [f"{name} {r['x_baseline']:.2f}x" for name, r in named if name != r["baseline"]]
        if others:
            lines.append(f"- batch {batch}: {', '.join(others)} the speed of {rated[0]['baseline']}")
    if not lines:
        return []
    return ["Speed ratios (images/s at p50, rows timed in this same run):", *lines, ""]


def batch_rate(batch: int, p50_ms: float) -> float:
    return batch / (p50_ms / 1e3)


def _measure_peaks(rows: list[dict]) -> dict[str, dict]:
    """The matrix peak of each device that ran a row, measured now (see rsz_bench.flops)."""
    devices = {("cuda" if r["device"].startswith("cuda") else "cpu") for r in rows if r.get("status") == "ok"}
    peaks = {}
    if "cpu" in devices:
        peaks["cpu"] = flops_mod.measure_cpu_peak()
    if "cuda" in devices:
        try:
            peaks["cuda"] = flops_mod.measure_gpu_peak("fp16")
        except ImportError:  # TensorRT-only edge device: no torch to run the peak matmul
            pass
    return peaks


LATENCY_COLUMNS = [
    ("backend", "backend"),
    ("precision", "prec"),
    ("batch", "batch"),
    ("device", "device"),
    ("p50_ms", "p50 ms"),
    ("p90_ms", "p90 ms"),
    ("p99_ms", "p99 ms"),
    ("images_per_s", "images/s"),
    ("x_baseline", "x baseline"),
    ("peak_mem_mb", "peak MiB"),
    ("achieved_tflops", "TFLOP/s"),
    ("fraction_of_peak", "of peak"),
    ("status", "status"),
]


def latency_markdown(result: dict) -> str:
    from rsz_bench.report import markdown_table

    flops = result["flops_per_image"]
    lines = [
        *ratios_markdown(result["rows"]),
        f"Model `{result['model']}` at {result['image_size']} px; "
        + (f"{flops / 1e9:.2f} GFLOP/image ({result['flops_method']})." if flops else "FLOPs not counted."),
    ]
    for dev, peak in result["peaks"].items():
        lines.append(f"Measured {dev} peak: {peak['tflops']:.2f} TFLOP/s ({peak['method']}).")
    lines.append("Memory column: torch peak allocated on GPU rows, process peak RSS on CPU rows.")
    return "\n".join(lines) + "\n\n" + markdown_table(result["rows"], LATENCY_COLUMNS) + "\n"
