"""Output options and values checked before any work, and outputs laid out as the run asks: FlatGeobuf
with tiles that have no geometry, --class-map into a new folder, one errors file per output, --gsd and
--min-score that are not finite or too small, --top-k beyond the classes, a class named "unknown"."""

from __future__ import annotations

import csv
import math
import os
import warnings
from pathlib import Path

import pytest
import rasterio

from rsz_infer.bundle import load_manifest
from rsz_infer.errors import RszError
from rsz_infer.images import TileOptions
from rsz_infer.pipeline import LabelConfig, label_tiles, resolve_gsd

from .helpers import bands_first, save, solid, write_geotiff
from .test_hostile_bundles_and_indexes import error_lines
from .test_label import run_cli


def _label(bundle, class_file, inputs, out: Path, **kw):
    cfg = LabelConfig(
        inputs=[str(p) for p in inputs], classes=class_file, out=out, model=bundle, progress=False, **kw
    )
    return label_tiles(cfg)


def test_flatgeobuf_with_tiles_without_geometry(bundles, class_file, tmp_path):
    import pyogrio.raw

    folder = tmp_path / "tiles"
    save(folder / "red.png", solid("red"))
    save(folder / "blue.png", solid("blue"))
    out = tmp_path / "plain.fgb"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = _label(bundles["msa"], class_file, [folder], out)
    assert summary.exit_code == 0
    assert not [w for w in caught if "'crs' was not provided" in str(w.message)]  # no CRS on purpose
    meta, _, geometry, (tiles,) = pyogrio.raw.read(out, columns=["tile"])
    assert meta["crs"] is None and sorted(Path(t).name for t in tiles) == ["blue.png", "red.png"]
    assert all(g is None for g in geometry)
    # a georeferenced scene beside a plain tile: footprints in EPSG:4326, the plain tile without one
    scene = write_geotiff(tmp_path / "scene.tif", bands_first(solid("green", 32)))
    mixed = tmp_path / "mixed.fgb"
    assert _label(bundles["msa"], class_file, [folder / "red.png", scene], mixed).exit_code == 0
    meta, _, geometry, (tiles,) = pyogrio.raw.read(mixed, columns=["tile"])
    assert meta["crs"] == "EPSG:4326"
    by_name = {Path(t).name: g for t, g in zip(tiles, geometry)}
    assert by_name["red.png"] is None and by_name["scene.tif"] is not None


def test_class_map_into_a_folder_that_does_not_exist_yet(bundles, class_file, tmp_path):
    scene = write_geotiff(tmp_path / "scene.tif", bands_first(solid("red", 64)))
    class_map = tmp_path / "maps" / "new" / "map.tif"
    summary = _label(
        bundles["msa"], class_file, [scene], tmp_path / "labels.csv", tiles=TileOptions(tile_size=32),
        class_map=class_map,
    )  # fmt: skip
    assert summary.exit_code == 0 and summary.class_maps == [class_map]
    assert class_map.is_file() and class_map.with_suffix(".png").is_file()
    assert sorted(p.name for p in class_map.parent.iterdir()) == ["map.png", "map.tif", "map.tif.aux.xml"]
    # a class map whose own name is not UTF-8 (GDAL writes it under an ASCII temporary name)
    odd = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/odd/m\xe9p.tif"))
    _label(
        bundles["msa"],
        class_file,
        [scene],
        tmp_path / "l2.csv",
        tiles=TileOptions(tile_size=32),
        class_map=odd,
    )
    assert sorted(os.listdir(os.fsencode(odd.parent))) == [
        b"m\xe9p.png",
        b"m\xe9p.tif",
        b"m\xe9p.tif.aux.xml",
    ]


def test_each_output_keeps_its_own_errors_file(bundles, class_file, tmp_path, capsys):
    folder = tmp_path / "tiles"
    save(folder / "red.png", solid("red"))
    (folder / "corrupt.png").write_bytes(b"\x89PNG not really")
    base = [folder, "--classes", class_file, "--model", bundles["msa"], "--quiet"]
    for name in ("labels.csv", "labels.geojson"):
        code, _, err = run_cli([*base, "--out", tmp_path / name], capsys)
        assert code == 3, err
    with open(tmp_path / "labels.csv.errors.csv", newline="") as f:
        assert [Path(r["tile"]).name for r in csv.DictReader(f)] == ["corrupt.png"]
    assert (tmp_path / "labels.geojson.errors.csv").is_file()
    # a clean run of one output removes its own list only
    (folder / "corrupt.png").unlink()
    code, _, err = run_cli([*base, "--out", tmp_path / "labels.csv"], capsys)
    assert code == 0, err
    assert not (tmp_path / "labels.csv.errors.csv").exists()
    assert (tmp_path / "labels.geojson.errors.csv").is_file()


