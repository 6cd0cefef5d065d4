"""Runner selection: which backend runs a bundle graph here (TensorRT engine, ONNX Runtime or PyTorch),
in which precision (the bundle's FP32, FP16 or INT8 variant of the graph).

`auto` takes the fastest that works on this machine: a TensorRT engine when the bundle has one for the
graph and a GPU is present, ONNX Runtime otherwise (with its CUDA/TensorRT providers when it has them).
The choice and, for `auto`, the reason it fell back are reported through `runner.name` and `notes`.
`--device cuda` with an ONNX Runtime that has no GPU provider is an error naming what to install.

Precision `auto`: on the CPU the variant that export measured fastest (manifest extra "speed" "cpu"; every
variant listed there passed its check, INT8 included) when it is at least 10% faster than FP32, else FP32;
on a GPU FP16, then FP32 (INT8 only when asked: ONNX Runtime's CUDA provider runs QDQ graphs no faster than
FP16); without measurements the graph's default precision.
"""

from __future__ import annotations

import os
from pathlib import Path

from rsz_infer.bundle import Manifest
from rsz_infer.errors import RszError
from rsz_infer.runners.base import Runner

BACKENDS = ("auto", "trt", "ort", "torch")
DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("auto", "int8", "fp16", "fp32")
GPU_PREFERENCE = ("fp16", "fp32", "int8")
CLEARLY_FASTER = 1.1  # precision auto on the CPU leaves FP32 only for a variant at least 10% faster
GPU_EXTRA_HINT = (
    "install the GPU build: pip uninstall -y onnxruntime && pip install 'rsz[gpu]' (onnxruntime-gpu, "
    "with CUDA 12 and cuDNN 9 on the machine)"
)


def gpu_present() -> bool:
    """An NVIDIA GPU is visible to this process (device node present and not hidden by the user)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")


def variants(manifest: Manifest, role: str) -> dict[str, str]:
    """precision -> ONNX file of the role's graph (the default graph always among them)."""
    graph = manifest.graphs[role]
    found = dict(manifest.extra.get("variants", {}).get(role, {}))
    found.setdefault(graph.precision, graph.onnx)
    return found


def choose_precision(manifest: Manifest, role: str, precision: str, device: str) -> str:
    """The precision of the role's graph to run: `precision` when the bundle has it (the image graph must:
    other graphs fall back to their default), or the auto rule of this module's docstring."""
    if precision not in PRECISIONS:
        raise RszError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    have = variants(manifest, role)
    if precision != "auto":
        if precision in have:
            return precision
        if role == "image":
            raise RszError(
                f"--precision {precision}: the bundle has no {precision} image graph (it has "
                f"{', '.join(sorted(have))}; rsz-export --int8 / --fp16 add them)"
            )
    if device == "cpu":
        speed = manifest.extra.get("speed", {}).get("cpu", {}) if role == "image" else {}
        measured = {p: ms for p, ms in speed.items() if p in have and isinstance(ms, int | float)}
        if measured:
            fastest = min(measured, key=measured.get)
            # FP32 unless the other is clearly faster: a 2% "win" of INT8 (a ResNet whose convolutions
            # dynamic quantization leaves in FP32) is noise, and FP32 is the exact one
            if "fp32" in measured and measured[fastest] > measured["fp32"] / CLEARLY_FASTER:
                return "fp32"
            return fastest
    elif role == "image":
        return next(p for p in (*GPU_PREFERENCE, *have) if p in have)
    return manifest.graphs[role].precision


def ort_gpu_providers() -> list[str]:
    import onnxruntime as ort

    return [
        p
        for p in ort.get_available_providers()
        if p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    ]


def check_device(device: str) -> str:
    """auto | cpu | cuda | cuda:N, or a one-line RszError."""
    if not isinstance(device, str):  # the API's device=None: an AttributeError on .startswith
        raise RszError(f"--device {device!r}: expected one of {', '.join(DEVICES)} or cuda:N")
    index = device.partition(":")[2] if device.startswith("cuda:") else None
    if device not in DEVICES and not (index is not None and index.isdigit()):
        raise RszError(f"--device {device}: expected one of {', '.join(DEVICES)} or cuda:N")
    return device


_selected_gpu: str | None = None  # the cuda:N this process was pointed at


