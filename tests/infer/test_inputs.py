"""Every input kind is decoded and labeled: JPEG, PNG, greyscale, RGBA, 16-bit, multi-band GeoTIFF,
GeoTIFF scenes cut into windows (nodata windows skipped), footprints and class maps."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from rsz_infer.images import TileOptions, _window_offsets, discover_tiles
from rsz_infer.pipeline import LabelConfig, label_tiles
from rsz_infer.report import footprint_line, read_label_rows

from .helpers import COLOURS, bands_first, read_jsonl, save, solid, write_geotiff, write_multi_page_tiff


def _label(bundle, class_file, inputs, out: Path, **kw):
    cfg = LabelConfig(
        inputs=[str(p) for p in inputs], classes=class_file, out=out, model=bundle, progress=False, **kw
    )
    return label_tiles(cfg)


def _by_name(rows: list[dict]) -> dict[str, dict]:
    return {Path(r["tile"]).name: r for r in rows}


def test_files_of_every_kind_are_labeled(bundles, class_file, tmp_path):
    folder = tmp_path / "tiles"
    save(folder / "red.jpg", solid("red"), quality=90)
    save(folder / "sub" / "green.png", solid("green"))
    rgba = np.dstack([solid("blue"), np.full((40, 40), 128, np.uint8)])
    save(folder / "blue_rgba.png", rgba)
    save(folder / "grey.png", solid((90, 90, 90))[:, :, 0])
    grey16 = (np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 20).astype(np.uint16)
    save(folder / "grey16.png", grey16)
    # 16-bit RGB reflectances where red dominates: one stretch for all bands keeps it red
    red16 = (bands_first(solid("red")).astype(np.uint16) * 40 + 1000).astype(np.uint16)
    write_geotiff(folder / "red16.tif", red16)
    (folder / "notes.txt").write_text("not an image")

    out = tmp_path / "labels.jsonl"
    summary = _label(bundles["msa"], class_file, [folder], out)
    assert (summary.labeled, summary.skipped, summary.exit_code) == (6, 0, 0)
    rows = _by_name(read_jsonl(out))
    assert set(rows) == {"red.jpg", "green.png", "blue_rgba.png", "grey.png", "grey16.png", "red16.tif"}
    assert rows["red.jpg"]["labels"][0] == "red" and rows["red.jpg"]["rule"] == "rgb"
    assert rows["green.png"]["labels"][0] == "green"
    assert rows["blue_rgba.png"]["labels"][0] == "blue" and "alpha dropped" in rows["blue_rgba.png"]["rule"]
    assert rows["grey.png"]["rule"] == "grey to rgb"
    assert (
        rows["grey16.png"]["rule"].startswith("grey to rgb; I;16")
        and "stretch p2-98" in rows["grey16.png"]["rule"]
    )
    assert rows["red16.tif"]["labels"][0] == "red" and "uint16 stretch p2-98" in rows["red16.tif"]["rule"]
    # a small GeoTIFF is one tile, with its footprint in EPSG:4326 (degrees, near 15 E 45.1 N)
    lon, lat = np.array(rows["red16.tif"]["footprint"]["coordinates"][0]).T
    assert np.allclose(lon, 15.0, atol=0.01) and np.allclose(lat, 45.14, atol=0.02)
    assert "footprint" not in rows["red.jpg"]
    for row in rows.values():
        assert len(row["labels"]) == 3 and np.isclose(sum(row["scores"]), 1.0, atol=1e-5)


def test_16_bit_colour_pngs_are_stretched_as_16_bit_tiffs(bundles, class_file, tmp_path):
    # 12-bit data in 16-bit RGB / RGBA PNGs (as GDAL or QGIS export them): Pillow would cut the samples to
    # 8 bits, 0-15 here, a black tile
    green12 = bands_first(solid("green")).astype(np.uint16) * 16
    folder = tmp_path / "tiles"
    folder.mkdir()
    opaque = np.full((1, 40, 40), 65535, np.uint16)
    for name, data in (("rgb16.png", green12), ("rgba16.png", np.concatenate([green12, opaque]))):
        with rasterio.open(
            folder / name, "w", driver="PNG", width=40, height=40, count=len(data), dtype="uint16"
        ) as f:
            f.write(data)
    write_geotiff(folder / "rgb16.tif", green12)
    out = tmp_path / "labels.jsonl"
    assert _label(bundles["msa"], class_file, [folder], out).exit_code == 0
    rows = _by_name(read_jsonl(out))
    assert rows["rgb16.png"]["rule"] == rows["rgb16.tif"]["rule"] == "rgb; uint16 stretch p2-98 per image"
    assert rows["rgba16.png"]["rule"] == "bands 1,2,3 of 4; uint16 stretch p2-98 per image"
    for row in rows.values():
        assert row["labels"][0] == "green" and row["scores"] == rows["rgb16.tif"]["scores"]


def test_bands_pick_rgb_from_multispectral(bands_case, bundles, class_file, tmp_path):
    out = tmp_path / "bands.jsonl"
    _label(bundles["msa"], class_file, [bands_case], out, tiles=TileOptions(bands=(3, 2, 1)))
    (row,) = read_jsonl(out)
    assert row["labels"][0] == "red" and row["rule"].startswith("bands 3,2,1 of 5")
    out = tmp_path / "default.jsonl"
    _label(bundles["msa"], class_file, [bands_case], out)
    (row,) = read_jsonl(out)  # bands 1,2,3 by default: band 1 (blue) becomes R ... so the tile reads blue
    assert row["labels"][0] == "blue" and row["rule"].startswith("bands 1,2,3 of 5")


def test_declared_red_green_blue_bands_are_read_as_rgb(bands_case, bundles, class_file, tmp_path):
    # the B, G, R, NIR, SWIR file saying which band is which colour, read whole and as a scene
    from rasterio.enums import ColorInterp

    with rasterio.open(bands_case, "r+") as f:
        f.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red] + [ColorInterp.undefined] * 2
    for tile_size in (256, 16):
        out = tmp_path / f"declared{tile_size}.jsonl"
        _label(bundles["msa"], class_file, [bands_case], out, tiles=TileOptions(tile_size=tile_size))
        rows = read_jsonl(out)
        assert all(r["labels"][0] == "red" for r in rows) and len(rows) == (1 if tile_size == 256 else 4)
        assert all(r["rule"].startswith("bands 3,2,1 of 5 (its red, green, blue)") for r in rows)
    out = tmp_path / "asked.jsonl"  # --bands still decides
    _label(bundles["msa"], class_file, [bands_case], out, tiles=TileOptions(bands=(1, 2, 3)))
    assert read_jsonl(out)[0]["labels"][0] == "blue"


@pytest.fixture
def bands_case(tmp_path) -> Path:
    # 5 bands in satellite order B, G, R, NIR, SWIR; only band 3 (red) is bright
    bands = np.full((5, 24, 24), 300, np.uint16)
    bands[2] = 3000
    bands += np.random.default_rng(0).integers(0, 50, bands.shape).astype(np.uint16)
    return write_geotiff(tmp_path / "multi.tif", bands)


def test_scene_is_cut_into_windows_nodata_skipped(bundles, class_file, tmp_path):
    # 96 x 64 px scene, 32 px tiles: columns red | green | nodata (0); 16-bit, stretched per scene
    rgb = np.zeros((64, 96, 3), np.uint8)
    rgb[:, :32] = solid("red", 64)[:, :32]
    rgb[:, 32:64] = solid("green", 64)[:, :32]
    data = bands_first(rgb).astype(np.uint16) * 50
    scene = write_geotiff(tmp_path / "scene.tif", data, nodata=0)
    out = tmp_path / "scene.geojson"
    class_map = tmp_path / "classes.tif"
    summary = _label(
        bundles["msa"],
        class_file,
        [scene],
        out,
        tiles=TileOptions(tile_size=32),
        class_map=class_map,
        batch=3,
    )
    assert (summary.labeled, summary.nodata, summary.skipped, summary.exit_code) == (4, 2, 0, 0)
    collection = json.loads(out.read_text())
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 4
    for feature in collection["features"]:
        props = feature["properties"]
        col, row = map(int, props["window"].split(",")[:2])
        assert props["label_1"] == ("red" if col == 0 else "green")
        assert props["tile"] == f"{scene}@{col},{row},32,32"
        assert "per scene" in props["rule"]
        lon, lat = np.array(feature["geometry"]["coordinates"][0]).T
        # 320 m windows at 45 N: ~0.004 degrees of longitude, ~0.003 of latitude; west edge at 15 E + col*10 m
        assert lon.min() == pytest.approx(15.0 + col * 10 / 78_700, abs=2e-4)
        assert lon.max() - lon.min() == pytest.approx(320 / 78_700, rel=0.05)
        assert lat.max() - lat.min() == pytest.approx(320 / 111_140, rel=0.05)
    rows = read_label_rows(out)  # what the gallery reads back from a GeoJSON labels file
    assert sorted(r["window"][0] for r in rows) == [0, 0, 32, 32]
    lat, lon = map(float, footprint_line(rows[0])[0].split(", "))
    assert lat == pytest.approx(45.14, abs=0.02) and lon == pytest.approx(15.0, abs=0.01)
    with rasterio.open(class_map) as cm, rasterio.open(scene) as src:
        assert cm.crs == src.crs and cm.transform == src.transform and cm.shape == src.shape
        values = cm.read(1)
        assert json.loads(cm.tags()["classes"]) == list(COLOURS)
    assert (values[:, :32] == 0).all() and (values[:, 32:64] == 1).all() and (values[:, 64:] == 255).all()


def test_window_offsets_cover_the_scene_edge():
    assert _window_offsets(100, 32, 32) == [0, 32, 64, 68]
    assert _window_offsets(96, 32, 24) == [0, 24, 48, 64]
    assert _window_offsets(20, 32, 32) == [0]


def test_large_scene_stretch_samples_windows(tmp_path, monkeypatch):
    """Without overviews a big scene's percentiles come from a grid of windows, close to the full ones."""
    from rsz_infer import images

    rng = np.random.default_rng(1)
    data = rng.gamma(2.0, 500.0, (3, 300, 300)).astype(np.uint16)
    scene = write_geotiff(tmp_path / "big.tif", data)
    monkeypatch.setattr(images, "DECIMATED_READ_MAX_PIXELS", 100 * 100)  # as if it were huge
    monkeypatch.setattr(images, "SAMPLE_GRID", 4)
    monkeypatch.setattr(images, "SAMPLE_WINDOW_PX", 20)
    with rasterio.open(scene) as ds:
        sample = images._stretch_sample(ds, (1, 2, 3))
    assert sample.size == 4 * 4 * 20 * 20 * 3
    lo, hi = images._percentiles(sample)
    full_lo, full_hi = np.percentile(data, [2, 98])
    assert lo == pytest.approx(full_lo, rel=0.15) and hi == pytest.approx(full_hi, rel=0.1)


