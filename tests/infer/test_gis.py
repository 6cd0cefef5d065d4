"""Geospatial inputs as a GIS user brings them: any raster GDAL opens (VRT, JP2, COG), GDAL virtual paths,
STAC JSON, large images without a CRS; footprints checked against rasterio's own transform."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from PIL import Image
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform

from rsz_infer.images import TileOptions, discover_tiles
from rsz_infer.index import IndexConfig, build_index, search
from rsz_infer.pipeline import LabelConfig, label_tiles

from .helpers import bands_first, read_jsonl, save, solid, write_geotiff

FOOTPRINT_TOLERANCE = 1e-7  # degrees: GeoJSON's 7 decimals round by at most 5e-8


def _label(bundle, class_file, inputs, out: Path, **kw):
    cfg = LabelConfig(
        inputs=[str(p) for p in inputs], classes=class_file, out=out, model=bundle, progress=False, **kw
    )
    return label_tiles(cfg)


def _expected_ring(source: str, window: list[int] | None) -> np.ndarray:
    """The window's (or the raster's) pixel corners through the raster's transform, then to EPSG:4326."""
    with rasterio.open(source) as ds:
        col, row, width, height = window or (0, 0, ds.width, ds.height)
        cols = np.array([col, col + width, col + width, col, col], float)
        rows = np.array([row + height, row + height, row, row, row + height], float)
        xs, ys = ds.transform * (cols, rows)
        lons, lats = warp_transform(ds.crs, "EPSG:4326", xs, ys)
    return np.stack([lons, lats], axis=1)


def _check_footprints(features: list[dict], source: str) -> None:
    for feature in features:
        props = feature["properties"]
        window = [int(v) for v in props["window"].split(",")] if props.get("window") else None
        ring = np.array(feature["geometry"]["coordinates"][0])
        assert np.abs(ring - _expected_ring(source, window)).max() < FOOTPRINT_TOLERANCE
        assert props["source_crs"] == "EPSG:32633"


def _vrt_over(left: Path, right: Path, width: int, height: int) -> str:
    """A VRT mosaic of two GeoTIFFs in parts/, side by side (as gdalbuildvrt writes it; no GDAL CLI here)."""
    sources = ""
    for path, x_off in ((left, 0), (right, width)):
        sources += (
            f"<SimpleSource><SourceFilename relativeToVRT='1'>parts/{path.name}</SourceFilename>"
            f"<SourceBand>{{band}}</SourceBand><SrcRect xOff='0' yOff='0' xSize='{width}' ySize='{height}'/>"
            f"<DstRect xOff='{x_off}' yOff='0' xSize='{width}' ySize='{height}'/></SimpleSource>"
        )
    bands = "".join(
        f"<VRTRasterBand dataType='Byte' band='{b}'>{sources.format(band=b)}</VRTRasterBand>"
        for b in (1, 2, 3)
    )
    with rasterio.open(left) as ds:
        crs, t = ds.crs.to_wkt(), ds.transform
    geo = f"{t.c}, {t.a}, {t.b}, {t.f}, {t.d}, {t.e}"
    return (
        f"<VRTDataset rasterXSize='{2 * width}' rasterYSize='{height}'><SRS>{crs}</SRS>"
        f"<GeoTransform>{geo}</GeoTransform>{bands}</VRTDataset>"
    )


def test_rasters_gdal_opens_are_inputs_with_exact_footprints(bundles, class_file, tmp_path):
    folder = tmp_path / "rasters"
    write_geotiff(folder / "parts" / "west.tif", bands_first(solid("red", 40)))
    east = write_geotiff(folder / "parts" / "east.tif", bands_first(solid("blue", 40)))
    with rasterio.open(east, "r+") as ds:  # east of west: the same grid moved 400 m
        ds.transform = from_origin(500400, 5000000, 10, 10)
    vrt = folder / "mosaic.vrt"
    vrt.write_text(_vrt_over(folder / "parts" / "west.tif", east, 40, 40), encoding="utf-8")
    profile = {"count": 3, "width": 40, "height": 40, "dtype": "uint8", "crs": "EPSG:32633"}
    profile["transform"] = from_origin(501000, 5001000, 10, 10)
    with rasterio.open(folder / "green_cog.tif", "w", driver="COG", **profile) as ds:
        ds.write(bands_first(solid("green", 40)))
    inputs = [vrt, folder / "green_cog.tif"]
    if "JP2OpenJPEG" in rasterio.drivers.raster_driver_extensions().values():
        jp2 = folder / "sentinel.jp2"  # Sentinel-2 ships JPEG 2000
        with rasterio.open(jp2, "w", driver="JP2OpenJPEG", **profile) as ds:
            ds.write(bands_first(solid("red", 40, noise=0)))
        inputs.append(jp2)
    out = tmp_path / "labels.geojson"
    summary = _label(bundles["msa"], class_file, inputs, out, tiles=TileOptions(tile_size=40))
    assert (summary.labeled, summary.skipped) == (len(inputs) + 1, 0)
    text = out.read_text()
    assert "crs" not in json.loads(text)  # RFC 7946: lon/lat, UTM scenes reprojected, no crs member
    features = json.loads(text)["features"]
    by_tile = {f["properties"]["tile"]: f for f in features}
    import re

    decimals = {len(d) for d in re.findall(r"\[-?\d+\.(\d+), -?\d+\.\d+\]", text)}
    assert decimals and max(decimals) <= 7  # RFC 7946: 7 decimals (about 1 cm) are plenty
    assert by_tile[f"{vrt}@0,0,40,40"]["properties"]["label_1"] == "red"
    assert by_tile[f"{vrt}@40,0,40,40"]["properties"]["label_1"] == "blue"
    assert by_tile[str(folder / "green_cog.tif")]["properties"]["label_1"] == "green"
    _check_footprints([by_tile[f"{vrt}@0,0,40,40"], by_tile[f"{vrt}@40,0,40,40"]], str(vrt))
    for path in inputs[1:]:
        _check_footprints([by_tile[str(path)]], str(path))
    if len(inputs) == 3:
        assert by_tile[str(inputs[2])]["properties"]["label_1"] == "red"
    # a VRT found inside a folder is a raster too (by opening it, not by its suffix)
    names = {Path(t.path).name for t in discover_tiles([folder], TileOptions(tile_size=40))}
    assert names == {p.name for p in inputs} | {"west.tif", "east.tif"}


