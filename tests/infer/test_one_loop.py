"""Labeling and indexing share one tile-embedding loop (rsz_infer.batching): the same counts of labeled,
skipped and nodata tiles from the same real files, the same exit-code rule, and issue 16's rough edges of a
first real run (outputs checked before decoding, --resume when done, nothing labeled, decoders named)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from rsz_infer.batching import EngineOptions, ImageEngine, embed_tiles
from rsz_infer.bundle import load_manifest
from rsz_infer.images import TileOptions, discover_tiles
from rsz_infer.index import Index, IndexConfig, build_index
from rsz_infer.pipeline import LabelConfig, label_tiles

from .helpers import bands_first, save, solid, write_geotiff
from .test_label import run_cli


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """3 good PNGs, 2 bad files, and a 96x64 scene whose right third is nodata (32 px windows: 4 + 2)."""
    folder = tmp_path_factory.mktemp("mixed_loop")
    for i, colour in enumerate(["red", "green", "blue"]):
        save(folder / f"{i}_{colour}.png", solid(colour, 24, seed=i))
    (folder / "empty.png").write_bytes(b"")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg" * 10)
    rgb = np.zeros((64, 96, 3), np.uint8)
    rgb[:, :64] = solid("green", 64)
    write_geotiff(folder / "scene.tif", bands_first(rgb).astype(np.uint16) * 50, nodata=0)
    return folder


def test_labeling_and_indexing_count_tiles_the_same_way(bundles, class_file, mixed, tmp_path):
    options = TileOptions(tile_size=32)
    label = label_tiles(
        LabelConfig(
            [str(mixed)],
            class_file,
            tmp_path / "l.csv",
            bundles["msa"],
            tiles=options,
            decoder="pillow",
            progress=False,
        )
    )
    index = build_index(IndexConfig([str(mixed)], bundles["msa"], tmp_path / "idx", options, progress=False))
    assert (label.labeled, label.skipped, label.nodata) == (7, 2, 2)  # 3 PNGs + 4 windows; 2 bad; 2 empty
    assert (index.added, index.skipped, index.nodata) == (label.labeled, label.skipped, label.nodata)
    assert label.exit_code == index.exit_code == 3
    # the rows are the same tiles, and the index holds exactly the embeddings the loop yields
    rows = [r["tile"] for r in Index.load(tmp_path / "idx").tiles]
    manifest = load_manifest(bundles["msa"])
    with ImageEngine.open(bundles["msa"], manifest, EngineOptions(batch=4, device="cpu")) as engine:
        batches = list(embed_tiles(engine, discover_tiles([mixed], options), options))
    assert [t.id for b in batches for t in b.tiles] == rows
    assert sum(len(b.skipped) for b in batches) == 4 and all(
        b.outputs["embedding"].shape[0] == len(b.tiles) for b in batches if b.tiles
    )
    # the summary names the decoder that ran per input kind: Pillow for the PNGs, rasterio for the windows
    assert "decode pillow, preprocess" in label.decode and "GeoTIFF windows by rasterio" in label.decode
    # only GeoTIFF windows: rasterio read them all, whatever --decoder auto picked for JPEG/PNG
    scene_only = label_tiles(
        LabelConfig([str(mixed / "scene.tif")], class_file, tmp_path / "s.csv", bundles["msa"], tiles=options,
                    device="cpu", progress=False)
    )  # fmt: skip
    assert scene_only.decode.startswith("decode rasterio, preprocess ") and "by" not in scene_only.decode


@pytest.mark.parametrize("name", ["a.png", "small.tif"])
def test_class_map_on_png_tiles_fails_before_decoding(name, bundles, class_file, tmp_path, capsys):
    """Also a georeferenced GeoTIFF no larger than --tile-size: read whole, it has no windows to map (the
    message said 'no GeoTIFF scene' of it)."""
    tiles = tmp_path / "tiles"
    if name == "a.png":
        save(tiles / name, solid("red", 24))
    else:
        write_geotiff(tiles / name, bands_first(solid("red", 24)))
    out = tmp_path / "y.csv"
    args = [
        tiles,
        "--classes",
        class_file,
        "--model",
        bundles["msa"],
        "--out",
        out,
        "--class-map",
        tmp_path / "m.tif",
    ]
    code, _, err = run_cli([*args, "--quiet", "--decoder", "pillow"], capsys)
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"error: --class-map {tmp_path / 'm.tif'}: no scene among the inputs (a raster larger than "
        "--tile-size 256, cut into windows: a class map is drawn in a scene's grid)"
    )
    assert os.listdir(tmp_path) == ["tiles"]  # no y.csv.part, no y.csv


def test_every_output_option_is_checked_before_decoding(bundles, class_file, tmp_path, capsys):
    tiles = tmp_path / "tiles"
    save(tiles / "a.png", solid("red", 24))
    (tmp_path / "file").write_text("not a folder")
    base = [tiles, "--classes", class_file, "--model", bundles["msa"], "--quiet"]
    cases = {
        ("--out", tmp_path / "file" / "y.csv"): f"--out {tmp_path / 'file' / 'y.csv'}: cannot write there",
        ("--html", tmp_path / "g.txt"): f"--html {tmp_path / 'g.txt'}: expected a .html or .htm file",
        (
            "--class-map",
            tmp_path / "m.png",
        ): f"--class-map {tmp_path / 'm.png'}: expected a .tif or .tiff file",
    }
    for (option, value), message in cases.items():
        args = [*base, option, value] + ([] if option == "--out" else ["--out", tmp_path / "y.csv"])
        code, _, err = run_cli(args, capsys)
        assert code == 2 and err.strip().startswith(f"error: {message}"), err
    assert sorted(os.listdir(tmp_path)) == ["file", "tiles"]  # nothing written, no .part


def test_resume_of_a_finished_output_has_nothing_left_to_do(bundles, class_file, tmp_path, capsys):
    tiles = tmp_path / "tiles"
    save(tiles / "a.png", solid("red", 24))
    args = [tiles, "--classes", class_file, "--model", bundles["msa"], "--out", tmp_path / "y.csv", "--quiet"]
    assert run_cli(args, capsys)[0] == 0
    code, _, err = run_cli([*args, "--resume"], capsys)
    assert (
        code == 0
        and err.strip() == f"rsz-infer: {tmp_path / 'y.csv'} is already complete; nothing left to do"
    )


def test_nothing_labeled_exits_2_and_says_so(bundles, class_file, tmp_path, capsys):
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    (tiles / "empty.png").write_bytes(b"")
    save(tiles / "tiny.png", solid("red", 4))
    args = [tiles, "--classes", class_file, "--model", bundles["msa"], "--out", tmp_path / "y.csv", "--quiet"]
    code, _, err = run_cli(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and "0 tiles labeled, 2 skipped" in lines[-2]
    assert lines[-1] == "error: nothing was labeled: every tile was skipped (reasons in y.csv.errors.csv)"
    code, _, err = run_cli(
        ["index", tiles, "--model", bundles["msa"], "--out", tmp_path / "idx", "--quiet"], capsys
    )
    assert code == 2 and err.strip().splitlines()[-1] == "error: nothing was indexed: every tile was skipped"


def test_startup_and_steady_state_are_reported_apart(bundles, class_file, mixed, tmp_path):
    summary = label_tiles(
        LabelConfig([str(mixed)], class_file, tmp_path / "l.csv", bundles["msa"], progress=False, batch=2)
    )
    assert summary.startup_seconds > 0 and summary.loop_seconds > 0
    assert summary.seconds >= summary.startup_seconds + summary.loop_seconds
    rate = summary.labeled / summary.loop_seconds
    line = summary.line(tmp_path / "l.csv")
    assert (
        f"start-up {summary.startup_seconds:.1f} s, {summary.loop_seconds:.1f} s at {rate:.1f} tiles/s"
        in line
    )
