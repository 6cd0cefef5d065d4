"""STAC JSON as providers ship it (Earth Search, Planetary Computer) and as pystac-client saves a search:
which asset is labeled, and where its href points."""

from __future__ import annotations

import json

from rsz_infer.images import TileOptions, discover_tiles
from rsz_infer.stac import stac_asset_hrefs

from .helpers import bands_first, solid, write_geotiff

API = "https://earth-search.aws.element84.com/v1"
COG = "image/tiff; application=geotiff; profile=cloud-optimized"


def _item(item_id: str, assets: dict[str, dict], stac_version: str = "1.0.0") -> dict:
    """An Item as a STAC API returns it: self, parent, collection and root links to the API."""
    ring = [[15.0, 45.0], [15.01, 45.0], [15.01, 45.01], [15.0, 45.01], [15.0, 45.0]]
    links = [
        {"rel": "self", "href": f"{API}/collections/sentinel-2-l2a/items/{item_id}"},
        {"rel": "parent", "href": f"{API}/collections/sentinel-2-l2a"},
        {"rel": "collection", "href": f"{API}/collections/sentinel-2-l2a"},
        {"rel": "root", "href": API},
    ]
    return {
        "type": "Feature", "stac_version": stac_version, "id": item_id, "collection": "sentinel-2-l2a",
        "bbox": [15.0, 45.0, 15.01, 45.01], "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"datetime": "2024-06-01T10:00:00Z", "eo:cloud_cover": 3.2}, "links": links,
        "assets": assets,
    }  # fmt: skip


def _visual(href: str) -> dict:
    bands = [{"name": n, "common_name": c} for n, c in (("B04", "red"), ("B03", "green"), ("B02", "blue"))]
    return {"href": href, "type": COG, "title": "True color image", "roles": ["visual"], "eo:bands": bands}


def test_a_saved_search_resolves_relative_hrefs_against_its_file_not_the_api(tmp_path):
    # pystac-client's `search.item_collection().save_object("items.json")`, assets then downloaded beside it
    # and their hrefs made relative: each item keeps its self link to the API, which is no place to read
    # a local file from
    for name in ("a", "b"):
        write_geotiff(tmp_path / "scenes" / name / "TCI.tif", bands_first(solid("red", 40)))
    items = [_item(n, {"visual": _visual(f"scenes/{n}/TCI.tif")}) for n in ("a", "b")]
    search = {
        "type": "FeatureCollection",
        "features": items,
        "links": [{"rel": "next", "href": f"{API}/search"}],
    }
    (tmp_path / "items.json").write_text(json.dumps(search))
    expected = [(str(tmp_path / "scenes" / n / "TCI.tif"), None) for n in ("a", "b")]
    assert list(stac_asset_hrefs(tmp_path / "items.json", None)) == expected
    tiles = list(discover_tiles([tmp_path / "items.json"], TileOptions(tile_size=40)))
    assert [(t.path, t.problem) for t in tiles] == expected
    # an item whose self link is a local file (pystac's ItemCollection of a catalog's items) keeps it
    write_geotiff(tmp_path / "catalog" / "c" / "TCI.tif", bands_first(solid("green", 40)))
    local = _item("c", {"visual": _visual("./TCI.tif")})
    local["links"][0]["href"] = str(tmp_path / "catalog" / "c" / "c.json")
    (tmp_path / "local.json").write_text(json.dumps({"type": "FeatureCollection", "features": [local]}))
    assert list(stac_asset_hrefs(tmp_path / "local.json", None)) == [
        (str(tmp_path / "catalog/c/TCI.tif"), None)
    ]


def test_the_default_asset_is_never_a_thumbnail_or_a_rendered_preview(tmp_path):
    # Planetary Computer's Landsat items have no visual asset, only bands, a rendered_preview PNG from its
    # tiler and a thumbnail: no default (--asset names a band), never a download of the preview
    bands = {
        b: {"href": f"{b}.tif", "type": COG, "roles": ["data"]} for b in ("red", "green", "blue", "nir08")
    }
    previews = {
        "rendered_preview": {
            "href": "https://planetarycomputer.microsoft.com/api/data/v1/item/preview.png?item=l",
            "type": "image/png", "roles": ["overview"], "rel": "preview",
        },
        "thumbnail": {"href": "https://landsateuwest.blob.core.windows.net/x_thumb_small.jpeg",
                      "type": "image/jpeg", "roles": ["thumbnail"]},
        "mtl.xml": {"href": "https://x/MTL.xml", "type": "application/xml", "roles": ["metadata"]},
    }  # fmt: skip
    landsat = _item("l", {**bands, **previews})
    # an Earth Search item of metadata only; a single-band product whose only picture is its thumbnail
    metadata_only = _item("m", {k: previews[k] for k in ("thumbnail", "mtl.xml")})
    write_geotiff(tmp_path / "dem.tif", bands_first(solid("red", 40)))
    dem = _item("d", {"data": {"href": "dem.tif", "type": COG, "roles": ["data"]}, **previews})
    items = {"type": "FeatureCollection", "features": [landsat, metadata_only, dem]}
    (tmp_path / "items.json").write_text(json.dumps(items))
    assert list(stac_asset_hrefs(tmp_path / "items.json", None)) == [
        (
            f"{tmp_path / 'items.json'}#l",
            "STAC item l: no visual asset; pass --asset with one of red, green, blue, nir08, "
            "rendered_preview, thumbnail, mtl.xml",
        ),
        (
            f"{tmp_path / 'items.json'}#m",
            "STAC item m: no visual asset; pass --asset with one of thumbnail, mtl.xml",
        ),
        (str(tmp_path / "dem.tif"), None),
    ]