def test_rotated_geotransforms_give_the_true_corners(tmp_path):
    """A grid turned by 30 degrees (and sheared): footprints are its four true corners, for a single file
    and for scene windows, not the axis-aligned box around them (about 240 m off here). The corners are
    computed here from the grid's geometry (not through rasterio's Affine); PROJ reprojects them."""
    from rasterio.transform import Affine

    origin_x, origin_y, pixel, turn, shear = 500000.0, 5000000.0, 10.0, np.radians(30), 0.1
    # x = origin + col * (pixel cos, pixel sin) + row * (pixel (sin + shear), -pixel cos): columns run
    # east-north-east, rows south-south-east
    a, d = pixel * np.cos(turn), pixel * np.sin(turn)
    b, e = pixel * (np.sin(turn) + shear), -pixel * np.cos(turn)
    geotransform = Affine(a, b, origin_x, d, e, origin_y)

    def true_ring(col: int, row: int, width: int, height: int) -> np.ndarray:
        corners = [(col, row + height), (col + width, row + height), (col + width, row), (col, row)]
        xs = [origin_x + c * pixel * np.cos(turn) + r * pixel * (np.sin(turn) + shear) for c, r in corners]
        ys = [origin_y + c * pixel * np.sin(turn) - r * pixel * np.cos(turn) for c, r in corners]
        lons, lats = warp_transform("EPSG:32633", "EPSG:4326", xs + xs[:1], ys + ys[:1])
        return np.stack([lons, lats], axis=1)

    rasters = {}
    for name, size in (("single.tif", 40), ("scene.tif", 80)):
        rasters[name] = write_geotiff(tmp_path / name, bands_first(solid("red", size)))
        with rasterio.open(rasters[name], "r+") as ds:
            ds.transform = geotransform
    tiles = list(discover_tiles([rasters["single.tif"]], TileOptions(tile_size=40)))
    assert len(tiles) == 1 and tiles[0].window is None
    ring = np.array(tiles[0].footprint["coordinates"][0])
    assert np.abs(ring - true_ring(0, 0, 40, 40)).max() < FOOTPRINT_TOLERANCE
    windows = list(discover_tiles([rasters["scene.tif"]], TileOptions(tile_size=40)))
    assert sorted(t.window for t in windows) == [(c, r, 40, 40) for c in (0, 40) for r in (0, 40)]
    for tile in windows:
        ring = np.array(tile.footprint["coordinates"][0])
        assert np.abs(ring - true_ring(*tile.window)).max() < FOOTPRINT_TOLERANCE


def test_gdal_virtual_paths_reach_gdal_untouched(bundles, class_file, tmp_path):
    scene = write_geotiff(tmp_path / "scene.tif", bands_first(solid("green", 40)))
    archive = tmp_path / "scenes.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(scene, "inner/scene.tif")
    zipped = f"/vsizip/{archive}/inner/scene.tif"
    in_memory = "/vsimem/rsz-test/red.tif"
    url = f"file://{scene}"  # a URL, as s3:// or https:// are: handed to GDAL as written (no network here)
    profile = {"count": 3, "width": 40, "height": 40, "dtype": "uint8", "crs": "EPSG:32633"}
    with rasterio.open(
        in_memory, "w", driver="GTiff", transform=from_origin(5e5, 5e6, 10, 10), **profile
    ) as ds:
        ds.write(bands_first(solid("red", 40)))
    try:
        out = tmp_path / "labels.jsonl"
        summary = _label(
            bundles["msa"], class_file, [zipped, in_memory, url], out, tiles=TileOptions(tile_size=40)
        )
        assert (summary.labeled, summary.skipped) == (3, 0)
        rows = {r["tile"]: r for r in read_jsonl(out)}
        assert set(rows) == {zipped, in_memory, url}  # the names exactly as given: no Path() on the way
        assert rows[url]["labels"][0] == "green"
        assert rows[zipped]["labels"][0] == "green" and rows[in_memory]["labels"][0] == "red"
        ring = np.array(rows[zipped]["footprint"]["coordinates"][0])
        assert np.abs(ring - _expected_ring(str(scene), None)).max() < FOOTPRINT_TOLERANCE
        # the same inputs for the retrieval index; search hits carry their footprints
        index = tmp_path / "idx"
        cfg = IndexConfig(
            [zipped, in_memory], bundles["msa"], index, TileOptions(tile_size=40), progress=False
        )
        assert build_index(cfg).added == 2
        hits = search(index, text="green fields", k=2)
        assert hits[0].tile["tile"] == zipped and hits[0].tile["footprint"] == rows[zipped]["footprint"]
        assert hits[0].tile["source_crs"] == "EPSG:32633"
    finally:
        rasterio.shutil.delete(in_memory)


