"""Decompression bombs: every decoder path checks the size a header declares against --max-pixels before
decoding, a refused file is an errors.csv row (the good tiles are labeled), both decoders agree, and scene
windows are listed lazily. Bombs stay tiny on disk and are never allocated (memory is measured in a
subprocess)."""

from __future__ import annotations

import csv
import itertools
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from rsz_infer.images import TileOptions, discover_tiles

from .helpers import read_jsonl, save, solid
from .test_label import run_cli


def png_bomb(path, width: int, height: int, rows: int = 4):
    """A PNG whose header declares width x height RGB pixels; only `rows` rows of data follow (a few KB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = zlib.compress(b"".join(b"\x00" + b"\x80" * (width * 3) for _ in range(rows)), 9)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
    )
    return path


# Peak memory of the child itself: VmHWM of /proc/self/status starts anew at exec, while getrusage's
# ru_maxrss keeps the forking parent's size (pytest holds GBs late in the suite, which hid any growth).
PEAK_MB = (
    "def peak_mb():\n    return int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) // 1024\n"
)
MEASURED = (
    "import atexit, sys\n"
    + PEAK_MB
    + "atexit.register(lambda: print('MAXRSS_MB', peak_mb(), file=sys.stderr))\n"
    "from rsz_infer.cli import main\n"
    "main(sys.argv[1:])\n"
)


def _label_measured(args) -> tuple[int, str, int]:
    proc = subprocess.run([sys.executable, "-c", MEASURED, *map(str, args)], capture_output=True, text=True)
    peak = int(proc.stderr.rsplit("MAXRSS_MB", 1)[1].split()[0])
    return proc.returncode, proc.stderr, peak


def _errors(out):
    with open(out.with_name(out.name + ".errors.csv"), newline="") as f:
        return {row["tile"].rsplit("/", 1)[-1]: row["reason"] for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def bomb_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bombs")
    save(folder / "good_red.png", solid("red"))
    save(folder / "good_blue.jpg", solid("blue"), quality=95)
    png_bomb(folder / "bomb_30000.png", 30000, 30000)  # beyond Pillow's own limit: GDAL reads its header
    png_bomb(folder / "bomb_12000.png", 12000, 12000)  # below Pillow's limit, above rsz's default
    return folder


def _limit(declared: str, what: str = "declares") -> str:
    return f"image {what} {declared} pixels, more than --max-pixels 100,000,000 (not decoded)"


@pytest.mark.parametrize("decoder", ["pillow", "nvimgcodec"])
def test_bombs_are_rows_and_never_decoded(decoder, bomb_folder, bundles, class_file, tmp_path):
    assert sum(f.stat().st_size for f in bomb_folder.iterdir()) < 100_000
    out = tmp_path / "labels.jsonl"
    args = [bomb_folder, "--classes", class_file, "--model", bundles["mcfa"], "--out", out, "--quiet"]
    code, err, peak_mb = _label_measured(args + ["--decoder", decoder])
    assert code == 3, err
    rows = read_jsonl(out)
    assert {r["tile"].rsplit("/", 1)[-1]: r["labels"][0] for r in rows} == {
        "good_blue.jpg": "blue",
        "good_red.png": "red",
    }
    assert _errors(out) == {
        "bomb_30000.png": _limit("30000x30000 = 900,000,000"),
        "bomb_12000.png": _limit("12000x12000 = 144,000,000"),
    }
    assert peak_mb < 1000, f"peak RSS {peak_mb} MB: a bomb was decoded"  # a decoded 30000^2 bomb is 2.7 GB


def test_one_limit_for_png_jpeg_and_tiff_on_both_decoders(bundles, class_file, tmp_path, capsys):
    import rasterio

    folder = tmp_path / "tiles"
    save(folder / "good_red.png", solid("red", 40))
    save(folder / "big.png", solid("green", 300))
    save(folder / "big.jpg", solid("green", 300), quality=95)
    # a window of a TIFF decodes whole blocks: 512 x 512 blocks are more than the limit
    profile = {"driver": "GTiff", "width": 600, "height": 600, "count": 3, "dtype": "uint8", "tiled": True}
    with rasterio.open(folder / "blocks.tif", "w", **profile, blockxsize=512, blockysize=512) as dst:
        dst.write(np.ascontiguousarray(solid("blue", 600).transpose(2, 0, 1)))
    outputs = {}
    for decoder in ("pillow", "nvimgcodec"):
        out = tmp_path / f"{decoder}.csv"
        args = [folder, "--classes", class_file, "--model", bundles["mcfa"], "--out", out, "--quiet"]
        code, _, _ = run_cli(args + ["--decoder", decoder, "--max-pixels", 70000], capsys)
        assert code == 3
        errors = _errors(out)
        assert sorted(errors) == ["big.jpg", "big.png", "blocks.tif"]
        assert (
            errors["big.png"]
            == errors["big.jpg"]
            == ("image declares 300x300 = 90,000 pixels, more than --max-pixels 70,000 (not decoded)")
        )
        assert errors["blocks.tif"].startswith("image is stored in blocks of 512x512 = 262,144 pixels")
        outputs[decoder] = (out.read_text().replace(str(tmp_path), ""), errors)
        assert "good_red.png" in outputs[decoder][0]
    assert outputs["pillow"] == outputs["nvimgcodec"]


def test_a_tile_size_beyond_max_pixels_is_one_line(bundles, class_file, tmp_path, capsys):
    save(tmp_path / "t" / "red.png", solid("red"))
    args = [tmp_path / "t", "--classes", class_file, "--model", bundles["mcfa"], "--out", tmp_path / "o.csv"]
    code, _, err = run_cli(args + ["--tile-size", 20000, "--max-pixels", 1000000], capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: --tile-size 20000:")


def _sparse_scene(path, side: int, block: int = 512):
    """A tiled, sparse GeoTIFF declaring side x side pixels: a few MB on disk, one block of data."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = {
        "driver": "GTiff", "width": side, "height": side, "count": 3, "dtype": "uint8",
        "crs": "EPSG:32633", "transform": from_origin(500000, 5000000, 10, 10), "tiled": True,
        "blockxsize": block, "blockysize": block, "sparse_ok": True, "BIGTIFF": "YES", "nodata": 0,
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(
            np.stack([np.full((block, block), v, np.uint8) for v in (220, 30, 30)]),
            window=Window(0, 0, block, block),
        )
    return path