def test_gsd_not_finite_or_beyond_a_scene_is_refused_before_any_work(bundles, class_file, tmp_path, capsys):
    manifest = load_manifest(bundles["msa"])
    for text in ("inf", "-inf", "nan"):
        with pytest.raises(RszError, match=f"--gsd {text}: metres per pixel must be positive and finite"):
            resolve_gsd(text, manifest, TileOptions())
    scene = write_geotiff(tmp_path / "scene.tif", bands_first(solid("red", 64)))  # 10 m pixels
    with rasterio.open(scene) as ds:  # GDAL's strips are above --max-pixels 1024: 16 px blocks
        profile, data = ds.profile, ds.read()
    with rasterio.open(scene, "w", **(profile | {"tiled": True, "blockxsize": 16, "blockysize": 16})) as ds:
        ds.write(data)
    out = tmp_path / "labels.csv"
    base = [scene, "--classes", class_file, "--model", bundles["msa"], "--out", out, "--quiet"]
    base += ["--tile-size", 32, "--max-pixels", 1024]
    # 0.1 m: a 32 px window would be a third of one 10 m pixel
    code, _, err = run_cli([*base, "--gsd", "0.1"], capsys)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "--gsd 0.1" in lines[0] and "scene.tif" in lines[0], err
    assert "less than one of its 10 m pixels" in lines[0]
    # 0.5 m: a window of 2 source pixels, enlarged to 40 x 40 = 1600 pixels, more than --max-pixels 1024
    code, _, err = run_cli([*base, "--gsd", "0.5"], capsys)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "--gsd 0.5" in lines[0] and "scene.tif" in lines[0], err
    assert "1,600 pixels, more than --max-pixels 1,024" in lines[0]
    # 20 m: a window reads 64 x 64 = 4096 source pixels, more than --max-pixels 1024 (each window was
    # skipped as "image declares ..." instead)
    code, _, err = run_cli([*base, "--gsd", "20"], capsys)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "--gsd 20" in lines[0] and "scene.tif" in lines[0], err
    assert "4,096 pixels, more than --max-pixels 1,024" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]  # nothing written
    code, _, err = run_cli([*base, "--gsd", "5"], capsys)  # 5 m: 16 source pixels to 32, as before
    assert code == 0, err


def test_min_score_must_be_finite(bundles, class_file, tmp_path, capsys):
    save(tmp_path / "t" / "red.png", solid("red"))
    out = tmp_path / "labels.csv"
    base = [tmp_path / "t", "--classes", class_file, "--model", bundles["msa"], "--out", out, "--quiet"]
    for value in ("nan", "inf"):
        code, _, err = run_cli([*base, "--min-score", value], capsys)
        lines = error_lines(err)
        assert code == 2 and len(lines) == 1 and f"--min-score {value}: must be a finite number" in lines[0]
    assert not out.exists()
    with pytest.raises(RszError, match="--min-score nan"):  # the Python API refuses it too
        _label(bundles["msa"], class_file, [tmp_path / "t"], out, min_score=math.nan)


def test_top_k_beyond_the_classes_writes_a_column_group_per_class(bundles, class_file, tmp_path):
    import pyarrow.parquet as pq

    folder = tmp_path / "tiles"
    for i, colour in enumerate(("red", "green", "blue", "red")):
        save(folder / f"t{i}_{colour}.png", solid(colour, seed=i))
    out = tmp_path / "labels.csv"

    def interrupt(n):
        if n == 1:
            raise KeyboardInterrupt

    cfg = LabelConfig([str(folder)], class_file, out, bundles["msa"], top_k=100, batch=2, progress=False)
    with pytest.raises(KeyboardInterrupt):
        label_tiles(cfg, on_batch=interrupt)
    # the run log keeps the --top-k asked for: resuming with another one is still refused ...
    with pytest.raises(RszError, match=r"differs: top_k"):
        label_tiles(LabelConfig([str(folder)], class_file, out, bundles["msa"], top_k=3, resume=True))
    # ... and with the same one the run finishes
    summary = label_tiles(LabelConfig([str(folder)], class_file, out, bundles["msa"], top_k=100, resume=True))
    assert (summary.already_done, summary.labeled) == (2, 2)
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and [c for c in rows[0] if c.startswith("label_")] == [
        "label_1",
        "label_2",
        "label_3",
    ]
    assert "similarity_3" in rows[0] and "score_4" not in rows[0] and all(r["label_3"] for r in rows)
    _label(bundles["msa"], class_file, [folder], tmp_path / "labels.parquet", top_k=100)
    names = pq.read_table(tmp_path / "labels.parquet").column_names
    assert "label_3" in names and "label_4" not in names


def test_a_class_named_unknown_with_min_score_is_refused(bundles, tmp_path, capsys):
    classes = tmp_path / "classes.txt"
    classes.write_text("red: red roofs\nunknown: anything else\nblue: blue water\n", encoding="utf-8")
    save(tmp_path / "t" / "red.png", solid("red"))
    out = tmp_path / "labels.csv"
    base = [tmp_path / "t", "--classes", classes, "--model", bundles["msa"], "--out", out, "--quiet"]
    code, _, err = run_cli([*base, "--min-score", "0.2"], capsys)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "classes.txt: a class named 'unknown'" in lines[0], err
    assert "--min-score 0.2" in lines[0] and not out.exists()
    code, _, err = run_cli(base, capsys)  # without --min-score "unknown" is a class like any other
    assert code == 0, err
    with open(out, newline="") as f:
        assert [r["label_1"] for r in csv.DictReader(f)] == ["red"]