def test_large_images_without_crs_are_cut_into_windows(bundles, class_file, tmp_path):
    rng = np.random.default_rng(0)
    big_png = save(
        tmp_path / "aerial.png",
        np.clip(solid("red", 1249)[:1035] + rng.integers(0, 5, (1035, 1249, 3)), 0, 255).astype(np.uint8),
    )
    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", driver="GTiff", width=400, height=400, count=3, dtype="uint8") as ds:
        ds.write(bands_first(solid("blue", 400)))
    out = tmp_path / "labels.jsonl"
    summary = _label(bundles["msa"], class_file, [big_png, plain], out, tiles=TileOptions(tile_size=256))
    rows = read_jsonl(out)
    png_windows = [r["window"] for r in rows if r["path"] == str(big_png)]
    tif_windows = [r["window"] for r in rows if r["path"] == str(plain)]
    # 1249 x 1035 in 256 px windows: 5 columns x 5 rows (the last ones moved back to end at the edge)
    assert len(png_windows) == 25 and [993, 779, 256, 256] in png_windows
    assert sorted(tif_windows) == [
        [0, 0, 256, 256],
        [0, 144, 256, 256],
        [144, 0, 256, 256],
        [144, 144, 256, 256],
    ]
    assert all(r["labels"][0] == ("red" if r["path"] == str(big_png) else "blue") for r in rows)
    assert all("footprint" not in r and "source_crs" not in r for r in rows)  # pixel footprints only
    # 256 px windows reach the 32 px model input shrunk 8x: the summary says so
    assert summary.resize_note.startswith("29 tiles resized more than 4x to the model's 32 px input")
    assert summary.resize_note in summary.line(out)
    small = _label(
        bundles["msa"], class_file, [save(tmp_path / "s.png", solid("red", 100))], tmp_path / "s.csv"
    )
    assert small.resize_note is None and "resized" not in small.line(tmp_path / "s.csv")


def test_overlap_without_large_inputs_is_said(bundles, class_file, tmp_path):
    notes: list[str] = []
    tile = save(tmp_path / "red.png", solid("red", 40))
    list(discover_tiles([tile], TileOptions(tile_size=64, overlap=8), notes))
    assert notes == ["--overlap 8: ignored, no input is larger than --tile-size"]


def _stac_item(item_id: str, assets: dict[str, str], bbox=(15.0, 45.0, 15.01, 45.01)) -> dict:
    west, south, east, north = bbox
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id, "bbox": list(bbox),
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"datetime": "2024-06-01T10:00:00Z"}, "links": [],
        "assets": {k: {"href": h, "type": "image/tiff", "roles": ["data"]} for k, h in assets.items()},
    }  # fmt: skip


