"""STAC items that ship RGB as one asset per band (Landsat Collection 2 Level-2: `red`, `green`, `blue`,
`nir08` ...): without --asset they are labeled in true colour, the three assets read as one VRT."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pystac
from rasterio.transform import from_origin

from rsz_infer.images import TileOptions, discover_tiles
from rsz_infer.index import IndexConfig, build_index
from rsz_infer.pipeline import LabelConfig, label_tiles

from .helpers import bands_first, read_jsonl, solid, write_geotiff

COG = "image/tiff; application=geotiff; profile=cloud-optimized"


def _band_asset(href: str, common_name: str, stac_11: bool = False) -> pystac.Asset:
    band = {"name": f"SR_{common_name}", "common_name": common_name}
    fields = (
        {"bands": [{"name": band["name"], "eo:common_name": common_name}]}
        if stac_11
        else {"eo:bands": [band]}
    )
    return pystac.Asset(href, media_type=COG, roles=["data", "reflectance"], extra_fields=fields)


def _landsat_item(folder: Path, item_id: str, rgb16: np.ndarray, shift_blue: float = 0.0, stac_11=False):
    """A Landsat-like item: one uint16 GeoTIFF per band (red, green, blue, nir08) on one 30 m grid in UTM 33N
    (`shift_blue` metres moves the blue band's grid), a thumbnail, and no visual asset."""
    for i, name in enumerate(("red", "green", "blue", "nir08")):
        data = rgb16[min(i, 2)][None]
        write_geotiff(folder / f"{item_id}_{name}.tif", data)
    if shift_blue:
        import rasterio

        with rasterio.open(folder / f"{item_id}_blue.tif", "r+") as ds:
            ds.transform = from_origin(500000 + shift_blue, 5000000, 10, 10)
    ring = [[15.0, 45.0], [15.01, 45.0], [15.01, 45.01], [15.0, 45.01], [15.0, 45.0]]
    item = pystac.Item(
        item_id, {"type": "Polygon", "coordinates": [ring]}, [15.0, 45.0, 15.01, 45.01],
        datetime(2024, 6, 1, tzinfo=timezone.utc), {},
    )  # fmt: skip
    for name in ("red", "green", "blue"):
        item.add_asset(name, _band_asset(f"./{item_id}_{name}.tif", name, stac_11))
    item.add_asset("nir08", _band_asset(f"./{item_id}_nir08.tif", "nir08", stac_11))
    item.add_asset("thumbnail", pystac.Asset("https://example.com/thumb.png", roles=["thumbnail"]))
    return item


def _rgb16(seed: int = 0) -> np.ndarray:
    """[3, 64, 64] uint16 reflectance-like data: a red left half, a blue right half."""
    rgb = np.concatenate([solid("red", 64, seed=seed)[:, :32], solid("blue", 64, seed=seed)[:, 32:]], axis=1)
    return bands_first(rgb).astype(np.uint16) * 40 + 7000


def _label(bundle, class_file, inputs, out: Path):
    cfg = LabelConfig(
        inputs=[str(p) for p in inputs], classes=class_file, out=out, model=bundle, progress=False,
        tiles=TileOptions(tile_size=32),
    )  # fmt: skip
    return label_tiles(cfg)


def test_an_item_with_red_green_blue_band_assets_is_labeled_as_their_rgb_stack(bundles, class_file, tmp_path):
    data = _rgb16()
    item = _landsat_item(tmp_path / "LC09", "LC09_TEST", data)
    item_json = tmp_path / "LC09" / "LC09_TEST.json"
    item.save_object(include_self_link=False, dest_href=str(item_json))
    # the same pixels as one 3-band GeoTIFF: the model must see exactly these
    stacked = write_geotiff(tmp_path / "stacked.tif", data)
    summary = _label(bundles["msa"], class_file, [item_json], tmp_path / "stac.jsonl")
    assert (summary.labeled, summary.skipped) == (4, 0)
    _label(bundles["msa"], class_file, [stacked], tmp_path / "tif.jsonl")
    stac_rows, tif_rows = read_jsonl(tmp_path / "stac.jsonl"), read_jsonl(tmp_path / "tif.jsonl")
    name = f"STAC_RGB:{item_json.resolve()}#LC09_TEST"  # the tile id names the item: the same on a rerun
    assert [r["tile"] for r in stac_rows] == [
        f"{name}@{w}" for w in ("0,0,32,32", "32,0,32,32", "0,32,32,32", "32,32,32,32")
    ]
    assert [r["path"] for r in stac_rows] == [name] * 4
    for stac_row, tif_row in zip(stac_rows, tif_rows):
        assert stac_row["window"] == tif_row["window"] and stac_row["rule"] == tif_row["rule"]
        assert stac_row["scores"] == tif_row["scores"] and stac_row["labels"] == tif_row["labels"]
        assert stac_row["footprint"] == tif_row["footprint"]
    assert [r["labels"][0] for r in stac_rows] == ["red", "blue", "red", "blue"]
    # an index of the item: a rerun finds its tiles in (same ids, nothing "changed"), as for remote assets
    index = tmp_path / "index"
    assert (
        build_index(IndexConfig([str(item_json)], bundles["msa"], index, TileOptions(tile_size=32))).added
        == 4
    )
    again = build_index(IndexConfig([str(item_json)], bundles["msa"], index, TileOptions(tile_size=32)))
    assert (again.added, again.known, again.reembedded) == (0, 4, 0)
    # one band by --asset, as before
    tiles = list(discover_tiles([item_json], TileOptions(tile_size=64, asset="red")))
    assert [t.path for t in tiles] == [str((tmp_path / "LC09" / "LC09_TEST_red.tif").resolve())]


def test_band_assets_on_different_grids_are_a_skipped_item(bundles, class_file, tmp_path):
    good = _landsat_item(tmp_path, "GOOD", _rgb16())
    bad = _landsat_item(tmp_path, "SHIFTED", _rgb16(1), shift_blue=30.0, stac_11=True)
    collection = tmp_path / "items.json"
    collection.write_text(json.dumps(pystac.ItemCollection([good, bad]).to_dict(transform_hrefs=False)))
    summary = _label(bundles["msa"], class_file, [collection], tmp_path / "labels.csv")
    assert (summary.labeled, summary.skipped) == (4, 1)
    with open(tmp_path / "labels.csv.errors.csv", newline="") as f:
        errors = {r["tile"]: r["reason"] for r in csv.DictReader(f)}
    assert list(errors) == [f"{collection}#SHIFTED"]
    reason = errors[f"{collection}#SHIFTED"]
    grid = "its red, green, blue assets are not on one grid (red and blue differ in transform)"
    assert reason.startswith(f"STAC item SHIFTED: {grid}")
    assert "rsz does not resample" in reason and "\n" not in reason
