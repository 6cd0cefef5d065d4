"""cpp_plugins native preprocessing: builds with g++ and matches rsz_infer.preprocess.to_model_input.

Tolerance: Pillow's bilinear and bicubic resizes are reproduced exactly (same fixed-point weights, same
8-bit rounded intermediate, same pass order as Pillow 13), so square tiles must match bit for bit. For
non-square tiles other Pillow versions may run the two passes in the other order, which moves a value by at
most one 8-bit level: 1 / (255 * std) after normalisation.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rsz_infer.native import PLUGIN_DIR, NativePreprocessor
from rsz_infer.preprocess import PreprocessSpec, to_model_input

SPEC = PreprocessSpec(size=32)
# Both filters of PreprocessSpec.resize: rsz's own models' bilinear, CLIP checkpoints' bicubic.
SPECS = [SPEC, PreprocessSpec(size=32, resize="bicubic")]
ONE_LEVEL = 1.0 / (255.0 * min(SPEC.std)) + 1e-6
# (height, width): identity, square down/up, and non-square tiles taking each pass order
SQUARE = [(32, 32), (256, 256), (100, 100), (20, 20)]
NON_SQUARE = [(50, 20), (20, 50), (45, 31), (31, 33), (300, 7)]
# Pillow 13's pass order on both sides of its boundary (vertical first iff h > size and
# 2 (w - size) < h - size; size 32): (34, 33), (46, 39) and (130, 100) run horizontal first, (35, 33),
# (46, 38), (250, 130), (71, 45) and (512, 256) vertical first (taller tiles whose width shrinks too: the
# order the first rule, "the height shrinks while the width grows", missed). The same rule holds for bicubic
# (compared with Pillow 13 over every shape up to 200 x 200 at sizes 32 and 64: no shape where the other
# order matched and the rule's did not).
PASS_ORDER = [(34, 33), (35, 33), (46, 38), (46, 39), (250, 130), (71, 45), (130, 100), (512, 256)]


def _build(target: str, build_dir: Path) -> Path:
    subprocess.run(["make", "-s", "-C", str(PLUGIN_DIR), target, f"BUILD={build_dir}"], check=True)
    name = "librsz_preprocess_cuda.so" if target == "cuda" else "librsz_preprocess.so"
    return build_dir / name


@pytest.fixture(scope="session")
def cpu_lib(tmp_path_factory) -> Path:
    if shutil.which("g++") is None or shutil.which("make") is None:
        pytest.skip("g++/make not installed")
    return _build("cpu", tmp_path_factory.mktemp("native"))


def _tiles(shapes: list[tuple[int, int]], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    tiles = []
    for h, w in shapes:
        noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        yy, xx = np.mgrid[0:h, 0:w]  # half noise, half smooth gradient: both kinds of content
        smooth = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1)
        tiles.append(np.where(xx[..., None] < w // 2, noise, smooth.astype(np.uint8)))
    return tiles


def _reference(tiles: list[np.ndarray], spec: PreprocessSpec = SPEC) -> np.ndarray:
    return np.stack([to_model_input(t, spec) for t in tiles])


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.resize)
def test_cpu_matches_pillow_reference(cpu_lib, spec):
    native = NativePreprocessor(spec, device="cpu", path=cpu_lib)
    square, other = _tiles(SQUARE), _tiles(NON_SQUARE, seed=1)
    out = native(square + other)
    assert out.shape == (len(SQUARE) + len(NON_SQUARE), 3, 32, 32) and out.dtype == np.float32
    np.testing.assert_array_equal(out[: len(SQUARE)], _reference(square, spec))
    assert np.abs(out[len(SQUARE) :] - _reference(other, spec)).max() <= ONE_LEVEL


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.resize)
def test_cpu_pass_order_is_pillow_13s(cpu_lib, spec):
    import PIL

    if int(PIL.__version__.split(".")[0]) != 13:
        pytest.skip(f"Pillow {PIL.__version__}: the pass order is Pillow 13's")
    native = NativePreprocessor(spec, device="cpu", path=cpu_lib)
    tiles = _tiles(PASS_ORDER, seed=2)
    np.testing.assert_array_equal(native(tiles), _reference(tiles, spec))  # bit for bit, each shape


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.resize)
def test_cpu_fp16_output_is_the_rounded_fp32(cpu_lib, spec):
    native = NativePreprocessor(spec, device="cpu", path=cpu_lib)
    tiles = _tiles(SQUARE)
    np.testing.assert_array_equal(native(tiles, "float16"), _reference(tiles, spec).astype(np.float16))


def test_bicubic_is_not_bilinear(cpu_lib):
    """The filter reaches the library: a bicubic spec's native output is Pillow's bicubic, not its bilinear
    (which the other tests' bilinear half would pass with)."""
    tiles = _tiles([(256, 256), (100, 100)])
    out = NativePreprocessor(SPECS[1], device="cpu", path=cpu_lib)(tiles)
    np.testing.assert_array_equal(out, _reference(tiles, SPECS[1]))
    assert np.abs(out - _reference(tiles, SPEC)).max() > ONE_LEVEL


def test_bad_tiles_are_one_line_errors(cpu_lib):
    from rsz_infer.errors import RszError

    native = NativePreprocessor(SPEC, device="cpu", path=cpu_lib)
    with pytest.raises(RszError, match="tile 1: expected HxWx3 uint8"):
        native([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)])
    with pytest.raises(RszError, match="native preprocessing not built"):
        NativePreprocessor(SPEC, path=cpu_lib.parent / "missing.so")


