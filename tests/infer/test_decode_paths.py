"""The decoder (Pillow, nvImageCodec) and preprocess (Pillow, native) choices of rsz-infer: every combination
labels a folder of real files exactly as the default Pillow/Pillow path does, bad files included."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rsz_infer.batching import iter_batches
from rsz_infer.bundle import load_manifest
from rsz_infer.cli import main
from rsz_infer.decoders import _nvimgcodec, open_decoder
from rsz_infer.images import TileOptions, discover_tiles
from rsz_infer.index import Index, IndexConfig, build_index
from rsz_infer.native import PLUGIN_DIR, NativePreprocessor

from .helpers import save, solid, write_mixed_tiles

DECODE = ["pillow", "nvimgcodec"]
PREPROCESS = ["pillow", "native"]


@pytest.fixture(scope="module")
def native_lib(tmp_path_factory) -> Path | None:
    """The CPU library built here (not whatever cpp_plugins/build holds), for RSZ_NATIVE_LIB.

    None without g++/make: only the native-preprocessing cases skip then; Pillow vs nvImageCodec runs."""
    if shutil.which("g++") is None or shutil.which("make") is None:
        return None
    build = tmp_path_factory.mktemp("native")
    subprocess.run(["make", "-s", "-C", str(PLUGIN_DIR), "cpu", f"BUILD={build}"], check=True)
    return build / "librsz_preprocess.so"


def _skip_without(decoder: str, preprocess: str, native_lib: Path | None) -> None:
    if decoder == "nvimgcodec" and _nvimgcodec() is None:
        pytest.skip("nvImageCodec not installed (pip install 'rsz[gpu-decode]')")
    if preprocess == "native" and native_lib is None:
        pytest.skip("g++/make not installed: no native preprocessing library to compare")


@pytest.fixture(scope="module")
def mixed_tiles(tmp_path_factory) -> Path:
    """JPEG and PNG tiles of varied sizes and kinds, bad files, and a 16-bit 4-band GeoTIFF scene."""
    return write_mixed_tiles(tmp_path_factory.mktemp("mixed"))


def _label(tiles: Path, bundle: Path, classes: Path, out: Path, capfd, *options) -> tuple[int, str]:
    args = [tiles, "--classes", classes, "--model", bundle, "--out", out, "--tile-size", 100, "--quiet"]
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in [*args, *options]])
    return exit_info.value.code, capfd.readouterr().err


@pytest.mark.parametrize("decoder", DECODE)
@pytest.mark.parametrize("preprocess", PREPROCESS)
def test_every_path_labels_exactly_as_pillow(
    decoder, preprocess, bundles, class_file, mixed_tiles, native_lib, tmp_path, capfd, monkeypatch
):
    _skip_without(decoder, preprocess, native_lib)
    if native_lib is not None:
        monkeypatch.setenv("RSZ_NATIVE_LIB", str(native_lib))
    ref_out, out = tmp_path / "ref" / "labels.csv", tmp_path / "path" / "labels.csv"
    ref_out.parent.mkdir()
    out.parent.mkdir()
    common = (mixed_tiles, bundles["msa"], class_file)
    code, ref_err = _label(
        *common, ref_out, capfd, "--decoder", "pillow", "--preprocess", "pillow", "--device", "cpu"
    )  # --device auto would add its own note line
    assert code == 3 and "decode pillow, preprocess pillow" in ref_err
    code, err = _label(
        *common, out, capfd, "--decoder", decoder, "--preprocess", preprocess, "--device", "cpu"
    )
    assert code == 3
    summary = err.splitlines()[-1]
    name = {"pillow": "pillow", "nvimgcodec": "nvimgcodec:cpu", "native": "native:cpu"}
    assert f"decode {name[decoder]}, preprocess {name[preprocess]}" in summary
    assert "14 tiles labeled, 5 skipped" in summary  # 10 files + 4 scene windows; 5 bad files
    # Same labels, scores and RGB rules, byte for byte; same errors.csv rows
    assert out.read_text() == ref_out.read_text()
    ref_errors = (ref_out.parent / "labels.csv.errors.csv").read_text()
    assert (out.parent / "labels.csv.errors.csv").read_text() == ref_errors
    # Nothing but rsz's own lines on stderr (nvImageCodec's loader and parser messages stay hidden)
    assert [line for line in err.splitlines() if not line.startswith("skipped ")] == [summary]
    assert sorted(err.splitlines()[:-1]) == sorted(ref_err.splitlines()[:-1])
    with open(ref_out, newline="") as f:
        rules = {r["rule"] for r in csv.DictReader(f)}
    assert {"rgb", "grey to rgb", "P to rgb", "rgb; alpha dropped"} < rules and len(rules) == 6


@pytest.mark.parametrize("decoder", DECODE)
@pytest.mark.parametrize("preprocess", PREPROCESS)
def test_every_path_gives_the_same_model_inputs(decoder, preprocess, bundles, mixed_tiles, native_lib):
    """Scores of the test bundle are near 1, so the batches themselves are compared too, bit for bit."""
    _skip_without(decoder, preprocess, native_lib)
    spec, options = load_manifest(bundles["msa"]).preprocess, TileOptions(tile_size=100)
    tiles = list(discover_tiles([mixed_tiles], options))

    def batches(decoder, native) -> list:
        return [
            (b.inputs, [t.id for t in b.tiles], b.rules, [(t.id, str(e)) for t, e in b.skipped])
            for b in iter_batches(tiles, options, spec, 4, 2, decoder, native)
        ]

    ref = batches(None, None)
    native = NativePreprocessor(spec, "cpu", native_lib) if preprocess == "native" else None
    chosen = open_decoder(decoder, "cpu")
    got = batches(chosen, native)
    if decoder == "nvimgcodec":  # what it decodes itself (truncated.jpg fails there and goes to Pillow)
        taken = {Path(t.path).name for t in tiles if chosen._stream(t, options) is not None}
        assert taken == {
            "red_q75.jpg", "blue_444.jpg", "green_progressive.jpg", "grey.jpg", "exif_rotated.jpg",
            "truncated.jpg", "red.png", "grey_small.png", "tiny.png",
        }  # fmt: skip
    assert [b[1:] for b in got] == [b[1:] for b in ref] and len(ref) == 4
    for (inputs, *_), (ref_inputs, *_) in zip(got, ref):
        np.testing.assert_array_equal(inputs, ref_inputs)


def test_explicit_native_without_the_library_is_one_line(bundles, class_file, tmp_path, capfd, monkeypatch):
    save(tmp_path / "tiles" / "red.png", solid("red"))
    missing = tmp_path / "nowhere" / "librsz_preprocess.so"
    monkeypatch.setenv("RSZ_NATIVE_LIB", str(missing))
    out = tmp_path / "labels.csv"
    code, err = _label(tmp_path / "tiles", bundles["msa"], class_file, out, capfd, "--preprocess", "native")
    assert code == 2 and err == f"error: {missing}: native preprocessing not built (no such file)\n"
    # auto falls back to Pillow and says so in the summary line
    code, err = _label(tmp_path / "tiles", bundles["msa"], class_file, out, capfd)
    assert code == 0 and "preprocess pillow" in err.splitlines()[-1]


def test_bad_choices_are_usage_errors(bundles, class_file, tmp_path, capfd):
    save(tmp_path / "red.png", solid("red"))
    for option in ("--decoder", "--preprocess"):
        code, err = _label(tmp_path, bundles["msa"], class_file, tmp_path / "l.csv", capfd, option, "opencv")
        assert code == 2 and f"Invalid value for '{option}'" in err


NO_NVIMGCODEC = """
import sys
sys.modules['nvidia.nvimgcodec'] = None  # `from nvidia import nvimgcodec` now raises ImportError
import rsz_infer.cli
for decoder in ('nvimgcodec', 'auto'):
    try:
        rsz_infer.cli.main(sys.argv[1:] + ['--decoder', decoder])
    except SystemExit as exit:
        print('exit', exit.code, file=sys.stderr)