def select_gpu(device: str) -> None:
    """cuda:N: GPU N for this whole process, through CUDA_VISIBLE_DEVICES before the first engine opens, so
    ONNX Runtime, TensorRT, nvImageCodec and the native library all see it as their device 0. N counts
    within an existing CUDA_VISIBLE_DEVICES. A process whose CUDA is already initialised (e.g. by PyTorch)
    keeps its GPUs; run one process per GPU."""
    global _selected_gpu
    if _selected_gpu == device:
        return
    if _selected_gpu is not None:
        raise RszError(
            f"--device {device}: this process already runs on {_selected_gpu} (one GPU per process)"
        )
    index = int(device.partition(":")[2])
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if visible and index >= len(visible):
        raise RszError(
            f"--device {device}: CUDA_VISIBLE_DEVICES={','.join(visible)} lists {len(visible)} GPUs"
        )
    os.environ["CUDA_VISIBLE_DEVICES"] = visible[index] if visible else str(index)
    _selected_gpu = device


def resolve_device(device: str) -> str:
    """auto | cpu | cuda | cuda:N -> "cpu" or "cuda" (cuda:N first selects GPU N for the process)."""
    if check_device(device).startswith("cuda:"):
        select_gpu(device)
        return "cuda"
    if device == "auto":
        return "cuda" if gpu_present() else "cpu"
    return device


def open_runner(
    bundle_dir: Path | str,
    manifest: Manifest,
    role: str,
    backend: str = "auto",
    device: str = "auto",
    notes: list[str] | None = None,
    precision: str = "auto",
) -> Runner:
    """A runner for the bundle's graph of this role ("image", "text", "semantic", "rerank").

    notes, when given, collects one line per choice `auto` made (device, provider, fallbacks; for the run
    summary). The runner's `precision` says which variant of the graph runs.
    """
    bundle_dir = Path(bundle_dir)
    if backend not in BACKENDS:
        raise RszError(f"--backend {backend}: expected one of {', '.join(BACKENDS)}")
    asked = device
    device = resolve_device(device)
    graph = manifest.graphs.get(role)
    if graph is None:
        raise RszError(f"{bundle_dir}: the {manifest.model_kind} bundle has no {role!r} graph")
    if backend == "torch":  # the run's weights: any float precision, no ONNX variant needed
        if precision not in PRECISIONS:
            raise RszError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
        chosen = ("fp16" if device == "cuda" else "fp32") if precision == "auto" else precision
    else:
        chosen = choose_precision(manifest, role, precision, device)
    runner = _open(bundle_dir, manifest, graph, role, backend, device, notes, chosen)
    if asked == "auto" and notes is not None and role == "image":
        notes.append(_auto_device_note(device, runner))
    # the graph's own input types (ONNX Runtime, TensorRT) win; the manifest's fill in (a PyTorch module)
    runner.input_dtypes = {**{t.name: t.dtype for t in graph.inputs}, **runner.input_dtypes}
    runner.batch_range = _batch_range(graph, runner)
    runner.precision = chosen
    return runner


def _auto_device_note(device: str, runner: Runner) -> str:
    """--device auto says what it took and why."""
    why = "an NVIDIA GPU is visible" if device == "cuda" else "no NVIDIA GPU visible"
    providers = getattr(runner, "providers", None)
    took = f"provider {providers[0]}" if providers else f"runner {runner.name}"
    line = f"auto: device {device} ({why}), {took}"
    if device == "cuda" and providers and providers[0] == "CPUExecutionProvider":
        line += f"; the GPU is unused: {GPU_EXTRA_HINT}"
    return line


def _batch_range(graph, runner: Runner) -> tuple[int, int | None]:
    """Batch sizes the graph takes: fixed in the ONNX shape, or the engine's optimisation profile."""
    first = graph.inputs[0]
    if isinstance(first.shape[0], int):
        return first.shape[0], first.shape[0]
    engine_path = getattr(runner, "engine_path", None)
    if engine_path is not None:
        from rsz_infer.trt_lib import read_sidecar, sidecar_path

        try:
            profile = read_sidecar(sidecar_path(Path(engine_path)))["profile"].get(first.name)
        except (OSError, RszError):
            profile = None  # no usable sidecar: let the engine say what it takes
        if profile and profile["min"] and profile["max"]:
            return profile["min"][0], profile["max"][0]
    return 1, None


def _open(bundle_dir, manifest, graph, role, backend, device, notes, precision) -> Runner:
    if backend == "torch":
        return _torch(bundle_dir, manifest, role, device, precision)
    onnx_name = variants(manifest, role)[precision]
    if backend == "ort":
        return _ort(bundle_dir, onnx_name, device)
    if backend == "trt":
        if device == "cpu":
            raise RszError(_trt_needs_gpu(bundle_dir, graph, role))
        return _trt(bundle_dir, _engines_of(bundle_dir, graph, precision), role)
    # auto
    engines = _engines_of(bundle_dir, graph, precision)
    if device == "cuda" and engines:
        try:
            return _trt(bundle_dir, engines, role)
        except RszError as err:
            if notes is not None:
                notes.append(f"auto: TensorRT not usable for {role} ({err}); using ONNX Runtime")
    return _ort(bundle_dir, onnx_name, device)


