"""ctypes binding of cpp_plugins' native preprocessing (no torch): a batch of uint8 RGB tiles of any sizes
-> normalised NCHW float32/float16 at the model size, equal to rsz_infer.preprocess.to_model_input.

The library is cpp_plugins/build/librsz_preprocess_cuda.so (CPU + CUDA) or librsz_preprocess.so (CPU),
built with `make -C cpp_plugins cpu` / `make -C cpp_plugins cuda` (scripts/setup.sh builds the CPU one);
RSZ_NATIVE_LIB names another file. rsz-infer uses it through `open_preprocessor` (`--preprocess`).
"""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

import numpy as np

from rsz_infer.errors import RszError
from rsz_infer.preprocess import PreprocessSpec

PLUGIN_DIR = Path(__file__).resolve().parent.parent / "cpp_plugins"
LIBRARY_NAMES = ("librsz_preprocess_cuda.so", "librsz_preprocess.so")
PREPROCESSORS = ("auto", "pillow", "native")
# RSZ_NATIVE_ABI_VERSION of include/rsz_preprocess.h: raise both whenever a function there changes its
# parameters or meaning. A library answering another number (or none: built before the version existed)
# is refused, since calling functions that take other arguments crashes or computes garbage.
ABI_VERSION = 2
# rsz_preprocess_cpu's filter argument for each PreprocessSpec.resize (resample.h's Filter); the CUDA path
# has the bilinear one only.
FILTERS = {"bilinear": 0, "bicubic": 1}

_u8p = ctypes.POINTER(ctypes.c_uint8)
_i64p = ctypes.POINTER(ctypes.c_int64)
_i32p = ctypes.POINTER(ctypes.c_int32)
_f32p = ctypes.POINTER(ctypes.c_float)
_COMMON = [_u8p, _i64p, _i32p, _i32p, ctypes.c_int32, ctypes.c_int32, _f32p, _f32p, ctypes.c_int32]


def library_path() -> Path | None:
    """RSZ_NATIVE_LIB when set (even if missing, so a typo is reported), else the first built library."""
    if os.environ.get("RSZ_NATIVE_LIB"):
        return Path(os.environ["RSZ_NATIVE_LIB"])
    for name in LIBRARY_NAMES:
        if (PLUGIN_DIR / "build" / name).is_file():
            return PLUGIN_DIR / "build" / name
    return None