def test_installed_rsz_without_the_library_names_rsz_native_lib(monkeypatch, tmp_path):
    """`pip install .` copies no cpp_plugins/ beside rsz_infer: the error must not send the user to build a
    library rsz then cannot find, but name RSZ_NATIVE_LIB."""
    from rsz_infer import native
    from rsz_infer.errors import RszError

    monkeypatch.delenv("RSZ_NATIVE_LIB", raising=False)
    monkeypatch.setattr(native, "PLUGIN_DIR", tmp_path / "site-packages" / "cpp_plugins")
    with pytest.raises(RszError, match="set RSZ_NATIVE_LIB to its cpp_plugins/build/librsz_preprocess.so"):
        NativePreprocessor(SPEC)


def _gpu_present() -> bool:
    return shutil.which("nvcc") is not None and shutil.which("nvidia-smi") is not None


@pytest.mark.skipif(not _gpu_present(), reason="needs nvcc and an NVIDIA GPU")
def test_cuda_matches_cpu_and_pillow(tmp_path):
    lib = _build("cuda", tmp_path)
    gpu = NativePreprocessor(SPEC, device="cuda", path=lib)
    cpu = NativePreprocessor(SPEC, device="cpu", path=lib)
    tiles = _tiles(SQUARE + NON_SQUARE, seed=2)
    for dtype in ("float32", "float16"):
        np.testing.assert_array_equal(gpu(tiles, dtype), cpu(tiles, dtype))
    np.testing.assert_array_equal(gpu(tiles[: len(SQUARE)]), _reference(tiles[: len(SQUARE)]))


def test_auto_says_when_rsz_native_lib_names_no_file(monkeypatch, tmp_path):
    from rsz_infer.native import open_preprocessor

    monkeypatch.setenv("RSZ_NATIVE_LIB", str(tmp_path / "typo.so"))
    notes: list[str] = []
    assert open_preprocessor("auto", SPEC, "cpu", notes) is None  # Pillow, as without the library
    assert notes == [f"--preprocess auto: RSZ_NATIVE_LIB {tmp_path / 'typo.so'}: no such file; using Pillow"]


def test_rsz_native_lib_relative_to_the_current_folder(cpu_lib, monkeypatch):
    """dlopen looks a name without a slash up on the library path (and pathlib drops a leading ./), so
    `RSZ_NATIVE_LIB=librsz_preprocess.so` in its own folder failed with "cannot open shared object file"."""
    monkeypatch.chdir(cpu_lib.parent)
    for name in (cpu_lib.name, f"./{cpu_lib.name}"):
        monkeypatch.setenv("RSZ_NATIVE_LIB", name)
        native = NativePreprocessor(SPEC, device="cpu")
        tiles = _tiles([(20, 20)])
        np.testing.assert_array_equal(native(tiles), _reference(tiles))


