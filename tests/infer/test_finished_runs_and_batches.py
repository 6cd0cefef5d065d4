"""A finished output resumed with other inputs or settings is refused, scenes of one name keep their own
class maps, one broken STAC item is a skipped row, an index append keeps (and defends) its tile options,
the Python API takes one path and skips a missing one, and --min-score tables keep the best class."""

from __future__ import annotations

import csv
import json

import pystac
import pytest
import rasterio

from rsz_infer import Labeler
from rsz_infer.outputs import finished_path

from .helpers import bands_first, save, solid, write_geotiff
from .test_label import run_cli


def _tiles(folder, n):
    for i in range(n):
        colour = ("red", "green", "blue")[i % 3]
        save(folder / f"tile_{i:05d}.png", solid(colour, 24, seed=i))
    return folder


# ---------------------------------------------------------------- --resume on a finished output


def test_resume_of_a_finished_output_checks_what_it_was_made_with(bundles, class_file, tmp_path, capsys):
    tiles = _tiles(tmp_path / "tiles", 12)
    two = tmp_path / "two.txt"
    two.write_text("red: red roofs\ngreen: green fields\n", encoding="utf-8")
    out = tmp_path / "res.csv"
    first = [*sorted(tiles.glob("tile_0000?.png"))]  # 10 of the 12
    base = ["--out", out, "--quiet"]
    assert run_cli([*first, "--classes", class_file, "--model", bundles["msa"], *base], capsys)[0] == 0
    assert finished_path(out).is_file()
    before = out.read_bytes()
    cases = [
        ([tiles, "--classes", class_file, "--model", bundles["msa"]], "started with other inputs"),
        ([*first, "--classes", two, "--model", bundles["msa"]], "differs: class file"),
        ([*first, "--classes", class_file, "--model", bundles["mcfa"]], "differs: model bundle"),
        ([*first, "--classes", class_file, "--model", bundles["msa"], "--top-k", "2"], "differs: top_k"),
    ]
    for args, message in cases:
        code, _, err = run_cli([*args, *base, "--resume"], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {out}: already complete"), err
        assert message in lines[0] and "without --resume" in lines[0], err
    assert out.read_bytes() == before  # nothing rewritten
    # the same command again: nothing left to do
    code, _, err = run_cli(
        [*first, "--classes", class_file, "--model", bundles["msa"], *base, "--resume"], capsys
    )
    assert code == 0 and "already complete; nothing left to do" in err
    # the same folder, which has gained a file since: refused, not "complete" with a tile missing
    folder_out = tmp_path / "folder.csv"
    args = [tiles, "--classes", class_file, "--model", bundles["msa"], "--out", folder_out, "--quiet"]
    assert run_cli(args, capsys)[0] == 0
    save(tiles / "tile_00099.png", solid("red", 24))
    code, _, err = run_cli([*args, "--resume"], capsys)
    assert code == 2 and "its inputs now hold other tiles" in err, err
    # without --resume the run starts over and labels them all
    assert run_cli(args, capsys)[0] == 0
    with open(folder_out, newline="") as f:
        assert len(list(csv.DictReader(f))) == 13
    # a finished output without its record (an older rsz, or deleted) is not taken for complete
    finished_path(folder_out).unlink()
    code, _, err = run_cli([*args, "--resume"], capsys)
    assert code == 2 and "already complete, with no folder.csv.run.json" in err, err


# ---------------------------------------------------------------- class maps of scenes of one name


def test_scenes_of_one_file_name_get_a_class_map_each(bundles, class_file, tmp_path, capsys):
    x = write_geotiff(tmp_path / "x" / "s.tif", bands_first(solid("red", 80)))
    y = write_geotiff(tmp_path / "y" / "s.tif", bands_first(solid("green", 80)))
    z = write_geotiff(tmp_path / "z" / "other.tif", bands_first(solid("blue", 80)))
    target = tmp_path / "cm" / "map.tif"
    args = [x, y, z, "--classes", class_file, "--model", bundles["msa"], "--out", tmp_path / "c.csv"]
    code, _, err = run_cli(
        [*args, "--tile-size", "40", "--class-map", target, "--quiet", "--gsd", "off"], capsys
    )
    assert code == 0, err
    maps = {
        x: tmp_path / "cm" / "map.x.s.tif",
        y: tmp_path / "cm" / "map.y.s.tif",
        z: tmp_path / "cm" / "map.other.tif",
    }
    for scene, path in maps.items():
        assert f"class map of {scene} -> {path}" in err, err
        with rasterio.open(path) as cm:  # each map is its own scene's: red, green, blue (classes 0, 1, 2)
            assert set(cm.read(1).ravel().tolist()) == {"xyz".index(scene.parent.name)}


def test_map_names_stay_unique_when_folder_names_collide_too(tmp_path):
    from rsz_infer.classmap import map_targets

    target = tmp_path / "map.tif"
    scenes = ["/a/x/s.tif", "/b/x/s.tif", "/c/y/s.tif", "/d/y.s.tif"]
    names = map_targets(target, scenes)
    assert len(set(names.values())) == len(scenes)
    assert names == map_targets(target, scenes)  # stable
    assert all(p.parent == tmp_path and p.name.startswith("map.") for p in names.values())


# ---------------------------------------------------------------- a broken STAC item


def _catalog(tmp_path):
    stac = tmp_path / "stac"
    catalog = pystac.Catalog(id="c", description="tiny")
    for name, colour in (("a", "red"), ("b", "green"), ("gone", "blue")):
        scene = write_geotiff(stac / name / "visual.tif", bands_first(solid(colour, 40)))
        item = pystac.Item(
            id=name, geometry={"type": "Point", "coordinates": [15, 45]}, bbox=[15, 45, 15, 45],
            datetime=__import__("datetime").datetime(2024, 1, 1), properties={},
        )  # fmt: skip
        item.add_asset("visual", pystac.Asset(href=str(scene), media_type="image/tiff"))
        catalog.add_item(item)
    catalog.normalize_hrefs(str(stac))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    (stac / "gone" / "gone.json").unlink()  # a missing item JSON
    (stac / "b" / "b.json").write_text("{not json", encoding="utf-8")  # a broken one
    return stac


def test_one_broken_stac_item_is_a_skipped_row(bundles, class_file, tmp_path, capsys):
    stac = _catalog(tmp_path)
    out = tmp_path / "s.csv"
    args = [stac / "catalog.json", "--classes", class_file, "--model", bundles["msa"], "--quiet"]
    code, _, err = run_cli([*args, "--out", out, "--tile-size", "40", "--gsd", "off"], capsys)
    assert code == 3, err
    with open(out, newline="") as f:
        assert [r["label_1"] for r in csv.DictReader(f)] == ["red"]
    with open(f"{out}.errors.csv", newline="") as f:
        reasons = {r["tile"]: r["reason"] for r in csv.DictReader(f)}
    # each says what is wrong with it: pystac's own "does not resolve to a STAC object" says neither
    broken, gone = str(stac / "b" / "b.json"), str(stac / "gone" / "gone.json")
    assert reasons[broken] == (
        f"STAC item {broken}: not a readable STAC JSON "
        "(Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"
    )
    assert reasons[gone] == f"STAC item {gone}: no such file"
    # and the index takes the good item too
    index = ["index", stac / "catalog.json", "--model", bundles["msa"], "--out", tmp_path / "ix", "--quiet"]
    code, _, err = run_cli([*index, "--tile-size", "40", "--gsd", "off"], capsys)
    assert code == 3 and "1 tiles added" in err and "2 skipped" in err, err


def test_one_malformed_item_of_an_item_collection_is_a_skipped_row(bundles, class_file, tmp_path, capsys):
    """pystac's ItemCollection.from_dict refused the whole collection for any malformed feature: one item
    without properties (or an asset without href) cost every good item beside it."""
    for name, colour in (("a", "red"), ("c", "green")):
        write_geotiff(tmp_path / f"{name}.tif", bands_first(solid(colour, 40)))

    def item(item_id: str) -> dict:
        return {
            "type": "Feature", "stac_version": "1.0.0", "id": item_id, "bbox": [15, 45, 15.01, 45.01],
            "geometry": {"type": "Point", "coordinates": [15, 45]}, "links": [],
            "properties": {"datetime": "2024-06-01T10:00:00Z"},
            "assets": {"visual": {"href": f"{item_id}.tif", "type": "image/tiff"}},
        }  # fmt: skip

    no_properties, no_href, broken_thumbnail = item("p"), item("h"), item("c")
    del no_properties["properties"]
    del no_href["assets"]["visual"]["href"]
    broken_thumbnail["assets"]["thumbnail"] = {"type": "image/jpeg"}  # not the one labeled: no matter
    features = [item("a"), no_properties, no_href, "not an item", broken_thumbnail]
    items = tmp_path / "items.json"
    items.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    out = tmp_path / "s.csv"
    args = [items, "--classes", class_file, "--model", bundles["msa"], "--quiet", "--out", out]
    code, _, err = run_cli([*args, "--tile-size", "40", "--gsd", "off"], capsys)
    assert code == 3, err
    with open(out, newline="") as f:
        assert [r["label_1"] for r in csv.DictReader(f)] == ["red", "green"]
    with open(f"{out}.errors.csv", newline="") as f:
        reasons = {r["tile"]: r["reason"] for r in csv.DictReader(f)}
    assert reasons == {
        f"{items}#p": "STAC item p: no 'properties' field",
        f"{items}#h": "STAC item h: asset 'visual' has no href",
        f"{items}#features[3]": "STAC item features[3]: not a JSON object (a str)",
    }
    # a catalog's item JSON with an asset without href: the same row (pystac refused that item for a
    # KeyError 'href' only)
    from rsz_infer.errors import RszError
    from rsz_infer.stac import stac_asset_hrefs

    (tmp_path / "a.json").write_text(json.dumps(item("a")))
    (tmp_path / "h.json").write_text(json.dumps(no_href))
    links = [{"rel": "item", "href": "./a.json"}, {"rel": "item", "href": "./h.json"}]
    catalog = {"type": "Catalog", "stac_version": "1.0.0", "id": "c", "description": "-", "links": links}
    (tmp_path / "catalog.json").write_text(json.dumps(catalog))
    assert list(stac_asset_hrefs(tmp_path / "catalog.json", None)) == [
        (str(tmp_path / "a.tif"), None),
        (f"{tmp_path / 'catalog.json'}#h", "STAC item h: asset 'visual' has no href"),
    ]
    # a GeoJSON with no STAC feature at all is still one line for the whole file

    plain = {k: v for k, v in item("a").items() if k != "stac_version"}
    (tmp_path / "aoi.json").write_text(json.dumps({"type": "FeatureCollection", "features": [plain]}))
    with pytest.raises(RszError, match="aoi.json: a GeoJSON FeatureCollection, not a STAC ItemCollection"):
        list(stac_asset_hrefs(tmp_path / "aoi.json", None))


def test_stac_links_to_devices_are_never_read():
    """A catalog from elsewhere linking /dev/zero as an item was read until memory ran out; only regular
    files are read (here /dev/null, which ends at once, so the test cannot hang)."""
    from rsz_infer.errors import RszError
    from rsz_infer.stac import _local_stac_io

    _, stac_io = _local_stac_io()
    with pytest.raises(RszError, match="/dev/null: not a regular file"):
        stac_io.read_text("/dev/null")


# ---------------------------------------------------------------- index appends and their summary


def test_an_append_with_other_tile_options_is_refused(bundles, tmp_path, capsys):
    tiles = _tiles(tmp_path / "tiles", 2)
    scene = write_geotiff(tmp_path / "more" / "scene.tif", bands_first(solid("red", 80)))
    ix = tmp_path / "ix3"
    base = ["index", "--model", bundles["msa"], "--out", ix, "--quiet"]
    assert run_cli([*base[:1], tiles, *base[1:]], capsys)[0] == 0
    for option, value, message in (
        ("--tile-size", "128", "--tile-size 256 (asked: 128)"),
        ("--bands", "3,2,1", "--bands (none) (asked: 3,2,1)"),
        ("--gsd", "2", "--gsd off (asked: 2)"),
        ("--overlap", "8", "--overlap 0 (asked: 8)"),
    ):
        code, _, err = run_cli([*base[:1], scene, *base[1:], option, value], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], err
        assert lines[0].startswith(f"error: {ix}: the index was built with"), err
    # the index's own values, or none given: appended
    code, _, err = run_cli([*base[:1], scene, *base[1:], "--tile-size", "256"], capsys)
    assert code == 0 and "1 tiles added" in err, err


def test_index_summary_counts_this_calls_tiles_already_in(bundles, tmp_path, capsys):
    # "already in" counts the inputs of this call the index holds, not every earlier call's tile
    a, b = _tiles(tmp_path / "a", 2), _tiles(tmp_path / "b", 1)
    ix = tmp_path / "ix"
    base = ["--model", bundles["msa"], "--out", ix, "--quiet"]
    for inputs, summary in (
        ([a], "2 tiles added, 0 already in, 0 skipped, 0 nodata, index now holds 2 tiles,"),
        ([a, b], "1 tiles added, 2 already in, 0 skipped, 0 nodata, index now holds 3 tiles,"),
        ([b], "0 tiles added, 1 already in, 0 skipped, 0 nodata, index now holds 3 tiles,"),
    ):
        code, _, err = run_cli(["index", *inputs, *base], capsys)
        assert code == 0 and f"rsz-infer index: {summary}" in err, err


def test_index_summary_names_the_errors_file_with_its_folder(bundles, tmp_path, capsys):
    tiles = _tiles(tmp_path / "tiles", 1)
    (tiles / "bad.png").write_bytes(b"not a png")
    out = tmp_path / "sh" / "idx.0"
    code, _, err = run_cli(["index", tiles, "--model", bundles["msa"], "--out", out, "--quiet"], capsys)
    errors = tmp_path / "sh" / "idx.0.errors.csv"
    assert code == 3 and errors.is_file() and f"(skipped tiles in {errors})" in err, err


# ---------------------------------------------------------------- the Python API


def test_label_takes_one_path_and_skips_a_missing_one(bundles, class_file, tmp_path, monkeypatch):
    tiles = _tiles(tmp_path / "tiles", 1)
    monkeypatch.chdir(tmp_path)  # relative paths, as a user types them
    with Labeler(bundles["msa"], class_file, device="cpu") as labeler:
        for one in ("tiles/tile_00000.png", tiles / "tile_00000.png"):
            records = labeler.label(one)
            assert len(records) == 1 and records[0]["labels"][0] == "red"
        records = labeler.label(["nope.png", "GTIFF_DIR:2:nope.tif", "tiles/tile_00000.png"])
    assert [r["tile"] for r in records] == ["nope.png", "GTIFF_DIR:2:nope.tif", "tiles/tile_00000.png"]
    assert records[0]["skipped"] == records[1]["skipped"] == "no such file or folder"
    assert records[2]["labels"][0] == "red"


# ---------------------------------------------------------------- --min-score tables


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".gpkg", ".fgb", ".geojson"])
def test_min_score_tables_keep_the_best_class(bundles, class_file, tmp_path, capsys, suffix):
    tiles = _tiles(tmp_path / "tiles", 2)  # red, green
    out = tmp_path / f"m{suffix}"
    args = [tiles, "--classes", class_file, "--model", bundles["msa"], "--out", out, "--quiet"]
    assert run_cli([*args, "--min-score", "2"], capsys)[0] == 0  # no cosine reaches 2: all unknown
    if suffix == ".csv":
        with open(out, newline="") as f:
            rows = list(csv.DictReader(f))
    elif suffix == ".geojson":
        rows = [f["properties"] for f in json.loads(out.read_text())["features"]]
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(out).to_pylist()
    else:
        import pyogrio.raw

        meta, _, _, values = pyogrio.raw.read(out)
        rows = [dict(zip(meta["fields"], row)) for row in zip(*values)]
    rows.sort(key=lambda r: r["tile"])
    assert [r["label_1"] for r in rows] == ["unknown", "unknown"]
    assert [r["best_class"] for r in rows] == ["red", "green"]