def test_a_file_named_twice_is_one_tile(tmp_path):
    tile = save(tmp_path / "a" / "red.png", solid("red"))
    found = list(
        discover_tiles([tmp_path / "a", tile, tmp_path / "a" / ".." / "a" / "red.png"], TileOptions())
    )
    assert [t.id for t in found] == [str(tile)]


def test_a_file_gone_since_the_listing_is_a_skipped_tile_not_a_stac_asset(tmp_path):
    # a file of a folder, and a file named itself, removed while the batch runs: each its own skipped tile
    folder = tmp_path / "tiles"
    for colour in ("blue", "green", "red"):
        save(folder / f"{colour}.png", solid(colour))
    named = save(tmp_path / "named.png", solid("red"))
    found = discover_tiles([folder, named], TileOptions())
    first = next(found)
    (folder / "green.png").unlink()
    named.unlink()
    rest = list(found)
    gone = "no such file (removed after the inputs were listed)"
    assert first.problem is None and [(t.id, t.problem) for t in rest] == [
        (str(folder / "green.png"), gone),
        (str(folder / "red.png"), None),
        (str(named), gone),
    ]
    # a STAC asset that names no file says so
    from .test_gis import _stac_item

    (tmp_path / "item.json").write_text(json.dumps(_stac_item("a", {"visual": "missing.tif"})))
    (tile,) = discover_tiles([tmp_path / "item.json"], TileOptions())
    assert (tile.id, tile.problem) == (str(tmp_path / "missing.tif"), "no such file (named by a STAC asset)")