def _refused_in_one_line_and_auto_takes_pillow(lib: Path, expected: str, monkeypatch) -> None:
    """An unusable library: `native` is the one line `expected`, `auto` (RSZ_NATIVE_LIB) notes it and takes
    Pillow."""
    from rsz_infer.errors import RszError
    from rsz_infer.native import open_preprocessor

    with pytest.raises(RszError) as err:
        NativePreprocessor(SPEC, device="cpu", path=lib)
    assert str(err.value) == expected
    monkeypatch.setenv("RSZ_NATIVE_LIB", str(lib))
    notes: list[str] = []
    assert open_preprocessor("auto", SPEC, "cpu", notes) is None
    assert notes == [f"--preprocess auto: {expected}; using Pillow"]


def test_a_library_without_rsz_functions_is_one_line(monkeypatch):
    """RSZ_NATIVE_LIB naming another shared library (here numpy's own): one line, not ctypes' AttributeError;
    `auto` notes it and takes Pillow."""

    foreign = Path(np._core._multiarray_umath.__file__)
    expected = f"{foreign}: not rsz's native preprocessing library (no rsz_preprocess_cpu)"
    _refused_in_one_line_and_auto_takes_pillow(foreign, expected, monkeypatch)


_LOAD = """
import sys
from pathlib import Path
from rsz_infer.errors import RszError
from rsz_infer.native import NativePreprocessor, open_preprocessor
from rsz_infer.preprocess import PreprocessSpec
try:
    NativePreprocessor(PreprocessSpec(size=32), "cpu", Path(sys.argv[1]))
except RszError as err:
    print(err)
notes = []
print(open_preprocessor("auto", PreprocessSpec(size=32), "cpu", notes), notes)
"""