def _trt_needs_gpu(bundle_dir: Path, graph, role: str) -> str:  # GraphSpec
    """The line for --backend trt when the device is the CPU: which GPU the graph's engines need (their
    sidecars' library) and why this run has none. All engines count: the CPU's precision may have none."""
    from rsz_infer.trt_lib import gpu_needed, read_sidecar, sidecar_path

    if not graph.engines:
        return f"{bundle_dir}: no TensorRT engine for the {role} graph; use --backend ort"
    libraries = set()
    for name in graph.engines:
        try:
            libraries.add(read_sidecar(sidecar_path(bundle_dir / name))["library"])
        except (OSError, RszError):
            pass  # said by TrtRunner where a GPU is
    need = gpu_needed(libraries)
    if gpu_present():
        return f"--backend trt: {need}, not --device cpu; use --device cuda or --backend ort"
    return f"--backend trt: {need} and no NVIDIA GPU is visible here; use --backend ort (ONNX Runtime)"


def engine_precision(engine: Path, default: str) -> str:
    """The precision an engine was built in (its sidecar's "precision"; older sidecars: `default`)."""
    from rsz_infer.trt_lib import read_sidecar, sidecar_path

    try:
        return read_sidecar(sidecar_path(engine)).get("precision", default)
    except (OSError, RszError):
        return default  # TrtRunner reports a missing or bad sidecar (read_sidecar's line) when it loads


def _engines_of(bundle_dir: Path, graph, precision: str) -> list[str]:  # GraphSpec
    """The graph's engines built in this precision (engine_precision; older sidecars: the graph's)."""
    built = {name: engine_precision(bundle_dir / name, graph.precision) for name in graph.engines}
    return [name for name in graph.engines if built[name] == precision]


def _ort(bundle_dir: Path, onnx_name: str, device: str) -> Runner:
    from rsz_infer.runners.ort import OrtRunner

    path = bundle_dir / onnx_name
    if not path.is_file():
        raise RszError(f"{path}: ONNX graph listed in the manifest is missing")
    check_ort_gpu(device)
    return ort_runner_on(OrtRunner(path, device=device), device)


def check_ort_gpu(device: str) -> None:
    """--device cuda needs an onnxruntime with a GPU provider: else one line naming what to install
    (never a silent CPU run). rsz-bench checks its --device with this too."""
    if device == "cuda" and not ort_gpu_providers():
        import onnxruntime as ort

        # with no GPU at all, installing the GPU build would only change the error
        what = GPU_EXTRA_HINT if gpu_present() else "and no NVIDIA GPU is visible here: use cpu (or auto)"
        raise RszError(
            f"--device cuda: this onnxruntime {ort.__version__} has no GPU provider (only "
            f"{', '.join(ort.get_available_providers())}); {what}"
        )


def ort_runner_on(runner: Runner, device: str) -> Runner:
    """The OrtRunner, when it runs where `device` asked: a GPU provider that failed to load (CUDA or cuDNN
    missing) makes onnxruntime fall back to the CPU quietly, which is refused in one line."""
    if device == "cuda" and runner.providers[0] == "CPUExecutionProvider":
        raise RszError(
            f"--device cuda: onnxruntime's GPU provider did not load here (CUDA or cuDNN libraries missing, "
            f"or no GPU); {GPU_EXTRA_HINT}"
        )
    return runner


def _trt(bundle_dir: Path, engines: list[str], role: str) -> Runner:
    if not engines:
        raise RszError(f"{bundle_dir}: no TensorRT engine for the {role} graph; use --backend ort")
    try:
        from rsz_infer.runners.trt import TrtRunner
    except ImportError as err:
        raise RszError(f"--backend trt: TensorRT runner unavailable ({err})") from None
    problems = []
    # A bundle may carry engines for several GPUs or libraries; the first that loads here wins.
    for name in engines:
        try:
            runner = TrtRunner(bundle_dir / name)
            runner.engine_path = getattr(runner, "engine_path", bundle_dir / name)  # for its sidecar profile
            return runner
        except RszError as err:
            problems.append(str(err))
    raise RszError(problems[0] if len(problems) == 1 else "; ".join(problems))


def _torch(bundle_dir: Path, manifest: Manifest, role: str, device: str, precision: str) -> Runner:
    try:
        import torch  # noqa: F401 - only to say clearly when it is missing
    except ImportError:
        raise RszError(
            "--backend torch: PyTorch is not installed (pip install 'rsz[train]'); use --backend ort or trt"
        ) from None
    from rsz_infer.runners.torch import bundle_runner

    return bundle_runner(bundle_dir, manifest, role, device, precision)