def test_linked_folders_are_searched_and_a_link_loop_ends(tmp_path):
    # a data set as folders of links (a cluster's scratch space): every tile is found, each once
    data = tmp_path / "data"
    for colour in ("red", "green"):
        save(data / colour / f"{colour}.png", solid(colour))
    tiles = tmp_path / "tiles"
    (tiles / "mine").mkdir(parents=True)
    save(tiles / "mine" / "blue.png", solid("blue"))
    (tiles / "red").symlink_to(data / "red")
    (tiles / "green").symlink_to(data / "green")
    (tiles / "mine" / "up").symlink_to(tiles)  # back to the top: walked once
    (tiles / "broken.png").symlink_to(tmp_path / "missing.png")
    found = [Path(t.id).relative_to(tiles) for t in discover_tiles([tiles], TileOptions())]
    assert found == [Path("green/green.png"), Path("mine/blue.png"), Path("red/red.png")]


def test_a_raster_under_a_jpeg_or_png_suffix_is_read_as_what_it_is(bundles, class_file, tmp_path):
    # a 16-bit TIFF saved as .jpg and a 4-band one as .png (no CRS): GDAL reads them as the TIFFs they are
    red16 = (bands_first(solid("red")).astype(np.uint16) * 40 + 1000).astype(np.uint16)
    folder = tmp_path / "tiles"
    folder.mkdir()
    for name, data in (("red16.jpg", red16), ("rgbn.png", np.concatenate([red16, red16[:1]]))):
        profile = {"driver": "GTiff", "width": 40, "height": 40, "count": len(data), "dtype": "uint16"}
        with rasterio.open(folder / name, "w", **profile) as f:
            f.write(data)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)  # still listed as skipped
    out = tmp_path / "labels.jsonl"
    cli = [sys.executable, "-m", "rsz_infer.cli", folder, "--classes", class_file, "--model", bundles["msa"]]
    page = tmp_path / "gallery.html"
    proc = subprocess.run(
        [str(a) for a in [*cli, "--out", out, "--html", page, "--quiet"]], capture_output=True, text=True
    )
    assert proc.returncode == 3, proc.stderr
    assert "Warning" not in proc.stderr  # rasterio's multi-line warning about the missing CRS
    assert f"skipped {folder / 'corrupt.png'}: cannot decode image" in proc.stderr
    rows = _by_name(read_jsonl(out))
    assert rows["red16.jpg"]["labels"][0] == "red"
    assert rows["red16.jpg"]["rule"] == "rgb; uint16 stretch p2-98 per image"
    assert rows["rgbn.png"]["rule"] == "bands 1,2,3 of 4; uint16 stretch p2-98 per image"
    assert page.read_text().count('src="data:image/jpeg;base64,') == 2  # the gallery decodes them alike


