"""Option checks shared by the rsz-bench commands, run before any work: a bad value is a one-line RszError
naming the option and the value, never a traceback or an error hidden in a table row."""

from __future__ import annotations

from collections.abc import Sequence

from rsz_infer.errors import RszError


def at_least(value: int, minimum: int, option: str, note: str = "") -> int:
    """`value` when it is at least `minimum`; `note` says what the smallest one means ("0: all cores")."""
    if value < minimum:
        raise RszError(f"{option} {value}: must be at least {minimum}" + (f" ({note})" if note else ""))
    return value


def known_names(names: Sequence[str], known: Sequence[str], option: str) -> list[str]:
    """A non-empty list of names from `known` (`--backend ,` would otherwise measure nothing, silently)."""
    if not names:
        raise RszError(f"{option}: no value given; expected one or more of {', '.join(known)}")
    for name in names:
        if name not in known:
            raise RszError(f"{option} {name}: unknown; known: {', '.join(known)}")
    return list(names)


def ort_device(device: str) -> str:
    """The device ONNX Runtime rows run on: auto takes the GPU when this onnxruntime has a GPU provider;
    cuda without one is the error rsz-infer gives (rsz_infer.backend.check_ort_gpu), never a silent CPU
    run (DESIGN.md). Runners made for it are checked with rsz_infer.backend.ort_runner_on."""
    if device == "cpu":
        return "cpu"
    from rsz_infer.backend import check_ort_gpu, ort_gpu_providers

    check_ort_gpu(device)
    return "cuda" if ort_gpu_providers() else "cpu"


def torch_device(device: str) -> str:
    """The device PyTorch rows run on: auto takes the GPU when torch sees one; cuda without one is an error
    up front (each row failing on its own would hide it in the table). Without torch (an edge device with
    only the inference side) the device is left as asked: the torch rows say torch is missing."""
    try:
        import torch
    except ImportError:
        return "cpu" if device == "auto" else device

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RszError(f"--device cuda: this PyTorch {torch.__version__} sees no GPU")
    return device
