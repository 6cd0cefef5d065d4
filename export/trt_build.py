"""ONNX -> TensorRT engine with either TensorRT 10+ or TensorRT-RTX (rsz_infer.trt_lib picks the library).

Every engine gets a sidecar `<engine>.json` (see `build_engine`) that rsz_infer.runners.trt checks before
loading: an engine only runs with the library and version that built it, on a GPU it was built for.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from rsz_infer.bundle import sha256_file
from rsz_infer.errors import RszError, first_line
from rsz_infer.trt_lib import TrtLib, gpu_compute_capability, load_trt, sidecar_path

# --engine: TensorRT required, none, or when a TensorRT library imports (rsz_export.api, rsz-export)
ENGINE_CHOICES = ("trt", "none", "auto")

# TensorRT-RTX on a machine without a GPU needs explicit targets. Its default set: Ampere and later. Turing
# (7.5) is left out on purpose: TensorRT-RTX cannot compile FP32 GEMMs for it and wants Turing-only engines.
DEFAULT_RTX_TARGETS = ("8.0", "8.6", "8.9", "12.0")


@dataclass(frozen=True)
class ShapeRange:
    """min:opt:max of one dynamic axis, parsed from the CLI's "1:32:256"."""

    min: int
    opt: int
    max: int

    @classmethod
    def parse(cls, text: str, what: str = "--batch") -> ShapeRange:
        parts = text.split(":")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 3 or not (1 <= values[0] <= values[1] <= values[2]):
            raise RszError(
                f"{what} {text!r}: expected min:opt:max with 1 <= min <= opt <= max, e.g. 1:32:256"
            )
        return cls(*values)

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


def onnx_input_dims(onnx_path: Path) -> dict[str, list[int | str]]:
    """Input name -> dims (int, or the dim_param name such as "batch"/"seq" for dynamic axes)."""
    import onnx  # here, not at the top: rsz-export inspect imports this module and needs no export extra

    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    dims = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        shape = value.type.tensor_type.shape.dim
        dims[value.name] = [d.dim_param if d.dim_param else int(d.dim_value) for d in shape]
    return dims


def optimisation_profile(
    input_dims: dict[str, list[int | str]], batch: ShapeRange, seq: ShapeRange
) -> dict[str, dict[str, list[int]]]:
    """Input name -> {"min","opt","max"} shapes: axes named "seq" follow `seq`, every other dynamic axis
    (batch, classes) follows `batch`."""
    profile = {}
    for name, dims in input_dims.items():
        shapes = {"min": [], "opt": [], "max": []}
        for d in dims:
            axis = seq if d == "seq" else batch if isinstance(d, str) or d <= 0 else None
            for key in shapes:
                shapes[key].append(getattr(axis, key) if axis is not None else int(d))
        profile[name] = shapes
    return profile


def _rtx_target_enum(lib: TrtLib, target: str):  # a ComputeCapability member
    name = "SM" + target.replace(".", "")
    member = getattr(lib.module.ComputeCapability, name, None)
    if member is None:
        known = [m for m in lib.module.ComputeCapability.__members__ if m.startswith("SM")]
        raise RszError(f"compute capability {target}: not a TensorRT-RTX target (known: {', '.join(known)})")
    return member


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    profile: dict[str, dict[str, list[int]]],
    precision: str,
    timing_cache: Path | None = None,
    targets: tuple[str, ...] | None = None,
    lib: TrtLib | None = None,
) -> dict:
    """Build one engine from `onnx_path` into `engine_path` and write its sidecar; returns the sidecar.

    The network is strongly typed: precision comes from the ONNX graph (TensorRT-RTX has no other way, and
    TensorRT 10 then keeps exactly the FP32 islands the FP16 graph asks for). `targets` are compute
    capabilities ("8.6"); TensorRT-RTX builds for them on any machine, full TensorRT always builds for the
    GPU it runs on. `timing_cache` is read and updated (full TensorRT; TensorRT-RTX has none).
    """
    lib = lib or load_trt()
    trt = lib.module
    started = time.perf_counter()
    logger = lib.logger()
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        first = str(parser.get_error(0).desc()) if parser.num_errors else "unknown parser error"
        raise RszError(f"{onnx_path}: TensorRT cannot parse this ONNX graph ({first_line(first)})")
    config = builder.create_builder_config()

    trt_profile = builder.create_optimization_profile()
    for name, shapes in profile.items():
        trt_profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(trt_profile)

    if lib.is_rtx:
        targets = tuple(targets or DEFAULT_RTX_TARGETS)
        config.num_compute_capabilities = len(targets)
        for index, target in enumerate(targets):
            config.set_compute_capability(_rtx_target_enum(lib, target), index)
    else:
        current = gpu_compute_capability()
        if current is None:
            raise RszError(
                f"{lib.name} {lib.version}: full TensorRT needs a GPU to build engines; "
                "install tensorrt-rtx to build on a CPU-only machine"
            )
        if targets and tuple(targets) != (current,):
            raise RszError(f"targets {','.join(targets)}: full TensorRT builds only for this GPU ({current})")
        targets = (current,)
        cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
        cache = config.create_timing_cache(cache_bytes)
        config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RszError(f"{onnx_path}: {lib.name} {lib.version} failed to build an engine (see its log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_name(engine_path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(engine_path)
    if not lib.is_rtx and timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))

    sidecar = {
        "library": lib.name,
        "library_version": lib.version,
        "compute_capabilities": list(targets),
        "profile": profile,
        "precision": precision,
        "strongly_typed": True,
        "onnx": onnx_path.name,
        "onnx_sha256": sha256_file(onnx_path),
        "timing_cache": timing_cache.name if (timing_cache is not None and not lib.is_rtx) else None,
        "build_seconds": round(time.perf_counter() - started, 3),
    }
    sidecar_path(engine_path).write_text(json.dumps(sidecar, indent=2), encoding="utf-8")
    return sidecar