def test_stac_items_collections_and_catalogs(bundles, class_file, tmp_path):
    stac = tmp_path / "stac"
    write_geotiff(stac / "a" / "visual.tif", bands_first(solid("red", 40)))
    write_geotiff(stac / "a" / "nir.tif", bands_first(solid("blue", 40)))
    write_geotiff(stac / "b" / "visual.tif", bands_first(solid("green", 40)))
    item_a = _stac_item("a", {"visual": "./visual.tif", "nir": "nir.tif"})
    (stac / "a" / "a.json").write_text(json.dumps(item_a))
    (stac / "b" / "b.json").write_text(json.dumps(_stac_item("b", {"visual": "visual.tif"})))
    options = TileOptions(tile_size=40)

    def paths(inputs, **kw) -> list[str]:
        return [t.path for t in discover_tiles(inputs, TileOptions(tile_size=40, **kw))]

    # an Item: its visual asset, the href resolved relative to the item's JSON
    assert paths([stac / "a" / "a.json"]) == [str((stac / "a" / "visual.tif").resolve())]
    assert paths([stac / "a" / "a.json"], asset="nir") == [str((stac / "a" / "nir.tif").resolve())]
    # an ItemCollection next to the folders: hrefs relative to the collection file
    items = [_stac_item("a", {"visual": "a/visual.tif"}), _stac_item("b", {"visual": "b/visual.tif"})]
    (stac / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    assert paths([stac / "items.json"]) == [str((stac / d / "visual.tif").resolve()) for d in "ab"]
    # a static catalog linking both items
    catalog = {
        "type": "Catalog", "stac_version": "1.0.0", "id": "cat", "description": "test",
        "links": [{"rel": "item", "href": "./a/a.json"}, {"rel": "item", "href": "./b/b.json"}],
    }  # fmt: skip
    (stac / "catalog.json").write_text(json.dumps(catalog))
    out = tmp_path / "labels.geojson"
    summary = _label(bundles["msa"], class_file, [stac / "catalog.json"], out, tiles=options)
    assert (summary.labeled, summary.skipped) == (2, 0)
    features = json.loads(out.read_text())["features"]
    assert sorted(f["properties"]["label_1"] for f in features) == ["green", "red"]
    for feature in features:
        _check_footprints([feature], feature["properties"]["path"])
    # a wrong --asset is one clear line; an item lacking it, beside others that have it, is a skipped row
    from rsz_infer.errors import RszError

    with pytest.raises(RszError, match="no asset 'swir'.*visual, nir"):
        paths([stac / "a" / "a.json"], asset="swir")
    tiles = list(discover_tiles([stac / "catalog.json"], TileOptions(tile_size=40, asset="nir")))
    assert [t.problem for t in tiles] == [None, "STAC item b: no asset 'nir' (it has visual)"]
    # hrefs the user's JSON names as URLs or GDAL paths go to GDAL as written (nothing fetched here)
    from rsz_infer.stac import stac_asset_hrefs

    remote = _stac_item("r", {"visual": "https://example.com/r.tif", "b": "/vsis3/bucket/key.tif"})
    (stac / "remote_item.json").write_text(json.dumps(remote))
    assert list(stac_asset_hrefs(stac / "remote_item.json", None)) == [("https://example.com/r.tif", None)]
    assert list(stac_asset_hrefs(stac / "remote_item.json", "b")) == [("/vsis3/bucket/key.tif", None)]
    # a catalog that links remote JSON is refused, not fetched
    catalog["links"].append({"rel": "child", "href": "https://example.com/catalog.json"})
    (stac / "remote.json").write_text(json.dumps(catalog))
    with pytest.raises(RszError, match="links to remote STAC JSON"):
        paths([stac / "remote.json"])


def _check_vector_columns(columns: dict, top_k: int) -> None:
    expected = ["tile", "path", "window"] + [
        f"{k}_{i}" for i in range(1, top_k + 1) for k in ("label", "score", "similarity")
    ]
    assert [c for c in columns if c not in ("geometry", "bbox", "wkt")] == expected + ["rule", "source_crs"]


def test_vector_outputs_by_suffix(bundles, class_file, tmp_path):
    import pyarrow.parquet as pq
    import pyogrio
    import shapely

    rgb = np.concatenate([solid("red", 32), solid("blue", 32)], axis=1)
    scene = write_geotiff(tmp_path / "scene.tif", bands_first(rgb))
    expected = {f"{scene}@{c},0,32,32": _expected_ring(str(scene), [c, 0, 32, 32]) for c in (0, 32)}
    for suffix in (".parquet", ".gpkg", ".fgb", ".csv"):
        out = tmp_path / f"labels{suffix}"
        _label(bundles["msa"], class_file, [scene], out, tiles=TileOptions(tile_size=32), top_k=2)
        if suffix == ".parquet":  # GeoParquet 1.1: WKB, PROJJSON CRS, bbox covering column
            table = pq.read_table(out)
            geo = json.loads(table.schema.metadata[b"geo"])
            column = geo["columns"]["geometry"]
            assert geo["version"] == "1.1.0" and column["encoding"] == "WKB"
            assert column["crs"]["id"] == {"authority": "OGC", "code": "CRS84"}
            assert column["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
            rows = table.to_pylist()
            shapes = [shapely.from_wkb(r["geometry"]) for r in rows]
            for row, shape in zip(rows, shapes):
                assert row["bbox"]["xmin"] == pytest.approx(shape.bounds[0])
            columns = table.column_names
        elif suffix == ".csv":
            import csv

            with open(out, newline="") as f:
                rows = list(csv.DictReader(f))
            shapes = [shapely.from_wkt(r["wkt"]) for r in rows]
            columns = list(rows[0])
        else:
            info = pyogrio.read_info(out)
            assert info["crs"] == "EPSG:4326" and info["geometry_type"] == "Polygon"
            meta, _, geometry, fields = pyogrio.raw.read(out)
            rows = [dict(zip(meta["fields"], values)) for values in zip(*fields)]
            shapes = list(shapely.from_wkb(geometry))
            columns = list(meta["fields"])
        _check_vector_columns(columns, 2)
        for row, shape in zip(rows, shapes):
            ring = np.array(shape.exterior.coords)
            assert np.abs(ring - expected[row["tile"]]).max() < FOOTPRINT_TOLERANCE, suffix
            assert row["label_1"] == ("red" if row["window"].startswith("0,") else "blue")
            assert row["source_crs"] == "EPSG:32633"
        assert not list(tmp_path.glob(".*tmp*")), suffix
    # without a CRS: pixel rectangles of the windows, and a GeoParquet CRS of null ("unknown"); x = column,
    # y = -row, where QGIS draws a raster without georeference (geotransform 0,1,0,0,0,-1): rows as y drew
    # them mirrored above the scene
    png = save(tmp_path / "plain.png", solid("green", 64))
    _label(bundles["msa"], class_file, [png], tmp_path / "pixels.parquet", tiles=TileOptions(tile_size=32))
    table = pq.read_table(tmp_path / "pixels.parquet")
    assert json.loads(table.schema.metadata[b"geo"])["columns"]["geometry"]["crs"] is None
    rows = table.to_pylist()
    with rasterio.open(png) as ds:
        qgis = rasterio.Affine(1, 0, 0, 0, -1, 0) if ds.transform.is_identity else ds.transform
    for row in rows:
        col, row_off, width, height = map(int, row["window"].split(","))
        shape = shapely.from_wkb(row["geometry"])
        corners = [qgis * (c, r) for c in (col, col + width) for r in (row_off, row_off + height)]
        xs, ys = zip(*corners)
        assert shape.bounds == (min(xs), min(ys), max(xs), max(ys)) and shape.exterior.is_ccw
    assert {shapely.from_wkb(r["geometry"]).bounds for r in rows} >= {(0, -32, 32, 0), (32, -64, 64, -32)}
    try:
        import geopandas
    except ImportError:
        return
    frame = geopandas.read_parquet(tmp_path / "labels.parquet")
    assert frame.crs.to_string() == "OGC:CRS84" and len(frame) == 2


def test_class_map_of_a_scene_georeferenced_by_gcps_keeps_them(bundles, class_file, tmp_path):
    """A scene with ground control points only (no geotransform: raw Sentinel-1, drone frames) has no
    footprints, but its class map keeps the GCPs (it was written with neither, so nothing could warp it)."""
    from rasterio.control import GroundControlPoint

    gcps = [GroundControlPoint(r, c, 500_000 + 10 * c, 5_000_000 - 10 * r) for r in (0, 64) for c in (0, 96)]
    scene = tmp_path / "gcps.tif"
    profile = {"driver": "GTiff", "width": 96, "height": 64, "count": 3, "dtype": "uint8"}
    with rasterio.open(scene, "w", **profile, gcps=gcps, crs="EPSG:32633") as dst:
        dst.write(bands_first(solid("red", 96)[:64]))
    class_map = tmp_path / "map.tif"
    _label(
        bundles["msa"], class_file, [scene], tmp_path / "l.csv", tiles=TileOptions(32), class_map=class_map
    )
    with rasterio.open(class_map) as cm, rasterio.open(scene) as src:
        assert cm.crs is None and src.crs is None  # georeferenced by the GCPs alone, as the scene
        assert [(p.row, p.col, p.x, p.y) for p in cm.gcps[0]] == [
            (p.row, p.col, p.x, p.y) for p in src.gcps[0]
        ]
        assert cm.gcps[1] == src.gcps[1] == "EPSG:32633"


def test_class_map_of_a_scene_without_georeference_has_none(bundles, class_file, tmp_path):
    """A scan or drone frame with neither CRS nor geotransform: its class map gets no geotransform either.
    An identity one (what rasterio reports for "none") would make GDAL and QGIS take row numbers as map
    y, upward: the map would show upside down beside its scene, which QGIS draws with y = -row."""
    scene = tmp_path / "plain.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=96, height=64, count=3, dtype="uint8") as dst:
        dst.write(bands_first(solid("red", 96)[:64]))
    class_map = tmp_path / "map.tif"
    _label(
        bundles["msa"], class_file, [scene], tmp_path / "l.csv", tiles=TileOptions(32), class_map=class_map
    )
    geotiff_georeference = {33550, 33922, 34264}  # ModelPixelScale, ModelTiepoint, ModelTransformation
    with Image.open(scene) as src, Image.open(class_map) as cm:
        assert not geotiff_georeference & set(src.tag_v2)
        assert not geotiff_georeference & set(cm.tag_v2)
    assert "GeoTransform" not in Path(f"{class_map}.aux.xml").read_text()
    with rasterio.open(class_map) as cm:
        assert cm.crs is None and (cm.read(1) == 0).all()


def test_category_names_go_through_rasterios_own_gdal(tmp_path):
    """pyogrio's wheel loads a second libgdal (another version) once a .gpkg or .fgb --out is written, which
    is before the class map: the category names are still set by the GDAL that wrote the map, rasterio's."""
    import ctypes

    import pyogrio  # noqa: F401  (its libgdal is loaded now, as after writing labels.gpkg)

    from rsz_infer.classmap import _gdal_library, category_names, set_category_names

    _gdal_library.cache_clear()
    lib = _gdal_library()
    lib.GDALVersionInfo.restype, lib.GDALVersionInfo.argtypes = ctypes.c_char_p, [ctypes.c_char_p]
    assert lib.GDALVersionInfo(b"RELEASE_NAME").decode() == rasterio.__gdal_version__
    scene = write_geotiff(tmp_path / "scene.tif", bands_first(solid("red", 8)))
    assert set_category_names(scene, ["a", "b"]) and category_names(scene) == ["a", "b"]


def test_class_map_is_a_cog_with_colours_names_and_nodata(bundles, class_file, tmp_path):
    from rsz_infer.classmap import category_names, class_colour

    # 600 x 400 px, 200 px windows: red west third, blue the rest; a nodata hole across two windows and
    # one window all nodata (skipped, so nodata in the map too)
    rgb = np.concatenate([solid("red", 400)[:, :200], solid("blue", 400)], axis=1)
    rgb[50:150, 50:250] = 0
    rgb[200:, 400:] = 0
    rgb[20:40, 220:240] = (0, 40, 230)  # red band 0 (the nodata value) but a valid blue pixel
    scene = write_geotiff(tmp_path / "scene.tif", bands_first(rgb), nodata=0)
    class_map = tmp_path / "map.tif"
    gallery = tmp_path / "gallery.html"
    summary = _label(
        bundles["msa"], class_file, [scene], tmp_path / "labels.geojson", tiles=TileOptions(tile_size=200),
        class_map=class_map, class_map_scores=True, html=gallery,
    )  # fmt: skip
    assert (summary.labeled, summary.nodata) == (5, 1) and summary.class_maps == [class_map]
    features = json.loads((tmp_path / "labels.geojson").read_text())["features"]
    assert len(features) == 5
    _check_footprints(features, str(scene))  # partly nodata windows keep their whole footprint
    names = ["red", "green", "blue"]
    with rasterio.open(class_map) as cm, rasterio.open(scene) as src:
        assert cm.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert cm.profile["tiled"] and cm.block_shapes[0] == (256, 256) and cm.overviews(1)[:1] == [2]
        assert cm.crs == src.crs and cm.transform == src.transform
        assert json.loads(cm.tags()["classes"]) == names
        colours = cm.colormap(1)
        assert colours[2] == (*class_colour(2), 255)
        # past the classes, nodata (255) among them: transparent, not the opaque black QGIS painted
        assert {colours[i] for i in range(3, 256)} == {(0, 0, 0, 0)}
        assert cm.nodata == 255 and cm.descriptions == ("class", "top score") and cm.scales == (1.0, 0.01)
        classes, scores = cm.read(1), cm.read(2)
        source_valid = src.dataset_mask() > 0  # GDAL: nodata where every band is nodata
        overview = cm.read(1, out_shape=(200, 300))
    assert category_names(class_map) == names  # what gdalinfo and QGIS show
    assert "<Category>green</Category>" in Path(f"{class_map}.aux.xml").read_text()
    # every source nodata pixel is nodata in the map, every valid pixel has its window's class
    assert ((classes == 255) == ~source_valid).all() and (classes[20:40, 220:240] == 2).all()
    assert (classes[:, :200][source_valid[:, :200]] == 0).all()
    assert (classes[:, 200:][source_valid[:, 200:]] == 2).all()
    assert set(np.unique(scores[source_valid])) <= set(range(101)) and scores[~source_valid].max() == 255
    assert set(np.unique(overview)) <= {0, 2, 255}  # MODE overviews: no class in between
    quicklook = class_map.with_suffix(".png")
    with Image.open(quicklook) as im:
        assert im.format == "PNG" and max(im.size) <= 700
    assert quicklook.stat().st_size < 100_000
    page = gallery.read_text()
    assert page.count('class="quicklook"') == 1 and "data:image/png;base64," in page
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_gsd_resamples_scene_windows_to_the_models_ground_resolution(bundles, class_file, tmp_path):
    from rsz_infer.bundle import load_manifest
    from rsz_infer.images import decode_tile

    # a 10 m scene (Sentinel-2-like) and a 2.5 m scene of the same 400 m x 400 m; a model trained at 5 m
    coarse = write_geotiff(tmp_path / "s2.tif", bands_first(solid("green", 40)))  # 10 m pixels
    fine = tmp_path / "aerial.tif"
    profile = {"count": 3, "width": 160, "height": 160, "dtype": "uint8", "crs": "EPSG:32633"}
    with rasterio.open(
        fine, "w", driver="GTiff", transform=from_origin(500000, 5000000, 2.5, 2.5), **profile
    ) as ds:
        ds.write(bands_first(solid("red", 160)))
    model = tmp_path / "model_5m"
    import shutil

    shutil.copytree(bundles["msa"], model)
    manifest = json.loads((model / "manifest.json").read_text())
    (model / "manifest.json").write_text(json.dumps(manifest | {"gsd": 5.0}))
    assert load_manifest(model).gsd == 5.0
    from rsz_infer.errors import RszError

    (model / "manifest.json").write_text(json.dumps(manifest | {"gsd": "5 m"}))
    with pytest.raises(RszError, match="gsd must be null or metres per pixel"):
        load_manifest(model)
    (model / "manifest.json").write_text(json.dumps(manifest | {"gsd": 5.0}))
    out = tmp_path / "labels.jsonl"
    summary = _label(model, class_file, [coarse, fine], out, tiles=TileOptions(tile_size=32))
    assert "--gsd: scene windows resampled to 5 m per pixel (trained at 5 m)" in summary.notes
    rows = read_jsonl(out)
    # 32 px at 5 m = 160 m: 16 px windows of the 10 m scene, 64 px windows of the 2.5 m scene
    assert sorted({tuple(r["window"][2:]) for r in rows if r["path"] == str(coarse)}) == [(16, 16)]
    assert sorted({tuple(r["window"][2:]) for r in rows if r["path"] == str(fine)}) == [(64, 64)]
    assert len(rows) == 9 + 9  # 400 m / 160 m windows: 3 x 3 per scene (the last moved back to the edge)
    assert all("resampled" in r["rule"] for r in rows)
    for row in rows:  # footprints are the ground each window covers: 160 m either way
        ring = np.array(row["footprint"]["coordinates"][0])
        assert np.abs(ring - _expected_ring(row["path"], row["window"])).max() < FOOTPRINT_TOLERANCE
    # what the model gets: 32 px tiles, GDAL's resampling of the window (bilinear up, average down)
    options = TileOptions(tile_size=32, gsd=5.0)
    tiles = {t.path: t for t in discover_tiles([coarse, fine], options)}
    for path in (coarse, fine):
        rgb, rule = decode_tile(tiles[str(path)], options)
        assert rgb.shape == (32, 32, 3)
    assert "resampled 10 m -> 5 m per pixel (bilinear)" in decode_tile(tiles[str(coarse)], options)[1]
    assert "resampled 2.5 m -> 5 m per pixel (average)" in decode_tile(tiles[str(fine)], options)[1]
    # a raster smaller than one window is resampled whole: 400 m at 5 m is 80 px
    whole = decode_tile(next(discover_tiles([coarse], TileOptions(tile_size=256, gsd=5.0))), options)
    assert whole[0].shape == (80, 80, 3) and "resampled 10 m -> 5 m per pixel (bilinear)" in whole[1]
    # off: windows of --tile-size source pixels, as without a GSD
    plain = _label(
        model, class_file, [coarse], tmp_path / "off.jsonl", tiles=TileOptions(tile_size=32), gsd="off"
    )
    assert plain.labeled == 4 and not any("--gsd" in n for n in plain.notes)
    # a number overrides the bundle; a GSD cannot apply without a CRS, and rsz says so
    png = save(tmp_path / "plain.png", solid("blue", 100))
    other = _label(model, class_file, [png], tmp_path / "n.jsonl", tiles=TileOptions(tile_size=32), gsd="2")
    assert any(n.startswith("--gsd 2: ignored for 1 images without a CRS") for n in other.notes)


def test_gsd_auto_shrinking_tiles_more_than_4x_says_so(bundles, class_file, tmp_path):
    """--gsd auto reads a 512 px window of a 0.625 m scene as one 32 px tile for a model trained at 10 m:
    16x, though the tile reaches the model at its own size; the summary said nothing, as it does for
    windows that --tile-size makes too large. So for a raster that small, resampled whole."""
    import shutil

    model = tmp_path / "model_10m"
    shutil.copytree(bundles["msa"], model)
    manifest = json.loads((model / "manifest.json").read_text())
    (model / "manifest.json").write_text(json.dumps(manifest | {"gsd": 10.0}))
    rasters = []
    for name, side in (("scene", 1024), ("small", 512)):
        rasters.append(tmp_path / f"{name}.tif")
        profile = {"count": 3, "width": side, "height": side, "dtype": "uint8", "crs": "EPSG:32633"}
        transform = from_origin(5e5, 5e6, 0.625, 0.625)
        with rasterio.open(rasters[-1], "w", driver="GTiff", transform=transform, **profile) as ds:
            ds.write(bands_first(solid("red", side)))
    out = tmp_path / "labels.jsonl"
    summary = _label(model, class_file, rasters, out, tiles=TileOptions(tile_size=32))
    assert sorted(str(r.get("window")) for r in read_jsonl(out)) == [
        "None", "[0, 0, 512, 512]", "[0, 512, 512, 512]", "[512, 0, 512, 512]", "[512, 512, 512, 512]"
    ]  # fmt: skip
    assert summary.resize_note == (
        "5 tiles resized more than 4x to the model's 32 px input (e.g. 512x512; source pixels resampled "
        "by --gsd)"
    )
    assert summary.resize_note in summary.line(out)


@pytest.fixture(scope="module")
def dsva_bundle(bundles, tmp_path_factory) -> Path:
    """The toy DSVA bundle with an image graph that also gives attention maps, as DSVA's export does:
    attribute a's map is where colour channel a is bright (4 x 4, softmax over positions)."""
    import shutil

    import torch

    from rsz_infer.bundle import TensorSpec, load_manifest, sha256_file
    from rsz_infer.preprocess import PreprocessSpec

    mean = torch.tensor(PreprocessSpec().mean).view(1, 3, 1, 1)
    std = torch.tensor(PreprocessSpec().std).view(1, 3, 1, 1)

    class AttentionGraph(torch.nn.Module):
        def forward(self, image):
            rgb = image * std + mean
            colour = rgb.mean(dim=(2, 3))
            pooled = torch.nn.functional.adaptive_avg_pool2d(rgb, 4)  # [B, 3, 4, 4]
            maps = torch.softmax(8 * pooled.flatten(2), dim=-1).view_as(pooled)
            return colour - colour.mean(dim=1, keepdim=True), maps

    folder = tmp_path_factory.mktemp("dsva_attention") / "dsva"
    shutil.copytree(bundles["dsva"], folder)
    graph = folder / "image_dsva.onnx"
    torch.onnx.export(
        AttentionGraph(), (torch.zeros(2, 3, 32, 32),), str(graph), input_names=["image"],
        output_names=["embedding", "attention_maps"], opset_version=17, dynamo=False,
        dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}, "attention_maps": {0: "batch"}},
    )  # fmt: skip
    manifest = load_manifest(folder, verify=False)
    manifest.graphs["image"].outputs.append(TensorSpec("attention_maps", ["batch", 3, 4, 4], "float32"))
    manifest.files[graph.name] = sha256_file(graph)
    (folder / "manifest.json").write_text(manifest.to_json(), encoding="utf-8")
    return folder


