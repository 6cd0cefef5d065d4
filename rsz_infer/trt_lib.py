"""The one place that picks a TensorRT library: full TensorRT (10+) or TensorRT-RTX.

Both expose the same Python API (Builder, NetworkDefinition, OnnxParser, BuilderConfig, Runtime). The
differences that matter to rsz:
- TensorRT-RTX builds engines ahead of time on a machine WITHOUT a GPU, for explicit compute-capability
  targets (default: Ampere and later); engines are JIT-specialised on the user's GPU at load time.
- TensorRT-RTX has no precision builder flags: every network is strongly typed, precision comes from the
  ONNX graph (that is why export writes a separate FP16 graph). Its timing cache calls are no-ops.
- Engines only load with the exact library (name and version) that built them.
"""

from __future__ import annotations

import functools
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from rsz_infer.errors import RszError, first_line

MIN_TENSORRT_MAJOR = 10
# Import order: the full library first (it targets the GPU it runs on, datacentre GPUs included).
LIBRARIES = ("tensorrt", "tensorrt_rtx_bindings")


@dataclass(frozen=True)
class TrtLib:
    module: ModuleType
    name: str  # "tensorrt" | "tensorrt_rtx"
    version: str

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt_rtx"

    def logger(self):  # a trt.Logger
        return self.module.Logger(self.module.Logger.ERROR)


def _library_name(module_name: str) -> str:
    return "tensorrt_rtx" if "rtx" in module_name else "tensorrt"


def _check_version(module_name: str, version: str) -> None:
    if _library_name(module_name) == "tensorrt":
        major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
        if major < MIN_TENSORRT_MAJOR:
            raise RszError(
                f"tensorrt {version}: too old, rsz needs TensorRT {MIN_TENSORRT_MAJOR} or newer "
                "(pip install 'tensorrt>=10' or 'rsz[trt]' for TensorRT-RTX)"
            )


@functools.lru_cache(maxsize=4)
def load_trt(prefer: str | None = None) -> TrtLib:
    """The TensorRT library to build or run engines with.

    prefer: "tensorrt" or "tensorrt_rtx" to require one (an engine must load with the library that built
    it); None takes the first that imports. Raises RszError when none is usable.
    """
    candidates = LIBRARIES
    if prefer is not None:
        candidates = tuple(m for m in LIBRARIES if _library_name(m) == prefer)
        if not candidates:
            raise RszError(f"{prefer}: unknown TensorRT library (known: tensorrt, tensorrt_rtx)")
    problems = []
    for module_name in candidates:
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            problems.append(f"{module_name}: {first_line(err, 'not installed')}")
            continue
        version = str(getattr(module, "__version__", "0"))
        _check_version(module_name, version)
        return TrtLib(module=module, name=_library_name(module_name), version=version)
    wanted = prefer or "tensorrt (10+) or tensorrt_rtx"
    raise RszError(
        f"no TensorRT library: {wanted} does not import ({'; '.join(problems)}); pip install 'rsz[trt]'"
    )


def trt_available() -> TrtLib | None:
    """The TensorRT library when one imports, else None (for --engine auto)."""
    try:
        return load_trt()
    except RszError:
        return None


def sidecar_path(engine_path: Path) -> Path:
    """Every engine has `<engine>.json` beside it: library, version, targets, profile, ONNX hash."""
    return engine_path.with_name(engine_path.name + ".json")


def gpu_needed(libraries: set[str]) -> str:
    """What engines built with `libraries` (their sidecars' "library") need, for the lines that say there
    is no GPU: TensorRT-RTX engines run on RTX GPUs only."""
    if libraries == {"tensorrt_rtx"}:
        return "TensorRT-RTX engines need an RTX GPU"
    return "TensorRT engines need a GPU"


def read_sidecar(path: Path) -> dict:
    """The sidecar at `path` (sidecar_path of an engine), checked: a one-line RszError naming the file and
    the field when it is not JSON, not an object, or a field rsz reads is missing or of the wrong type.

    The one reader of sidecars (runner, runner selection, rsz-export inspect, benchmarks), so that a bad one
    says the same thing everywhere instead of a KeyError here and a silent default there.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RszError(f"{path}: engine sidecar is not JSON ({first_line(err, limit=200)})") from None
    except RecursionError:  # json's parser recurses: arrays or objects nested too deep
        raise RszError(f"{path}: engine sidecar is not JSON (nested too deep)") from None
    if not isinstance(data, dict):
        raise RszError(f"{path}: engine sidecar is not a JSON object")

    def bad(field: str, want: str) -> RszError:
        if field.split(".")[0] not in data:
            return RszError(f"{path}: engine sidecar has no {field!r} (rebuild the engine with rsz-export)")
        return RszError(f"{path}: engine sidecar field {field!r} must be {want}")

    for field in ("library", "library_version"):
        if not isinstance(data.get(field), str):
            raise bad(field, "a string")
    targets = data.get("compute_capabilities")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise bad("compute_capabilities", 'a non-empty list of strings such as "8.6"')
    # "precision" is optional: older sidecars have none (rsz_infer.backend.engine_precision defaults it)
    if "precision" in data and not isinstance(data["precision"], str):
        raise bad("precision", "a string")
    profile = data.get("profile")
    if not isinstance(profile, dict):
        raise bad("profile", "an object of input name -> min/opt/max shapes")
    for name, shapes in profile.items():
        for key in ("min", "opt", "max"):
            dims = shapes.get(key) if isinstance(shapes, dict) else None
            if not isinstance(dims, list) or not all(type(d) is int for d in dims):
                raise bad(f"profile.{name}.{key}", "a list of integers")
    return data


def cudart() -> ModuleType:
    """CUDA runtime bindings of cuda-python (new layout `cuda.bindings.runtime`, old `cuda.cudart`)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError:
            raise RszError(
                "cuda-python is not installed: pip install cuda-python (needed to run engines)"
            ) from None
    return runtime


def gpu_compute_capability(device: int = 0) -> str | None:
    """ "9.0"-style compute capability of a CUDA device, or None when there is no usable GPU."""
    try:
        rt = cudart()
    except RszError:
        return None
    attr = rt.cudaDeviceAttr
    err, major = rt.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, device)
    if err != rt.cudaError_t.cudaSuccess:
        return None
    err, minor = rt.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, device)
    return f"{major}.{minor}" if err == rt.cudaError_t.cudaSuccess else None