def test_huge_declared_scene_windows_are_listed_lazily(tmp_path):
    scene = _sparse_scene(tmp_path / "huge.tif", 200_000)
    assert scene.stat().st_size < 8_000_000
    script = (
        "import itertools, sys\n"
        "import rasterio\n"
        "from rasterio.warp import transform\n"
        "from rsz_infer.images import TileOptions, discover_tiles\n" + PEAK_MB + "rss = peak_mb\n"
        "with rasterio.open(sys.argv[1]) as ds:\n"  # GDAL and PROJ loaded before the baseline
        "    transform(ds.crs, 'EPSG:4326', [500000.0], [5000000.0])\n"
        "before = rss()\n"
        "first = list(itertools.islice(discover_tiles([sys.argv[1]], TileOptions()), 2000))\n"
        "assert first[0].window == (0, 0, 256, 256) and first[1].window == (256, 0, 256, 256), first[:2]\n"
        "print(rss() - before)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(scene)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    grown_mb = int(proc.stdout.split()[-1])
    # the old list of all 610,000 windows was built before the first one came out: 1.15 GB
    assert grown_mb < 100, proc.stdout


def test_sparse_scene_is_labeled_window_by_window(bundles, class_file, tmp_path, capsys):
    scene = _sparse_scene(tmp_path / "big.tif", 6000)  # beyond --max-pixels 1e6, but read by windows
    out = tmp_path / "labels.jsonl"
    args = [scene, "--classes", class_file, "--model", bundles["mcfa"], "--out", out, "--quiet"]
    code, _, err = run_cli(args + ["--tile-size", 512, "--max-pixels", 1_000_000], capsys)
    assert code == 0, err
    rows = read_jsonl(out)
    assert [r["window"] for r in rows] == [[0, 0, 512, 512]] and rows[0]["labels"][0] == "red"
    assert "nodata" in err  # the other windows hold no data
    tiles = discover_tiles([scene], TileOptions(tile_size=512, max_pixels=1_000_000))
    assert len(list(itertools.islice(tiles, 200))) == 144  # 12 x 12 windows


def single_strip_tiff(path, width: int, height: int, rows: int = 4):
    """A grey TIFF stored as ONE deflate strip declaring width x height; only `rows` rows of data (bytes)."""
    data = zlib.compress(b"\x78" * (width * rows), 9)
    # (tag, type, value): width, height, 8 bits, deflate, min-is-black, strip offset, 1 sample, rows per
    # strip = height (one strip), strip byte count; type 3 is SHORT, 4 is LONG
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 8), (262, 3, 1), (273, 4, 8)]
    tags += [(277, 3, 1), (278, 4, height), (279, 4, len(data))]
    entries = b"".join(
        struct.pack("<HHII", tag, 4, 1, value) if kind == 4 else struct.pack("<HHIHH", tag, 3, 1, value, 0)
        for tag, kind, value in tags
    )
    ifd = struct.pack("<H", len(tags)) + entries + struct.pack("<I", 0)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8 + len(data)) + data + ifd)
    return path


def test_a_huge_single_strip_tiff_is_one_row(bundles, class_file, tmp_path, capsys):
    import rasterio

    folder = tmp_path / "tiles"
    save(folder / "good_red.png", solid("red", 40))
    # 3000 x 3000 in one compressed strip: GDAL shows it as one-row blocks (decoded from the strip's top for
    # any window), so its 144 windows would each fail; the stored strip is what one read decodes
    strip = single_strip_tiff(folder / "strip.tif", 3000, 3000)
    assert strip.stat().st_size < 1000
    with rasterio.open(strip) as ds:
        assert ds.block_shapes[0] == (1, 3000)  # what GDAL reports: the layout rsz must look through
    out = tmp_path / "labels.csv"
    args = [folder, "--classes", class_file, "--model", bundles["mcfa"], "--out", out, "--quiet"]
    code, _, err = run_cli(args + ["--max-pixels", 1_000_000], capsys)
    assert code == 3, err
    assert _errors(out) == {
        "strip.tif": "image is stored in one compressed strip of 3000x3000 = 9,000,000 pixels, more than "
        "--max-pixels 1,000,000 (not decoded)"
    }
    assert "good_red.png" in out.read_text()