def test_a_truncated_library_is_one_line_not_a_crash(cpu_lib, tmp_path):
    """A library cut short (a copy interrupted, a full disk while building) ends inside a segment that dlopen
    maps: touching it killed the process with SIGBUS. Loaded in a child process, so that a crash fails this
    test instead of ending the test run."""
    cut = tmp_path / "cut.so"
    cut.write_bytes(cpu_lib.read_bytes()[: cpu_lib.stat().st_size // 2])
    root = str(Path(__file__).resolve().parents[2])  # this checkout's rsz_infer, not an installed one
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    env["RSZ_NATIVE_LIB"] = str(cut)
    run = subprocess.run([sys.executable, "-c", _LOAD, str(cut)], capture_output=True, text=True, env=env)
    expected = f"{cut}: cannot load the native library (truncated: rebuild it with make -C cpp_plugins)"
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"{expected}\nNone ['--preprocess auto: {expected}; using Pillow']\n"


def test_rsz_native_lib_naming_the_build_folder_says_so(cpu_lib, monkeypatch):
    """RSZ_NATIVE_LIB=cpp_plugins/build (the folder, not the file in it) was reported as "not built (no such
    file)" while the library is there."""
    from rsz_infer.errors import RszError
    from rsz_infer.native import open_preprocessor

    folder = cpu_lib.parent
    expected = f"{folder}: a folder; RSZ_NATIVE_LIB names the library file in it "
    expected += "(librsz_preprocess.so or librsz_preprocess_cuda.so)"
    monkeypatch.setenv("RSZ_NATIVE_LIB", str(folder))
    with pytest.raises(RszError) as err:
        NativePreprocessor(SPEC, device="cpu")
    assert str(err.value) == expected
    notes: list[str] = []
    assert open_preprocessor("auto", SPEC, "cpu", notes) is None
    assert notes == [f"--preprocess auto: {expected}; using Pillow"]


# A library built from other rsz sources: the four functions rsz calls, with another signature for the
# preprocessing one (an older ABI), and optionally another ABI version.
_STALE = """
#include <stdint.h>
int rsz_preprocess_cpu(const uint8_t *p, int32_t batch, void *out) { return 0; }
int rsz_preprocess_cuda(void) { return 1; }
int rsz_cuda_available(void) { return 0; }
const char *rsz_last_error(void) { return ""; }
"""


def _stale_library(folder: Path, version: int | None) -> Path:
    """_STALE compiled (plain C, a fraction of a second), with rsz_native_abi_version returning `version`."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler")
    source, lib = folder / "stale.c", folder / "stale.so"
    answer = "" if version is None else f"int rsz_native_abi_version(void) {{ return {version}; }}\n"
    source.write_text(_STALE + answer)
    subprocess.run([compiler, "-shared", "-fPIC", "-O0", "-o", str(lib), str(source)], check=True)
    return lib


@pytest.mark.parametrize("version", [None, 1, 3])
def test_a_library_of_another_abi_version_is_one_line(version, tmp_path, monkeypatch):
    """A stale build (a user's own, one left in a venv) whose functions take other arguments was called
    anyway: a crash, or garbage model inputs. Without rsz_native_abi_version, or with another number, it
    is refused like any unusable library: one line for `native`, a note and Pillow for `auto`."""
    from rsz_infer.native import ABI_VERSION

    lib = _stale_library(tmp_path, version)
    rebuild = "rebuild it with make -C cpp_plugins"
    if version is None:
        expected = f"{lib}: a stale native library (no ABI version; {rebuild})"
    else:
        expected = f"{lib}: native library ABI version {version}, this rsz needs {ABI_VERSION} ({rebuild})"
    _refused_in_one_line_and_auto_takes_pillow(lib, expected, monkeypatch)


def test_bench_e2e_leaves_out_the_native_row_of_a_stale_library(tmp_path, monkeypatch):
    """rsz-bench e2e (--preprocess auto) fell back to Pillow for its loop, then stopped with the library's
    error when timing the native stage: every build from before the ABI version would stop the benchmark."""
    from rsz_bench.e2e import _native_stage

    monkeypatch.setenv("RSZ_NATIVE_LIB", str(_stale_library(tmp_path, None)))
    assert _native_stage(_tiles([(20, 20)]), SPEC) is None


def test_the_built_library_answers_the_abi_version_native_py_expects(cpu_lib):
    """The header's RSZ_NATIVE_ABI_VERSION, native.ABI_VERSION and what a fresh build returns agree: raising
    one without the other would refuse every library, fresh builds included."""
    import re

    from rsz_infer.native import ABI_VERSION

    header = (PLUGIN_DIR / "include" / "rsz_preprocess.h").read_text()
    assert re.search(r"#define RSZ_NATIVE_ABI_VERSION (\d+)", header).group(1) == str(ABI_VERSION)
    assert NativePreprocessor(SPEC, device="cpu", path=cpu_lib).lib.rsz_native_abi_version() == ABI_VERSION


# A library of this ABI built with the CUDA path on a machine with a GPU, as rsz_infer.native sees one:
# rsz_cuda_available answers 1 (no GPU here; what is tested is which path rsz picks, not the kernel).
_CUDA_BUILD = """
#include <stdint.h>
int rsz_native_abi_version(void) { return %d; }
int rsz_preprocess_cpu(void) { return 1; }
int rsz_preprocess_cuda(void) { return 1; }
int rsz_cuda_available(void) { return 1; }
const char *rsz_last_error(void) { return "stub"; }
"""


def test_a_bicubic_bundle_never_takes_the_cuda_path(tmp_path):
    """The CUDA kernel has Pillow's bilinear filter only: for a bicubic spec (a CLIP bundle) the automatic
    choice takes the CPU path, and asking for the CUDA path is one line saying why it cannot."""
    from rsz_infer.errors import RszError
    from rsz_infer.native import ABI_VERSION

    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler")
    source, lib = tmp_path / "cuda_build.c", tmp_path / "cuda_build.so"
    source.write_text(_CUDA_BUILD % ABI_VERSION)
    subprocess.run([compiler, "-shared", "-fPIC", "-O0", "-o", str(lib), str(source)], check=True)
    assert NativePreprocessor(SPEC, "auto", lib).name == "native:cuda"  # bilinear: as before
    assert NativePreprocessor(SPECS[1], "auto", lib).name == "native:cpu"
    with pytest.raises(RszError) as err:
        NativePreprocessor(SPECS[1], "cuda", lib)
    assert str(err.value) == (
        "the native CUDA preprocess supports bilinear bundles only; this one resizes bicubic "
        "(the CPU path, device 'cpu' or 'auto', has both)"
    )


@pytest.mark.skipif(not _gpu_present(), reason="needs nvcc and an NVIDIA GPU")
def test_cuda_build_preprocesses_a_bicubic_spec_on_the_cpu(tmp_path):
    lib = _build("cuda", tmp_path)
    native = NativePreprocessor(SPECS[1], device="auto", path=lib)
    tiles = _tiles(SQUARE, seed=3)
    assert native.name == "native:cpu"
    np.testing.assert_array_equal(native(tiles), _reference(tiles, SPECS[1]))