def test_explain_gives_top_attributes_and_attention_overlays(dsva_bundle, bundles, class_file, tmp_path):
    import base64
    import io

    from rsz_infer.errors import RszError

    west_red = np.concatenate([solid("red", 64)[:, :32], solid("green", 64)[:, :32]], axis=1)
    tiles = [
        save(tmp_path / "t" / "west_red.png", west_red),
        save(tmp_path / "t" / "blue.png", solid("blue", 64)),
    ]
    out, gallery = tmp_path / "labels.csv", tmp_path / "gallery.html"
    _label(dsva_bundle, class_file, tiles, out, explain=True, html=gallery)
    import csv

    with open(out, newline="") as f:
        rows = {Path(r["tile"]).name: r for r in csv.DictReader(f)}
    assert rows["blue.png"]["attribute_1"] == "blue"
    assert {rows["west_red.png"]["attribute_1"], rows["west_red.png"]["attribute_2"]} == {"red", "green"}
    assert float(rows["blue.png"]["attribute_score_1"]) > float(rows["blue.png"]["attribute_score_2"])
    jsonl = tmp_path / "labels.jsonl"
    _label(dsva_bundle, class_file, tiles, jsonl, explain=True)
    assert [a[0] for a in {Path(r["tile"]).name: r for r in read_jsonl(jsonl)}["blue.png"]["attributes"]][
        0
    ] == "blue"
    # the gallery: each tile's three top attributes as heat maps over it
    page = gallery.read_text()
    assert page.count('<figure class="overlay">') == 6 and 'alt="attention of red ' in page
    red_overlay = page.split('alt="attention of red ')[0].rsplit('<img src="data:image/jpeg;base64,', 1)[1]
    overlay = np.asarray(Image.open(io.BytesIO(base64.b64decode(red_overlay.split('"')[0]))), np.float32)
    # the red attribute's attention is on the west half: the heat (yellow-white) brightens it there
    assert overlay.shape == west_red.shape  # thumbnails never enlarge a tile
    gain = overlay - west_red.astype(np.float32)
    assert gain[:, :28].mean() > 80 and gain[:, 36:].mean() < 0
    # other bundles have no per-attribute scores: one clear line, before any work
    with pytest.raises(RszError, match="--explain: .* msa bundle"):
        _label(bundles["msa"], class_file, tiles, tmp_path / "x.csv", explain=True)