"""


def test_without_nvimgcodec_installed(bundles, class_file, tmp_path):
    save(tmp_path / "tiles" / "red.jpg", solid("red"))
    args = [
        tmp_path / "tiles",
        "--classes",
        class_file,
        "--model",
        bundles["msa"],
        "--out",
        tmp_path / "l.csv",
    ]
    proc = subprocess.run(
        [sys.executable, "-c", NO_NVIMGCODEC, *map(str, [*args, "--quiet", "--device", "cpu"])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = proc.stderr.splitlines()
    assert (
        lines[0]
        == "error: --decoder nvimgcodec: nvImageCodec is not installed (pip install 'rsz[gpu-decode]')"
    )
    assert lines[1] == "exit 2" and "1 tiles labeled" in lines[2] and "decode pillow" in lines[2]
    assert lines[3] == "exit 0" and len(lines) == 4


def test_index_embeddings_are_the_same_on_every_path(bundles, mixed_tiles, native_lib, tmp_path, monkeypatch):
    if native_lib is not None:
        monkeypatch.setenv("RSZ_NATIVE_LIB", str(native_lib))
    indexes = {}
    for decoder in DECODE:
        for preprocess in PREPROCESS if native_lib is not None else ["pillow"]:
            out = tmp_path / f"{decoder}_{preprocess}"
            paths = {"decoder": decoder, "preprocess": preprocess}
            counts = build_index(
                IndexConfig([str(mixed_tiles)], bundles["msa"], out, progress=False, **paths)
            )
            indexes[decoder, preprocess] = (counts, Index.load(out))
    (ref_counts, ref), *others = indexes.values()
    assert ref_counts.added > 5 and ref_counts.skipped >= 3  # good tiles in, bad ones out
    for counts, index in others:
        assert (counts.added, counts.skipped) == (ref_counts.added, ref_counts.skipped)
        assert [t["tile"] for t in index.tiles] == [t["tile"] for t in ref.tiles]
        assert np.array_equal(index.embeddings, ref.embeddings) and np.array_equal(index.scales, ref.scales)


def _textured(size: int) -> np.ndarray:
    """A smooth pattern with fine detail: what a DCT-scaled decode and a bilinear resize treat differently."""
    y, x = np.mgrid[0:size, 0:size] / size
    noise = np.random.default_rng(0).integers(0, 40, (size, size, 3))
    base = np.stack([np.sin(6 * x) * 80 + 120, np.cos(5 * y) * 70 + 110, (x + y) * 60 + 60], axis=2)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def test_pillow_draft_reads_large_jpegs_at_a_reduced_scale_close_to_a_full_decode(tmp_path):
    from PIL import Image

    from rsz_infer.preprocess import PreprocessSpec, to_model_input

    pixels = _textured(256)
    Image.fromarray(pixels).save(tmp_path / "scene.jpg", quality=90)
    Image.fromarray(pixels).save(tmp_path / "scene.png")
    tiles = {Path(t.path).suffix: t for t in discover_tiles([tmp_path], TileOptions())}
    full = open_decoder("pillow", "cpu")
    draft = open_decoder("pillow-draft", "cpu", model_size=64)
    assert draft.name == "pillow-draft"
    (rgb, rule), (full_rgb, full_rule) = (
        draft.decode([tiles[".jpg"]], TileOptions())[0],
        full.decode([tiles[".jpg"]], TileOptions())[0],
    )
    assert rgb.shape == (64, 64, 3) and rule == "rgb; JPEG decoded at 1/4 scale"
    assert full_rgb.shape == (256, 256, 3) and full_rule == "rgb"
    spec = PreprocessSpec(size=64)
    levels = (
        np.abs(to_model_input(rgb, spec) - to_model_input(full_rgb, spec))
        * 255
        * np.reshape(spec.std, (3, 1, 1))
    )
    assert 0 < levels.mean() < 2  # close to the full decode, and not the full decode itself
    # never below the model size: for a 200 px model a 256 px JPEG has no smaller scale to use
    assert open_decoder("pillow-draft", "cpu", model_size=200).decode([tiles[".jpg"]], TileOptions())[0][
        0
    ].shape == (
        256,
        256,
        3,
    )
    # other formats are decoded whole, exactly as Pillow does
    png, png_rule = draft.decode([tiles[".png"]], TileOptions())[0]
    np.testing.assert_array_equal(png, full.decode([tiles[".png"]], TileOptions())[0][0])
    assert png_rule == "rgb"


def test_pillow_draft_through_rsz_infer(bundles, class_file, mixed_tiles, tmp_path, capfd):
    """Labels every tile Pillow labels (bad files skipped alike) and says which decoder ran."""
    code, _ = _label(
        mixed_tiles, bundles["msa"], class_file, tmp_path / "full.csv", capfd, "--decoder", "pillow"
    )
    code_draft, err = _label(
        mixed_tiles, bundles["msa"], class_file, tmp_path / "draft.csv", capfd, "--decoder", "pillow-draft"
    )
    assert code_draft == code
    ids = [[r["tile"] for r in csv.DictReader(open(tmp_path / f"{n}.csv"))] for n in ("full", "draft")]
    assert ids[0] == ids[1] and ids[0]


@pytest.mark.parametrize("decoder", DECODE)
def test_a_tile_transparent_everywhere_is_nodata_on_every_decoder(decoder, tmp_path):
    """Web-map tiles beyond the data are PNGs transparent everywhere: nodata, as GDAL's mask makes them (in a
    file larger than a tile, or read by GDAL whole); a partly transparent tile is labeled."""
    from PIL import Image

    from rsz_infer.images import NodataTile, Tile, TileError, decode_tile

    _skip_without(decoder, "pillow", None)
    blue, clear = solid("blue", 40), np.zeros((40, 40), np.uint8)
    save(tmp_path / "rgba.png", np.dstack([blue, clear]))
    save(tmp_path / "la.png", np.dstack([blue[:, :, 2], clear]))
    palette = Image.fromarray(clear, "P")
    palette.putpalette([30, 40, 210] * 256)
    palette.save(tmp_path / "palette.png", transparency=0)
    flat = np.broadcast_to(np.uint8([1, 2, 3]), (40, 40, 3)).copy()
    save(tmp_path / "rgb_trns.png", flat, transparency=(1, 2, 3))  # tRNS colours: nvImageCodec would decode
    save(tmp_path / "grey_trns.png", flat[:, :, 0], transparency=1)
    partly = np.dstack([blue, clear])
    partly[:20, :, 3] = 255
    save(tmp_path / "partly.png", partly)
    options = TileOptions()
    tiles = list(discover_tiles([tmp_path], options))
    assert len(tiles) == 6 and all(t.reader == "pillow" for t in tiles)
    for tile, result in zip(tiles, open_decoder(decoder, "cpu").decode(tiles, options)):
        name = Path(tile.path).name
        try:
            decode_tile(Tile(id=tile.id, path=tile.path, reader="gdal"), options)
            gdal: object = "labeled"
        except TileError as err:
            gdal = err
        if name == "partly.png":
            assert isinstance(result, tuple) and result[1] == "rgb; alpha dropped" and gdal == "labeled"
        else:
            assert isinstance(result, NodataTile) and str(result) == "all nodata", name
            assert isinstance(gdal, NodataTile) and str(gdal) == "all nodata", name
