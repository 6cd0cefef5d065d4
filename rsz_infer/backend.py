"""Runner selection: which backend runs a bundle graph here (TensorRT engine, ONNX Runtime or PyTorch).

`auto` takes the fastest that works on this machine: a TensorRT engine when the bundle has one for the
graph and a GPU is present, ONNX Runtime otherwise (with its CUDA/TensorRT providers when it has them).
The choice and, for `auto`, the reason it fell back are reported through `runner.name` and `notes`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rsz_infer.bundle import Manifest
from rsz_infer.errors import RszError
from rsz_infer.runners.base import Runner

BACKENDS = ("auto", "trt", "ort", "torch")
DEVICES = ("auto", "cuda", "cpu")


def gpu_present() -> bool:
    """An NVIDIA GPU is visible to this process (device node present and not hidden by the user)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")


def resolve_device(device: str) -> str:
    if device not in DEVICES:
        raise RszError(f"--device {device}: expected one of {', '.join(DEVICES)}")
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
) -> Runner:
    """A runner for the bundle's graph of this role ("image", "text", "semantic", "rerank").

    notes, when given, collects one line per fallback `auto` made (for the run summary).
    """
    bundle_dir = Path(bundle_dir)
    if backend not in BACKENDS:
        raise RszError(f"--backend {backend}: expected one of {', '.join(BACKENDS)}")
    device = resolve_device(device)
    graph = manifest.graphs.get(role)
    if graph is None:
        raise RszError(f"{bundle_dir}: the {manifest.model_kind} bundle has no {role!r} graph")
    runner = _open(bundle_dir, manifest, graph, role, backend, device, notes)
    # the graph's own input types (ONNX Runtime, TensorRT) win; the manifest's fill in (a PyTorch module)
    runner.input_dtypes = {**{t.name: t.dtype for t in graph.inputs}, **runner.input_dtypes}
    runner.batch_range = _batch_range(graph, runner)
    return runner


def _batch_range(graph, runner: Runner) -> tuple[int, int | None]:
    """Batch sizes the graph takes: fixed in the ONNX shape, or the engine's optimisation profile."""
    first = graph.inputs[0]
    if isinstance(first.shape[0], int):
        return first.shape[0], first.shape[0]
    engine_path = getattr(runner, "engine_path", None)
    if engine_path is not None:
        from rsz_infer.trt_lib import sidecar_path

        try:
            profile = json.loads(sidecar_path(Path(engine_path)).read_text(encoding="utf-8"))["profile"][
                first.name
            ]
            return int(profile["min"][0]), int(profile["max"][0])
        except (OSError, KeyError, ValueError, IndexError):
            pass  # no usable sidecar: let the engine say what it takes
    return 1, None


def _open(bundle_dir, manifest, graph, role, backend, device, notes) -> Runner:
    if backend == "ort":
        return _ort(bundle_dir, graph.onnx, device)
    if backend == "trt":
        if device == "cpu":
            raise RszError("--backend trt: TensorRT needs a GPU; use --device cuda or --backend ort")
        return _trt(bundle_dir, graph.engines, role)
    if backend == "torch":
        return _torch(bundle_dir, manifest, role, device)
    # auto
    if device == "cuda" and graph.engines:
        try:
            return _trt(bundle_dir, graph.engines, role)
        except RszError as err:
            if notes is not None:
                notes.append(f"auto: TensorRT not usable for {role} ({err}); using ONNX Runtime")
    return _ort(bundle_dir, graph.onnx, device)


def _ort(bundle_dir: Path, onnx_name: str, device: str) -> Runner:
    from rsz_infer.runners.ort import OrtRunner

    path = bundle_dir / onnx_name
    if not path.is_file():
        raise RszError(f"{path}: ONNX graph listed in the manifest is missing")
    return OrtRunner(path, device=device)


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


def _torch(bundle_dir: Path, manifest: Manifest, role: str, device: str) -> Runner:
    try:
        import torch  # noqa: F401 - only to say clearly when it is missing
    except ImportError:
        raise RszError("--backend torch: PyTorch is not installed; use --backend ort or trt") from None
    try:
        from rsz_infer.runners import torch as torch_runners
    except ImportError as err:
        raise RszError(f"--backend torch: PyTorch runner unavailable ({err})") from None
    from_bundle = getattr(torch_runners.TorchRunner, "from_bundle", None)
    if from_bundle is None:
        raise RszError(
            "--backend torch: not available for bundles (a bundle holds ONNX graphs and engines, "
            "not PyTorch weights); use --backend ort or trt"
        )
    return from_bundle(bundle_dir, manifest, role, device)
