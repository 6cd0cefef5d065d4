"""TensorRT runner: a serialized engine (TensorRT 10+ or TensorRT-RTX) behind `infer(feeds)`.

Before loading, the engine's sidecar (written by rsz_export.trt_build) is checked against this machine: the
library and version must be the ones that built it, and this GPU's compute capability one it targets.
Device buffers come from cuda-python; copies are async on one stream from pinned host buffers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rsz_infer.errors import RszError
from rsz_infer.runners.base import Runner
from rsz_infer.trt_lib import (
    cudart,
    gpu_compute_capability,
    gpu_needed,
    load_trt,
    read_sidecar,
    sidecar_path,
)


def _check(result: tuple, what: str):  # cuda-python returns (err, value...)
    rt = cudart()
    err, *values = result
    if err != rt.cudaError_t.cudaSuccess:
        raise RszError(f"CUDA {what} failed: {rt.cudaGetErrorString(err)[1].decode()}")
    return values[0] if len(values) == 1 else values


class _PinnedBuffer:
    """A pinned host array and a device allocation of the same size, grown on demand."""

    def __init__(self) -> None:
        self.nbytes = 0
        self.device = 0
        self.host_ptr = 0
        self.host: np.ndarray | None = None

    def ensure(self, nbytes: int) -> None:
        if nbytes <= self.nbytes:
            return
        self.free()
        rt = cudart()
        self.device = _check(rt.cudaMalloc(nbytes), "cudaMalloc")
        self.host_ptr = _check(rt.cudaMallocHost(nbytes), "cudaMallocHost")
        self.host = np.ctypeslib.as_array((np.ctypeslib.ctypes.c_uint8 * nbytes).from_address(self.host_ptr))
        self.nbytes = nbytes

    def free(self) -> None:
        if self.nbytes:
            rt = cudart()
            rt.cudaFree(self.device)
            rt.cudaFreeHost(self.host_ptr)
            self.nbytes, self.host = 0, None


class TrtRunner(Runner):
    library = "TensorRT"

    def __init__(self, engine_path: Path | str, device: int = 0) -> None:
        self.path = Path(engine_path)
        side = sidecar_path(self.path)
        if not self.path.is_file():
            raise RszError(f"{self.path}: engine file not found")
        if not side.is_file():
            raise RszError(f"{side}: missing engine sidecar (rebuild the engine with rsz-export)")
        self.sidecar = read_sidecar(side)
        library, version = self.sidecar["library"], self.sidecar["library_version"]
        targets = self.sidecar["compute_capabilities"]
        # The GPU first: without one, installing TensorRT would only change the error (the library's
        # name comes from the JSON sidecar, not from the library).
        capability = gpu_compute_capability(device)
        if capability is None:
            raise RszError(
                f"{self.path}: no usable CUDA GPU on this machine ({gpu_needed({library})}); "
                "use the ONNX Runtime backend (--backend ort) instead"
            )
        lib = load_trt(prefer=library)
        if lib.version != version:
            raise RszError(
                f"{self.path}: engine built with {library} {version}, this machine has {lib.version}; "
                "rebuild it with rsz-export"
            )
        if capability not in targets and not (lib.is_rtx and _rtx_runs_later(capability, targets)):
            raise RszError(
                f"{self.path}: engine built for compute capability {', '.join(targets)}, "
                f"this machine has {capability}; rebuild it with rsz-export"
            )
        self.lib = lib
        trt = lib.module
        rt = cudart()
        _check(rt.cudaSetDevice(device), "cudaSetDevice")
        self.runtime = trt.Runtime(lib.logger())
        data = self.path.read_bytes()
        if lib.is_rtx:
            validity, diagnostics = self.runtime.get_engine_validity(data)
            if validity == trt.EngineValidity.INVALID:
                raise RszError(
                    f"{self.path}: {library} says this engine cannot run here (diagnostics "
                    f"{int(diagnostics)}: version, compute capability {capability} or driver)"
                )
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise RszError(f"{self.path}: {library} {version} could not load this engine")
        self.context = self.engine.create_execution_context()
        self.stream = _check(rt.cudaStreamCreate(), "cudaStreamCreate")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self._inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self._outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        self._buffers = {n: _PinnedBuffer() for n in names}
        self.input_dtypes = {
            n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))).name for n in self._inputs
        }
        self.name = f"{library}:{capability}"
        self.library = "TensorRT-RTX" if lib.is_rtx else "TensorRT"

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        trt, rt = self.lib.module, cudart()
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self._inputs:
            array = feeds[name]  # contiguous, in the engine's dtype (Runner.infer)
            buffer = self._buffers[name]
            buffer.ensure(max(array.nbytes, 1))
            buffer.host[: array.nbytes] = array.view(np.uint8).reshape(-1)
            _check(
                (rt.cudaMemcpyAsync(buffer.device, buffer.host_ptr, array.nbytes, h2d, self.stream)[0], None),
                "copy to GPU",
            )
            self.context.set_input_shape(name, array.shape)
            self.context.set_tensor_address(name, buffer.device)
        shapes = {}
        for name in self._outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            nbytes = int(np.prod(shape)) * dtype.itemsize
            self._buffers[name].ensure(max(nbytes, 1))
            self.context.set_tensor_address(name, self._buffers[name].device)
            shapes[name] = (shape, dtype, nbytes)
        if not self.context.execute_async_v3(self.stream):
            raise RszError(f"{self.path}: TensorRT failed to run this batch")
        for name, (_, _, nbytes) in shapes.items():
            buffer = self._buffers[name]
            _check(
                (rt.cudaMemcpyAsync(buffer.host_ptr, buffer.device, nbytes, d2h, self.stream)[0], None),
                "copy from GPU",
            )
        _check((rt.cudaStreamSynchronize(self.stream)[0], None), "stream synchronize")
        return {
            name: self._buffers[name].host[:nbytes].view(dtype).reshape(shape).copy()
            for name, (shape, dtype, nbytes) in shapes.items()
        }

    def close(self) -> None:
        for buffer in getattr(self, "_buffers", {}).values():
            buffer.free()
        if getattr(self, "stream", None) is not None:
            cudart().cudaStreamDestroy(self.stream)
            self.stream = None


def _rtx_runs_later(capability: str, targets: list[str]) -> bool:
    """TensorRT-RTX engines for Ampere+ also run on later GPUs (JIT at load); the library's validity check
    is the final word."""
    major_minor = tuple(int(p) for p in capability.split("."))
    return any(major_minor > tuple(int(p) for p in t.split(".")) for t in targets if t != "7.5")