def test_rasters_are_found_by_opening_not_by_suffix(bundles, class_file, tmp_path):
    folder = tmp_path / "mixed"
    write_geotiff(folder / "scene.data", bands_first(solid("red", 40)))  # a GeoTIFF with an odd name
    profile = {"count": 3, "width": 40, "height": 40, "dtype": "uint8"}
    with rasterio.open(folder / "frame.ntf", "w", driver="NITF", **profile) as ds:  # NITF, no CRS
        ds.write(bands_first(solid("blue", 40)))
    # a large paletted PNG: GDAL reads one band of indices, rsz applies the colour table
    palette = np.zeros((40, 100, 3), np.uint8)
    palette[:] = (220, 30, 30)
    Image.fromarray(np.tile(palette, (3, 3, 1))).convert("P").save(folder / "paletted.png")
    (folder / "notes.txt").write_text("not a raster")
    (folder / "table.bin").write_bytes(b"\x00\x01" * 100)
    out = tmp_path / "labels.jsonl"
    summary = _label(bundles["msa"], class_file, [folder], out, tiles=TileOptions(tile_size=64))
    rows = read_jsonl(out)
    by_file = {}
    for r in rows:
        by_file.setdefault(Path(r["path"]).name, set()).add(r["labels"][0])
    assert by_file == {"scene.data": {"red"}, "frame.ntf": {"blue"}, "paletted.png": {"red"}}
    assert {r["rule"] for r in rows if r["path"].endswith("paletted.png")} == {"palette to rgb"}
    assert summary.skipped == 0  # the text and binary files are not rasters: ignored inside a folder
    # named on their own, they are skipped rows that say why
    named = list(discover_tiles([folder / "table.bin"], TileOptions()))
    assert named[0].problem.startswith("not a raster GDAL can open")


