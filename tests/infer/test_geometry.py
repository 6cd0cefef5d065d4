"""Exact geometry of GeoTIFF inputs: the windows --overlap gives, footprints to 1e-7 degrees (computed here
independently: rasterio's transform of the pixel corners, then rasterio.warp.transform to EPSG:4326), and a
16-bit stretch taken from the whole scene, not from one corner of it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from rsz_infer.images import TileOptions, decode_tile, discover_tiles

from .helpers import write_geotiff
from .test_label import run_cli

DEGREES = 1e-7  # ~1 cm; one 10 m pixel is ~1.3e-4 degrees of longitude here


def _scene(path: Path, width: int = 100, height: int = 70, crs: str = "EPSG:32633") -> Path:
    rng = np.random.default_rng(0)
    return write_geotiff(path, rng.integers(0, 256, (3, height, width)).astype(np.uint8), crs=crs)


def _windows(path: Path, tile_size: int, overlap: int) -> list[tuple[int, ...]]:
    tiles = list(discover_tiles([path], TileOptions(tile_size=tile_size, overlap=overlap)))
    return sorted(t.window for t in tiles)


def _grid(cols: list[int], rows: list[int], size: int) -> list[tuple[int, ...]]:
    return sorted((c, r, size, size) for r in rows for c in cols)


def test_overlap_gives_the_expected_windows(tmp_path):
    scene = _scene(tmp_path / "scene.tif")  # 100 x 70 px
    # stride 32: columns 0, 32, 64 and the last one moved back to end at the edge (68); rows 0, 32, 38
    assert _windows(scene, 32, 0) == _grid([0, 32, 64, 68], [0, 32, 38], 32)
    # stride 24: columns 0, 24, 48, 68; rows 0, 24, 38
    assert _windows(scene, 32, 8) == _grid([0, 24, 48, 68], [0, 24, 38], 32)
    # stride 16: columns 0, 16, 32, 48, 64, 68; rows 0, 16, 32, 38
    assert _windows(scene, 32, 16) == _grid([0, 16, 32, 48, 64, 68], [0, 16, 32, 38], 32)
    # stride 1 reaches every offset
    assert _windows(scene, 64, 63) == _grid(list(range(37)), list(range(7)), 64)


def test_cli_overlap_reaches_the_windows(bundles, class_file, tmp_path, capsys):
    scene = _scene(tmp_path / "scene.tif")
    out = tmp_path / "labels.geojson"
    args = [scene, "--classes", class_file, "--model", bundles["msa"], "--out", out]
    code, _, _ = run_cli([*args, "--tile-size", "32", "--overlap", "8", "--quiet"], capsys)
    assert code == 0
    features = json.loads(out.read_text())["features"]
    window_of = [_window(f["properties"]["window"]) for f in features]
    assert sorted(window_of) == _grid([0, 24, 48, 68], [0, 24, 38], 32)
    with rasterio.open(scene) as ds:  # the written footprints too (GeoJSON keeps 7 decimals: 5e-8 degrees)
        for feature, window in zip(features, window_of):
            _assert_footprint(feature["geometry"], _expected_ring(ds, *window))


def _window(value: str | list) -> tuple[int, ...]:
    """A window property as written: "col,row,width,height" (or a list)."""
    return tuple(int(v) for v in (value.split(",") if isinstance(value, str) else value))


def _expected_ring(ds, col: int, row: int, width: int, height: int) -> np.ndarray:
    """The window's four corners in EPSG:4326, by rasterio's own transform of pixel corners."""
    from rasterio.transform import xy
    from rasterio.warp import transform

    cols = [col, col + width, col + width, col]
    rows = [row, row, row + height, row + height]
    xs, ys = xy(ds.transform, rows, cols, offset="ul")
    lons, lats = transform(ds.crs, "EPSG:4326", xs, ys)
    return np.column_stack([lons, lats])


def _assert_footprint(footprint: dict, corners: np.ndarray) -> None:
    assert footprint["type"] == "Polygon" and len(footprint["coordinates"]) == 1
    ring = np.array(footprint["coordinates"][0], dtype=np.float64)
    assert ring.shape == (5, 2) and np.array_equal(ring[0], ring[-1])  # a closed ring of 4 corners
    for corner in corners:  # every true corner is a vertex, to 1e-7 degrees
        error = float(np.abs(ring[:-1] - corner).max(axis=1).min())
        assert error <= DEGREES, f"corner {corner.tolist()} is {error:.1e} degrees from the footprint"
    x, y = ring[:, 0], ring[:, 1]
    assert np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]) > 0  # RFC 7946: exterior rings counterclockwise


@pytest.mark.parametrize("crs", ["EPSG:32633", "EPSG:3035"])
def test_scene_window_footprints_are_exact(tmp_path, crs):
    scene = _scene(tmp_path / "scene.tif", crs=crs)
    tiles = list(discover_tiles([scene], TileOptions(tile_size=32, overlap=8)))
    assert len(tiles) == 12
    with rasterio.open(scene) as ds:
        for tile in tiles:
            _assert_footprint(tile.footprint, _expected_ring(ds, *tile.window))


@pytest.mark.parametrize(
    "grid",
    [(10, 0, 500000, 0, 10, 4999300), (-10, 0, 501000, 0, -10, 5000000)],
    ids=["south-up", "mirrored"],
)
def test_flipped_grid_footprints_still_run_counterclockwise(tmp_path, grid):
    """A south-up grid (row 0 at the south: positive pixel height, as NetCDF-derived GeoTIFFs often are) or
    a mirrored one: the pixel corners come round clockwise, but RFC 7946 rings must run counterclockwise."""
    from rasterio.transform import Affine

    scene = _scene(tmp_path / "scene.tif")
    with rasterio.open(scene, "r+") as ds:
        ds.transform = Affine(*grid)
    tiles = list(discover_tiles([scene], TileOptions(tile_size=32)))
    with rasterio.open(scene) as ds:
        for tile in tiles:
            _assert_footprint(tile.footprint, _expected_ring(ds, *tile.window))


def test_single_file_geotiff_footprint_is_exact(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "small.tif"
    profile = {
        "driver": "GTiff", "width": 37, "height": 23, "count": 3, "dtype": "uint8", "crs": "EPSG:32632",
        "transform": from_origin(712_345.0, 4_987_654.0, 0.5, 0.5),  # 0.5 m pixels far east in UTM 32N
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(rng.integers(0, 256, (3, 23, 37)).astype(np.uint8))
    (tile,) = discover_tiles([path], TileOptions(tile_size=64))
    assert tile.window is None
    with rasterio.open(path) as ds:
        _assert_footprint(tile.footprint, _expected_ring(ds, 0, 0, 37, 23))


def test_a_window_across_the_antimeridian_is_cut_there(bundles, class_file, tmp_path, capsys):
    """RFC 7946: a footprint crossing 180 degrees is two polygons cut there, not one ring running the
    other way round the globe (from 179.9 to -179.9: a polygon as wide as the world) in every output."""
    import pyogrio.raw
    import shapely
    from rasterio.warp import transform

    from rsz_infer.index import IndexConfig, build_index
    from rsz_infer.report import footprint_line

    (x180,), (y60,) = transform("EPSG:4326", "EPSG:32660", [180.0], [60.0])  # UTM 60N, 177 E in the middle
    path = tmp_path / "chukotka.tif"
    profile = {
        "driver": "GTiff", "width": 64, "height": 32, "count": 3, "dtype": "uint8", "crs": "EPSG:32660",
        "transform": from_origin(x180 - 48 * 100, y60, 100, 100),  # 100 m pixels; 180 E at column ~48
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.random.default_rng(2).integers(0, 256, (3, 32, 64)).astype(np.uint8))
    out = tmp_path / "labels.geojson"
    args = [path, "--classes", class_file, "--model", bundles["msa"], "--tile-size", "32", "--quiet"]
    assert run_cli([*args, "--out", out], capsys)[0] == 0
    assert run_cli([*args, "--out", tmp_path / "labels.gpkg"], capsys)[0] == 0
    features = {
        _window(f["properties"]["window"]): f["geometry"] for f in json.loads(out.read_text())["features"]
    }
    west, across = features[(0, 0, 32, 32)], features[(32, 0, 32, 32)]
    assert west["type"] == "Polygon" and across["type"] == "MultiPolygon"
    with rasterio.open(path) as ds:
        corners = _expected_ring(ds, 32, 0, 32, 32)
    corners[:, 0] %= 360  # the true window, continuous across 180
    parts = [shapely.Polygon(p[0]) for p in across["coordinates"]]
    assert [p.bounds[2] <= -179 or p.bounds[0] >= 179 for p in parts] == [True, True]  # each on its side
    unwrapped = shapely.union_all(
        [shapely.affinity.translate(p, 360 if p.bounds[0] < 0 else 0) for p in parts]
    )
    expected = shapely.Polygon(corners).area  # to GeoJSON's 7 decimals (the old ring: ~60,000 times it)
    assert abs(unwrapped.area - expected) < 1e-4 * expected
    meta, _, geometry, _ = pyogrio.raw.read(tmp_path / "labels.gpkg")
    assert meta["geometry_type"] == "MultiPolygon" and len(geometry) == 2
    index = tmp_path / "idx"  # an index keeps the cut footprint and opens it again (trust.py)
    build_index(
        IndexConfig([str(path)], bundles["msa"], index, tiles=TileOptions(tile_size=32), progress=False)
    )
    code, _, err = run_cli(["search", index, "--text", "red", "--html", tmp_path / "hits.html"], capsys)
    assert code in (0, None), err
    lat, lon = map(float, footprint_line({"footprint": across})[0].split(", "))  # the gallery's centre
    assert abs(lat - 60) < 0.05 and 180 - abs(lon) < 0.05


def test_a_geographic_grid_past_180_is_wrapped_and_cut(tmp_path):
    """An EPSG:4326 grid drawn on past the antimeridian (179.99 E to 180.022 E): longitudes stay in
    -180..180, the window across it is cut there, the one past it lies at -179.99."""
    path = tmp_path / "fiji.tif"
    profile = {
        "driver": "GTiff", "width": 64, "height": 64, "count": 3, "dtype": "uint8", "crs": "EPSG:4326",
        "transform": from_origin(179.99, -16.0, 0.0005, 0.0005),
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.zeros((3, 64, 64), np.uint8) + 100)
    tiles = {t.window: t.footprint for t in discover_tiles([path], TileOptions(tile_size=32))}
    across, past = tiles[(0, 0, 32, 32)], tiles[(32, 0, 32, 32)]
    assert across["type"] == "MultiPolygon" and past["type"] == "Polygon"
    lons = [p[0] for polygon in across["coordinates"] for p in polygon[0]] + [
        p[0] for p in past["coordinates"][0]
    ]
    assert all(-180 <= lon <= 180 for lon in lons)
    assert np.allclose(sorted({round(p[0], 6) for p in past["coordinates"][0]}), [-179.994, -179.978])


# A scene past the decimated-read limit (4096 x 4096 px without overviews): the stretch comes from windows
# sampled over the whole scene. A constant scene with one bright corner compresses to ~60 kB.
@pytest.mark.parametrize("side", [512, 4160])
def test_16bit_stretch_sees_the_bright_corner(tmp_path, side):
    dark, bright = 1000, 30000
    data = np.full((1, side, side), dark, np.uint16)
    data[0, side // 2 :, side // 2 :] = bright  # the south-east quarter: 25% of the pixels
    path = tmp_path / "scene.tif"
    profile = {
        "driver": "GTiff", "width": side, "height": side, "count": 1, "dtype": "uint16",
        "crs": "EPSG:32633", "transform": from_origin(500000, 5000000, 10, 10), "tiled": True,
        "compress": "deflate",
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    tile_size = side // 4
    tiles = {t.window[:2]: t for t in discover_tiles([path], TileOptions(tile_size=tile_size))}
    lo, hi = tiles[0, 0].scene.stretch
    # the 2nd and 98th percentiles of the scene are the dark and the bright value
    assert lo == pytest.approx(dark, abs=1) and hi == pytest.approx(bright, abs=1)
    dark_rgb, rule = decode_tile(tiles[0, 0], TileOptions(tile_size=tile_size))
    bright_rgb, _ = decode_tile(tiles[side - tile_size, side - tile_size], TileOptions(tile_size=tile_size))
    assert "uint16 stretch p2-98 per scene" in rule
    assert (dark_rgb == 0).all() and (bright_rgb == 255).all()