def test_rgba_scene_with_a_nodata_value_labels_without_a_rasterio_warning(bundles, class_file, tmp_path):
    # RGBA GeoTIFF with a nodata value too (gdalwarp -dstalpha -dstnodata 0): GDAL's mask follows the nodata
    # value, and rasterio said so in a warning per decoding thread and class map, file path and line included
    rgba = np.dstack([solid("red", 64), np.full((64, 64), 255, np.uint8)])
    rgba[:, 32:] = 0
    scene = write_geotiff(tmp_path / "rgba.tif", bands_first(rgba), nodata=0)
    with rasterio.open(scene) as ds:
        assert ds.colorinterp[3] == rasterio.enums.ColorInterp.alpha
    cli = [sys.executable, "-m", "rsz_infer.cli", scene, "--classes", class_file, "--model", bundles["msa"]]
    out, class_map = tmp_path / "labels.csv", tmp_path / "map.tif"
    args = [*cli, "--out", out, "--tile-size", 32, "--class-map", class_map, "--quiet"]
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr
    assert "2 tiles labeled" in proc.stderr and "2 nodata" in proc.stderr


def test_scene_windows_decoded_in_a_process_that_did_not_discover_them_print_no_warning(tmp_path):
    # a --ray decode task: Tiles pickled by the driver, decoded in a fresh worker process
    rgba = np.dstack([solid("red", 64), np.full((64, 64), 255, np.uint8)])
    rgba[:, 32:] = 0
    scene = write_geotiff(tmp_path / "rgba.tif", bands_first(rgba), nodata=0)
    options = TileOptions(tile_size=32)
    tiles = tmp_path / "tiles.pkl"
    tiles.write_bytes(pickle.dumps((list(discover_tiles([str(scene)], options)), options)))
    worker = (
        "import pickle, sys\n"
        "from rsz_infer.images import NodataTile, decode_tile\n"
        "tiles, options = pickle.loads(open(sys.argv[1], 'rb').read())\n"
        "for tile in tiles:\n"
        "    try:\n"
        "        decode_tile(tile, options)\n"
        "        print('decoded', tile.id)\n"
        "    except NodataTile:\n"
        "        print('nodata', tile.id)\n"
    )
    proc = subprocess.run([sys.executable, "-c", worker, str(tiles)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    outcomes = [line.split()[0] for line in proc.stdout.splitlines()]
    assert sorted(outcomes) == ["decoded", "decoded", "nodata", "nodata"], proc.stdout
    assert "Warning" not in proc.stderr


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("driver", ["PNG", "GTiff"])
def test_grey_samples_of_fewer_than_8_bits_are_read_at_full_range(bits, driver, tmp_path):
    """GDAL reads 1-, 2- and 4-bit grey samples as stored (0-1, 0-3, 0-15), Pillow scales them to 0-255: a
    bilevel PNG larger than the tile (GDAL's windows) or read by GDAL whole is the picture Pillow shows."""
    from PIL import Image

    from rsz_infer.images import Tile, decode_tile

    stored = (solid((128, 128, 128), 40, noise=127)[:, :, :1] >> (8 - bits)).transpose(2, 0, 1)
    path = tmp_path / f"grey{bits}.{'png' if driver == 'PNG' else 'tif'}"
    profile = {"driver": driver, "width": 40, "height": 40, "count": 1, "dtype": "uint8", "nbits": bits}
    with rasterio.open(path, "w", **profile) as f:
        f.write(stored)
    expected = np.round(stored[0] * (255 / (2**bits - 1))).astype(np.uint8)
    if driver == "PNG":  # Pillow's own unpacking of the file, the reference
        np.testing.assert_array_equal(np.asarray(Image.open(path).convert("L")), expected)
        pillow, rule = decode_tile(Tile(id=str(path), path=str(path)), TileOptions())
        np.testing.assert_array_equal(pillow[:, :, 0], expected)
    whole, rule = decode_tile(Tile(id=str(path), path=str(path), reader="gdal"), TileOptions())
    np.testing.assert_array_equal(whole, np.repeat(expected[:, :, None], 3, axis=2))
    assert rule == "grey to rgb" or (driver, bits) == ("GTiff", 1)  # GDAL gives 1-bit TIFFs a colour table
    options = TileOptions(tile_size=16)
    windows = list(discover_tiles([path], options))
    assert len(windows) == 9 and all(w.window for w in windows)
    for window in windows:
        col, row, width, height = window.window
        rgb, _ = decode_tile(window, options)
        np.testing.assert_array_equal(rgb[:, :, 0], expected[row : row + height, col : col + width])


def test_a_strip_thinner_than_the_minimum_is_one_skipped_row(bundles, class_file, tmp_path):
    """A 100000 x 1 px image is larger than the tile size, but every window of it would be 256 x 1 px: one
    row saying so, not 391 rows (and a 100000 x 8 px strip is still cut into windows)."""
    folder = tmp_path / "tiles"
    save(folder / "good_red.png", solid("red"))
    for name, (width, height) in {"strip.png": (100000, 1), "column.tif": (2, 3000)}.items():
        profile = {"driver": "GTiff" if name.endswith(".tif") else "PNG", "width": width, "height": height}
        with rasterio.open(folder / name, "w", count=1, dtype="uint8", **profile) as f:
            f.write(np.full((1, height, width), 200, np.uint8))
    assert [t.problem for t in discover_tiles([folder / "strip.png"], TileOptions())] == [
        "image is 100000x1 px, smaller than the 8 px minimum"
    ]
    out = tmp_path / "labels.jsonl"
    summary = _label(bundles["msa"], class_file, [folder], out)
    assert (summary.labeled, summary.skipped) == (1, 2)
    errors = (tmp_path / "labels.jsonl.errors.csv").read_text().splitlines()
    assert errors[1:] == [
        f'{folder / "column.tif"},"image is 2x3000 px, smaller than the 8 px minimum"',
        f'{folder / "strip.png"},"image is 100000x1 px, smaller than the 8 px minimum"',
    ]
    save(folder / "strip8.png", solid("red", 300)[:8])
    assert len(list(discover_tiles([folder / "strip8.png"], TileOptions()))) == 2
    # with --gsd the size is the one the model would see: 30 px of 10 m at 40 m are 7 px
    profile = {"driver": "GTiff", "width": 4000, "height": 30, "crs": "EPSG:32633"}
    transform = rasterio.transform.from_origin(500000, 5000000, 10, 10)
    with rasterio.open(
        folder / "geo_strip.tif", "w", count=1, dtype="uint8", transform=transform, **profile
    ) as f:
        f.write(np.full((1, 30, 4000), 200, np.uint8))
    assert [t.problem for t in discover_tiles([folder / "geo_strip.tif"], TileOptions(gsd=40.0))] == [
        "image is 1000x7 px, smaller than the 8 px minimum"
    ]


def test_every_page_of_a_multi_page_tiff_is_labeled(bundles, class_file, tmp_path):
    """GDAL opens the first page of a multi-page TIFF only: the others (GTIFF_DIR:N:file) are tiles too, a
    page larger than the tile is cut into windows, and internal overviews are no pages."""
    from PIL import Image

    folder = tmp_path / "tiles"
    folder.mkdir()
    red, green, blue = (Image.fromarray(solid(c)) for c in COLOURS)
    red.save(folder / "stack.tif", save_all=True, append_images=[green, Image.fromarray(solid("blue", 300))])
    write_geotiff(folder / "overviews.tif", bands_first(solid("green", 300)))
    with rasterio.open(folder / "overviews.tif", "r+") as ds:
        ds.build_overviews([2, 4])
    out = tmp_path / "labels.jsonl"
    summary = _label(bundles["msa"], class_file, [folder], out, tiles=TileOptions(tile_size=200))
    assert (summary.labeled, summary.skipped) == (2 + 4 + 4, 0)
    rows = {r["tile"]: r for r in read_jsonl(out)}
    stack = str(folder / "stack.tif")
    assert rows[stack]["labels"][0] == "red"
    assert rows[f"GTIFF_DIR:2:{stack}"]["labels"][0] == "green"
    third = [r for tile, r in rows.items() if tile.startswith(f"GTIFF_DIR:3:{stack}@")]
    assert len(third) == 4 and all(
        r["labels"][0] == "blue" and r["path"] == f"GTIFF_DIR:3:{stack}" for r in third
    )
    assert sum(tile.startswith(str(folder / "overviews.tif@")) for tile in rows) == 4
    from rsz_infer.classmap import map_targets

    maps = map_targets(Path("maps/m.tif"), [stack, f"GTIFF_DIR:3:{stack}", "GTIFF_DIR:12:b/stack.tif"])
    assert [p.name for p in maps.values()] == ["m.stack.tif", "m.stack.page3.tif", "m.stack.page12.tif"]


def test_a_page_named_beside_its_file_is_labeled_once(bundles, class_file, tmp_path):
    """`scan.tif GTIFF_DIR:2:scan.tif` (or the page first, or its folder) lists the page once: one row, one
    count, as a file named twice is one tile."""
    stack = write_multi_page_tiff(tmp_path / "tiles" / "stack.tif", [solid("red"), solid("green")])
    page = f"GTIFF_DIR:2:{stack}"
    same_page = f"GTIFF_DIR:02:{tmp_path}/./tiles/stack.tif"
    first_page = f"GTIFF_DIR:1:{stack}"  # page 1 is the file itself
    cases = [
        ([stack, page], 2),
        ([page, tmp_path / "tiles"], 2),
        ([page, same_page], 1),
        ([first_page, stack], 2),
    ]
    for n, (inputs, pages) in enumerate(cases):
        out = tmp_path / f"labels{n}.jsonl"
        summary = _label(bundles["msa"], class_file, inputs, out)
        rows = [r["tile"] for r in read_jsonl(out)]
        assert summary.labeled == len(rows) == len(set(rows)) == pages, inputs


def test_a_page_input_is_recorded_with_its_file_absolute(tmp_path, monkeypatch):
    """The run log records local inputs absolute, so a --resume from another folder reads the same files:
    a TIFF page's file too (GTIFF_DIR:2:scan.tif)."""
    from rsz_infer.pipeline import input_names

    monkeypatch.chdir(tmp_path)
    assert input_names(["GTIFF_DIR:2:tiles/scan.tif", "tiles", "/vsimem/x.tif"]) == [
        f"GTIFF_DIR:2:{tmp_path}/tiles/scan.tif",
        f"{tmp_path}/tiles",
        "/vsimem/x.tif",
    ]


# A MapInfo .tab georeferencing a TIFF (its first page: 10 m pixels in UTM 33N); GDAL hands it to every page
MAPINFO_TAB = """!table
!version 300
!charset WindowsLatin1

Definition Table
  File "{name}"
  Type "RASTER"
  (500000,5000000) (0,0) Label "Pt 1",
  (500400,5000000) (40,0) Label "Pt 2",
  (500000,4999600) (0,40) Label "Pt 3"
  CoordSys Earth Projection 8, 104, "m", 15, 0, 0.9996, 500000, 0
  Units "m"
"""


def test_a_page_has_its_own_georeferencing_or_none(bundles, class_file, tmp_path):
    """A sidecar (.tab, world file) describes the file's first page: a further page has the footprint of its
    own GeoTIFF tags, or none, never the first page's (the third page here is 300 px, another grid)."""
    folder = tmp_path / "tiles"
    pages = [solid("red"), solid("green"), solid("blue", 300)]
    for name, pixel_sizes in (("own.tif", [10, 20, 30]), ("plain.tif", None)):
        write_multi_page_tiff(folder / name, pages, pixel_sizes)
        (folder / name).with_suffix(".tab").write_text(MAPINFO_TAB.format(name=name))
    out = tmp_path / "labels.jsonl"
    summary = _label(bundles["msa"], class_file, [folder], out, tiles=TileOptions(tile_size=200))
    assert summary.labeled == 2 * (2 + 4)
    rows = {r["tile"]: r for r in read_jsonl(out)}
    west = {tile: r["footprint"]["coordinates"][0][0][0] for tile, r in rows.items() if r.get("footprint")}
    own, plain = str(folder / "own.tif"), str(folder / "plain.tif")
    assert set(west) == {
        own,
        f"GTIFF_DIR:2:{own}",
        *(t for t in rows if t.startswith(f"GTIFF_DIR:3:{own}@")),
        plain,
    }
    assert west[own] == pytest.approx(15.0) and west[plain] == pytest.approx(15.0)  # first pages: the .tab's
    assert west[f"GTIFF_DIR:2:{own}"] == pytest.approx(15.127, abs=1e-3)  # its own tags: 10 km east
    assert west[f"GTIFF_DIR:3:{own}@0,0,200,200"] == pytest.approx(15.254, abs=1e-3)
    maps = tmp_path / "maps" / "m.tif"
    _label(
        bundles["msa"],
        class_file,
        [folder / "plain.tif"],
        out,
        tiles=TileOptions(tile_size=200),
        class_map=maps,
    )
    with rasterio.open(maps) as ds:  # the one scene, page 3, takes the --class-map name
        assert ds.crs is None and ds.transform.is_identity