def test_cli_options_reach_the_engine(bundles, class_file, tmp_path, capsys):
    from rsz_infer.cli import main

    write_geotiff(tmp_path / "item" / "nir.tif", bands_first(solid("blue", 96)))
    item = tmp_path / "item" / "item.json"
    item.write_text(json.dumps(_stac_item("s", {"visual": "missing.tif", "nir": "nir.tif"})))
    out, class_map, gallery = tmp_path / "l.parquet", tmp_path / "m.tif", tmp_path / "g.html"
    args = [item, "--asset", "nir", "--classes", class_file, "--model", bundles["msa"], "--out", out]
    args += [
        "--tile-size",
        48,
        "--gsd",
        "off",
        "--class-map",
        class_map,
        "--class-map-scores",
        "--html",
        gallery,
    ]
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in [*args, "--quiet"]])
    err = capsys.readouterr().err
    assert exit_info.value.code == 0, err
    assert "4 tiles labeled" in err and f"gallery of 4 tiles -> {gallery}" in err
    import pyarrow.parquet as pq

    assert set(pq.read_table(out).column("label_1").to_pylist()) == {"blue"}
    with rasterio.open(class_map) as cm:
        assert cm.count == 2
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                str(a)
                for a in [item, "--classes", class_file, "--model", bundles["msa"], "--explain", "--quiet"]
            ]
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "--explain: " in err