def test_a_stac_item_collection_saved_as_geojson_is_read_as_stac(tmp_path):
    # an ItemCollection is a GeoJSON FeatureCollection, often saved as .geojson: its items are labeled,
    # where GDAL (which opens it as a vector layer, no raster) could only skip it
    write_geotiff(tmp_path / "a" / "TCI.tif", bands_first(solid("red", 40)))
    search = {"type": "FeatureCollection", "features": [_item("a", {"visual": _visual("a/TCI.tif")})]}
    (tmp_path / "items.geojson").write_text(json.dumps(search))
    (tmp_path / "item.geojson").write_text(json.dumps(_item("a", {"visual": _visual("a/TCI.tif")})))
    for name in ("items.geojson", "item.geojson"):
        tiles = list(discover_tiles([tmp_path / name], TileOptions(tile_size=40)))
        assert [(t.path, t.problem) for t in tiles] == [(str(tmp_path / "a" / "TCI.tif"), None)]
    # a GeoJSON that is no STAC (an area of interest named by mistake) is still GDAL's to refuse
    feature = {k: v for k, v in search["features"][0].items() if k != "stac_version"}
    aoi = {"type": "FeatureCollection", "features": [feature]}
    (tmp_path / "aoi.geojson").write_text(json.dumps(aoi))
    (tile,) = discover_tiles([tmp_path / "aoi.geojson"], TileOptions(tile_size=40))
    assert tile.path == str(tmp_path / "aoi.geojson") and tile.problem.startswith(
        "not a raster GDAL can open"
    )


def test_whether_a_geojson_is_stac_is_decided_without_reading_the_whole_file_into_memory(
    tmp_path, monkeypatch
):
    import tracemalloc

    from rsz_infer import stac
    from rsz_infer.stac import is_stac_geojson

    # a 32 MB GeoJSON of plain features (an export of parcels) was read whole to be told it is no STAC
    plain = json.dumps({"type": "Feature", "properties": {"n": "x" * 60}, "geometry": None}).encode()
    big = tmp_path / "parcels.geojson"
    big.write_bytes(b'{"type": "FeatureCollection", "features": [' + b",".join([plain] * 320_000) + b"]}")
    tracemalloc.start()
    try:
        assert not is_stac_geojson(big)
        assert tracemalloc.get_traced_memory()[1] < 4 << 20
    finally:
        tracemalloc.stop()
    # real STAC with the key after a long first member (a detailed footprint, as some servers order an
    # item's members): past the first chunk, and cut by a chunk boundary at every place
    ring = [[15.0 + i * 1e-7, 45.0] for i in range(60_000)] + [[15.0, 45.0]]  # ~1.5 MB, past one chunk
    item = _item("a", {"visual": _visual("a/TCI.tif")})
    late = {"geometry": {"type": "Polygon", "coordinates": [ring]}}
    late |= {k: v for k, v in item.items() if k not in ("geometry", "stac_version")} | {
        "stac_version": "1.0.0"
    }
    no_stac = {k: v for k, v in late.items() if k != "stac_version"}
    cases = {
        "item": (late, True),
        "items": ({"type": "FeatureCollection", "features": [no_stac, late]}, True),
        "aoi": ({"type": "FeatureCollection", "features": [no_stac]}, False),
    }
    for name, (data, expected) in cases.items():
        path = tmp_path / f"{name}.geojson"
        path.write_text(json.dumps(data))
        assert is_stac_geojson(path) is expected, name
    text = (tmp_path / "item.geojson").read_bytes()
    at = text.index(b'"stac_version"')
    for cut in range(1, 15):  # the key cut by the chunk boundary after each of its bytes
        monkeypatch.setattr(stac, "SCAN_CHUNK", at + cut)
        assert is_stac_geojson(tmp_path / "item.geojson"), cut


def test_asset_without_a_stac_input_is_said(tmp_path):
    # `--asset red` beside a plain GeoTIFF (the user expected it to pick a band) changes nothing: said once
    scene = write_geotiff(tmp_path / "scene.tif", bands_first(solid("red", 40)))
    notes: list[str] = []
    list(discover_tiles([scene], TileOptions(tile_size=40, asset="red"), notes))
    assert notes == ["--asset red: ignored, no input is a STAC JSON"]
    (tmp_path / "item.json").write_text(json.dumps(_item("a", {"red": _visual("scene.tif")})))
    notes = []
    list(discover_tiles([tmp_path / "item.json", scene], TileOptions(tile_size=40, asset="red"), notes))
    assert notes == []