def _cut_short(path: Path) -> bool:
    """True when a 64-bit ELF file ends inside one of the segments dlopen maps (a copy interrupted, a full
    disk while building): dlopen maps it anyway and the first touch of the missing pages is a SIGBUS."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:6] != b"\x7fELF\x02\x01":
                return False  # not a 64-bit little-endian ELF file: dlopen's own error says what is wrong
            (table_at,) = struct.unpack_from("<Q", head, 32)  # e_phoff
            entry, count = struct.unpack_from("<HH", head, 54)  # e_phentsize, e_phnum
            f.seek(table_at)
            table = f.read(entry * count)
    except OSError:
        return False  # unreadable: dlopen says why
    if entry < 56 or len(table) < entry * count:
        return True
    size = path.stat().st_size
    for i in range(count):
        kind, _, offset, _, _, in_file = struct.unpack_from("<IIQQQQ", table, i * entry)
        if kind == 1 and offset + in_file > size:  # PT_LOAD
            return True
    return False


class NativePreprocessor:
    """Loads the library once; `__call__(tiles)` preprocesses a batch on the CPU or on the GPU."""

    def __init__(self, spec: PreprocessSpec, device: str = "auto", path: Path | None = None) -> None:
        path = path or library_path()
        if path is None:
            if not PLUGIN_DIR.is_dir():  # an installed rsz (pip install .): the sources stay in the checkout
                raise RszError(
                    "native preprocessing not built: run `make -C cpp_plugins` in an rsz checkout and set "
                    "RSZ_NATIVE_LIB to its cpp_plugins/build/librsz_preprocess.so"
                )
            raise RszError(
                f"{PLUGIN_DIR / 'build'}: native preprocessing not built (run: make -C cpp_plugins)"
            )
        if Path(path).is_dir():  # RSZ_NATIVE_LIB=cpp_plugins/build: the library is there, name it
            raise RszError(
                f"{path}: a folder; RSZ_NATIVE_LIB names the library file in it "
                "(librsz_preprocess.so or librsz_preprocess_cuda.so)"
            )
        if not Path(path).is_file():
            raise RszError(f"{path}: native preprocessing not built (no such file)")
        # Idle OpenMP workers sleep instead of spinning: the decode threads of the pipeline share the cores.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if _cut_short(Path(path)):
            raise RszError(
                f"{path}: cannot load the native library (truncated: rebuild it with make -C cpp_plugins)"
            )
        try:
            # absolute: dlopen looks a name without a slash up on the library path, not in the current folder
            self.lib = ctypes.CDLL(str(Path(path).absolute()))
        except OSError as err:
            raise RszError(f"{path}: cannot load the native library ({err})") from None
        if not hasattr(self.lib, "rsz_preprocess_cpu"):  # another library altogether
            raise RszError(f"{path}: not rsz's native preprocessing library (no rsz_preprocess_cpu)")
        rebuild = "rebuild it with make -C cpp_plugins"
        if not hasattr(self.lib, "rsz_native_abi_version"):  # built from sources older than the version
            raise RszError(f"{path}: a stale native library (no ABI version; {rebuild})")
        self.lib.rsz_native_abi_version.restype = ctypes.c_int32
        version = self.lib.rsz_native_abi_version()
        if version != ABI_VERSION:  # built from other sources: its functions may take other arguments
            raise RszError(
                f"{path}: native library ABI version {version}, this rsz needs {ABI_VERSION} ({rebuild})"
            )
        for name in ("rsz_preprocess_cuda", "rsz_cuda_available", "rsz_last_error"):
            if not hasattr(self.lib, name):  # the version says it is there: a library built some other way
                raise RszError(f"{path}: not rsz's native preprocessing library (no {name})")
        self.lib.rsz_preprocess_cpu.argtypes = [*_COMMON, ctypes.c_int32, ctypes.c_void_p]
        self.lib.rsz_preprocess_cuda.argtypes = [*_COMMON, ctypes.c_int32, ctypes.c_void_p]
        self.lib.rsz_last_error.restype = ctypes.c_char_p
        if spec.resize not in FILTERS:  # load_manifest refuses such a bundle first; a spec built in code
            raise RszError(f"preprocess.resize {spec.resize!r}: expected one of {', '.join(FILTERS)}")
        if device == "cuda" and spec.resize != "bilinear":  # its kernel has Pillow's bilinear filter only
            raise RszError(
                f"the native CUDA preprocess supports bilinear bundles only; this one resizes {spec.resize} "
                "(the CPU path, device 'cpu' or 'auto', has both)"
            )
        # A bicubic bundle takes the CPU path when the device is left to rsz.
        cuda = spec.resize == "bilinear" and bool(self.lib.rsz_cuda_available())
        if device == "cuda" and not cuda:
            raise RszError(f"{path}: no CUDA path (CPU-only build, or no GPU visible)")
        self.device = "cuda" if (device == "cuda" or (device == "auto" and cuda)) else "cpu"
        self.name = f"native:{self.device}"
        self.spec = spec
        self._mean = np.asarray(spec.mean, np.float32)
        self._std = np.asarray(spec.std, np.float32)

    def __call__(self, tiles: list[np.ndarray], dtype: str = "float32") -> np.ndarray:
        """tiles: HxWx3 uint8 arrays (sizes may differ) -> [B, 3, size, size] of dtype."""
        for i, t in enumerate(tiles):
            if t.dtype != np.uint8 or t.ndim != 3 or t.shape[2] != 3:
                raise RszError(f"tile {i}: expected HxWx3 uint8, got {t.dtype} {t.shape}")
        heights = np.asarray([t.shape[0] for t in tiles], np.int32)
        widths = np.asarray([t.shape[1] for t in tiles], np.int32)
        sizes = heights.astype(np.int64) * widths * 3
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        packed = (
            np.concatenate([np.ascontiguousarray(t).reshape(-1) for t in tiles])
            if tiles
            else np.zeros(1, np.uint8)
        )
        size = self.spec.size
        shape = (len(tiles), 3, size, size)
        out = np.empty(shape, dtype=np.dtype(dtype))
        if out.dtype not in (np.float16, np.float32):
            raise RszError(f"dtype {out.dtype}: expected float32 or float16")
        fp16 = int(out.dtype == np.float16)
        args = [
            packed.ctypes.data_as(_u8p),
            offsets.ctypes.data_as(_i64p),
            heights.ctypes.data_as(_i32p),
            widths.ctypes.data_as(_i32p),
            len(tiles),
            size,
            self._mean.ctypes.data_as(_f32p),
            self._std.ctypes.data_as(_f32p),
            fp16,
        ]
        if self.device == "cuda":
            status = self.lib.rsz_preprocess_cuda(*args, 0, out.ctypes.data)
        else:
            status = self.lib.rsz_preprocess_cpu(*args, FILTERS[self.spec.resize], out.ctypes.data)
        if status != 0:
            raise RszError(f"native preprocessing: {self.lib.rsz_last_error().decode()}")
        return out


def open_preprocessor(
    choice: str, spec: PreprocessSpec, device: str, notes: list[str] | None = None
) -> NativePreprocessor | None:
    """`--preprocess`: a NativePreprocessor for `native`; None for Pillow (to_model_input per tile).

    `auto` takes native whenever the library is built (it equals Pillow's result and runs a whole batch in
    one call); an explicit `native` that cannot load is an error. `device` is the resolved engine device:
    the CUDA path is used when the library has it and the engine is not on the CPU.
    """
    if choice not in PREPROCESSORS:
        raise RszError(f"--preprocess {choice}: expected one of {', '.join(PREPROCESSORS)}")
    if choice == "pillow":
        return None
    native_device = "cpu" if device == "cpu" else "auto"
    if choice == "native":
        return NativePreprocessor(spec, native_device)
    path = library_path()
    if path is None:
        return None
    if not path.exists():  # only RSZ_NATIVE_LIB can name a missing file: a typo there is worth a line
        if notes is not None:
            notes.append(f"--preprocess auto: RSZ_NATIVE_LIB {path}: no such file; using Pillow")
        return None
    try:
        return NativePreprocessor(spec, native_device, path)
    except RszError as err:
        if notes is not None:
            notes.append(f"--preprocess auto: {err}; using Pillow")
        return None