def test_class_map_overviews_take_the_majority_class(tmp_path):
    """MODE overviews: a 2 x 2 block of three class-0 pixels and one class-3 pixel is class 0 in the first
    overview. GDAL's AVERAGE on a paletted band averages the colours and takes the nearest table entry:
    3 x blue + 1 x red is nearest to class 7's grey (an average of the indices would give 1); NEAREST
    gives 3 wherever it sampled the odd pixel, which moves around the blocks."""
    from rsz_infer.classmap import write_class_maps

    scene = write_geotiff(tmp_path / "scene.tif", bands_first(solid("red", 512)))
    records = [{"path": str(scene), "window": [0, 0, 512, 512], "class_index": 0, "scores": [0.8]}]
    for row in range(0, 64, 2):
        for col in range(0, 64, 2):
            corner = (col + (row // 2) % 2, row + (col // 2) % 2)  # the odd pixel moves around the block
            records.append({"path": str(scene), "window": [*corner, 1, 1], "class_index": 3, "scores": [0.5]})
    target = tmp_path / "map.tif"
    assert write_class_maps(records, target, list("abcdefgh")) == [(records[0]["path"], target)]
    with rasterio.open(target) as cm:
        assert (cm.read(1)[:64, :64] == 3).sum() == 32 * 32
        assert cm.overviews(1)[0] == 2
        overview = cm.read(1, out_shape=(256, 256))[:32, :32]
    assert np.unique(overview).tolist() == [0]
