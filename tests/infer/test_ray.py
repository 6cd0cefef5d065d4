"""--ray on a local Ray cluster (2 CPUs, one cluster for the module): the same labels and index embeddings as
the single-process path on the same tiles (bad files and a GeoTIFF scene with an all-nodata window
included), and a stopped job that a resumed one finishes, partition by partition."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rsz_infer.cli import main
from rsz_infer.cluster import PART_GLOB, RayOptions, build_index_ray, label_tiles_ray, parts_folder
from rsz_infer.errors import RszError
from rsz_infer.images import TileOptions
from rsz_infer.index import Index, IndexConfig, build_index
from rsz_infer.pipeline import LabelConfig, label_tiles

from .helpers import COLOURS, bands_first, read_jsonl, save, solid, write_colour_tiles, write_geotiff

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("ray_tiles")
    write_colour_tiles(folder, 6)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg" * 20)
    (folder / "empty.png").write_bytes(b"")
    # a 64 x 96 scene: 2 x 3 windows of 32 px, red / green / blue columns, the last window nodata
    scene = np.zeros((64, 96, 3), np.uint8)
    for c, colour in enumerate(COLOURS):
        scene[:, 32 * c : 32 * (c + 1)] = solid(colour, 32, seed=c)[0, 0]
    data = bands_first(scene)
    data[:, 32:, 64:] = 0
    write_geotiff(folder / "scene.tif", data, nodata=0)
    return [str(folder)]


def _by_tile(records: list[dict]) -> dict[str, dict]:
    return {r["tile"]: r for r in records}


def _same_labels(got: dict[str, dict], want: dict[str, dict]) -> None:
    assert set(got) == set(want)
    rounded = ("scores", "similarities")  # written to 6 decimals: a batch's float rounding can flip the last
    for tile, record in want.items():
        # every other field (labels, rule, window, geometry...) equal
        assert {k: v for k, v in got[tile].items() if k not in rounded} == {
            k: v for k, v in record.items() if k not in rounded
        }, tile
        for key in rounded:
            assert (key in got[tile]) == (key in record), (tile, key)
            if key in record:
                np.testing.assert_allclose(got[tile][key], record[key], atol=2e-6, err_msg=f"{tile} {key}")


def test_stopped_then_resumed_ray_job_labels_like_one_process(
    ray_cluster, bundles, class_file, inputs, tmp_path, capsys
):
    tiles = TileOptions(tile_size=32)

    def config(out):
        return LabelConfig(
            inputs, class_file, out, bundles["dsva"], "ort", "cpu", tiles=tiles, progress=False
        )

    single = config(tmp_path / "single.jsonl")
    label_tiles(single)
    want = _by_tile(read_jsonl(single.out))
    assert len(want) == 11  # 6 files + 5 scene windows with data

    out = tmp_path / "ray.jsonl"
    stopped = label_tiles_ray(config(out), RayOptions(actors=1, partition_tiles=5, max_partitions=1))
    parts = parts_folder(out)
    assert not out.exists() and len(list(parts.glob(PART_GLOB))) == 1  # a job killed after one partition
    assert stopped.labeled + stopped.skipped + stopped.nodata == 5
    resumed_cfg = config(out)
    resumed_cfg.resume = True
    # --resume without --ray started over beside the partitions, without a word
    with pytest.raises(
        RszError, match=r"ray.jsonl: a stopped run made with --ray \(ray.jsonl.parts/ keeps its "
    ):
        label_tiles(resumed_cfg)
    resumed = label_tiles_ray(resumed_cfg, RayOptions(actors=2, partition_tiles=5))
    assert resumed.already_done == 5 and resumed.labeled + resumed.skipped + resumed.nodata == 14 - 5
    assert not parts.exists() and resumed.exit_code == 3
    label = ["label", *inputs, "--classes", class_file, "--model", bundles["dsva"], "--tile-size", "32"]
    _resume_the_other_way_is_refused_by_its_reason(
        config, out, single.out, [*label, "--device", "cpu"], capsys
    )
    _same_labels(_by_tile(read_jsonl(out)), want)
    errors = (tmp_path / "ray.jsonl.errors.csv").read_text().splitlines()
    assert sorted(errors) == sorted((tmp_path / "single.jsonl.errors.csv").read_text().splitlines())
    assert len(errors) == 3  # header, corrupt.jpg, empty.png (the nodata window is no error)


def _resume_the_other_way_is_refused_by_its_reason(
    config, ray_out: Path, single_out: Path, label: list, capsys
) -> None:
    """--resume with --ray added or removed was refused as "made with another model, class file or settings
    (differs: inputs, precision, seen_calibration, tile options)": the headers of the two paths differ in
    form. Now the line says which way the output was made and how to go on."""
    capsys.readouterr()  # what the runs before said
    with pytest.raises(SystemExit) as exit_info:  # the CLI: exit 2, one line
        main([str(a) for a in [*label, "--out", single_out, "--resume", "--ray"]])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err, err
    assert err.endswith(
        "single.jsonl: already complete, made without --ray; --resume it without --ray, or rerun without "
        "--resume to start over"
    ), err
    resumed = config(ray_out)
    resumed.resume = True
    with pytest.raises(
        RszError, match=r"ray.jsonl: already complete, made with --ray; --resume it with --ray"
    ):
        label_tiles(resumed)
    # a single-process run interrupted after its first batch, resumed with --ray
    cut = config(single_out.with_name("cut.jsonl"))
    cut.batch = 2

    def interrupt(batches: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        label_tiles(cut, on_batch=interrupt)
    cut.resume = True
    with pytest.raises(
        RszError,
        match=r"cut.jsonl: an interrupted run made without --ray \(cut.jsonl.part keeps its progress\)",
    ):
        label_tiles_ray(cut, RayOptions(actors=1, partition_tiles=5))
    finished = label_tiles(cut)  # it resumes without --ray
    assert finished.already_done > 0 and finished.already_done + finished.labeled + finished.nodata == 14


def test_ray_index_cli_gives_the_single_process_embeddings(ray_cluster, bundles, inputs, tmp_path, capsys):
    single = tmp_path / "single_idx"
    build_index(
        IndexConfig(inputs, bundles["msa"], single, TileOptions(tile_size=32), device="cpu", progress=False)
    )
    args = ["index", *inputs, "--model", bundles["msa"], "--out", tmp_path / "ray_idx", "--tile-size", "32"]
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                str(a)
                for a in [
                    *args,
                    "--device",
                    "cpu",
                    "--ray",
                    "--ray-actors",
                    "2",
                    "--ray-partition-tiles",
                    "4",
                ]
            ]
        )
    assert exit_info.value.code == 3, capsys.readouterr().err  # two bad files skipped
    want, got = Index.open(single), Index.open(tmp_path / "ray_idx")
    rows = {t["tile"]: i for i, t in enumerate(got.tiles)}
    order = [rows[t["tile"]] for t in want.tiles]
    assert sorted(rows) == sorted(t["tile"] for t in want.tiles) and len(rows) == 11
    np.testing.assert_allclose(got.embeddings[order], want.embeddings, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got.scales)[order], np.asarray(want.scales), atol=1e-6)
    assert [got.tiles[i] for i in order] == want.tiles  # the same rows (footprints, sha256 ...)
    # the skipped files are listed as the single process lists them (the nodata window is no error)
    errors = (tmp_path / "ray_idx.errors.csv").read_text().splitlines()
    assert sorted(errors) == sorted((tmp_path / "single_idx.errors.csv").read_text().splitlines())
    listed = f"(skipped tiles in {tmp_path / 'ray_idx.errors.csv'})"  # the path as given
    err = capsys.readouterr().err
    assert len(errors) == 3 and listed in err
    assert "11 tiles added, 0 already in, 2 skipped, 1 nodata, index now holds 11 tiles," in err, err
    # a later call over one of those files: that file, not the whole index, is "already in"
    one = Path(inputs[0]) / "t0_red.png"
    again = ["index", one, *args[2:], "--device", "cpu", "--ray", "--ray-actors", "1"]
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in again])
    err = capsys.readouterr().err
    assert exit_info.value.code == 0, err
    assert "0 tiles added, 1 already in, 0 skipped, 0 nodata, index now holds 11 tiles," in err, err


def test_a_suffix_less_ray_out_lists_its_skipped_tiles_as_the_plain_path_does(
    ray_cluster, bundles, class_file, inputs, tmp_path
):
    """--out labels (the partition folder is the output): the bad tiles in labels.errors.csv beside it, as
    the plain path writes `<out>.errors.csv` (it wrote none)."""
    out = tmp_path / "labels"
    config = LabelConfig(inputs, class_file, out, bundles["dsva"], "ort", "cpu", progress=False)
    summary = label_tiles_ray(config, RayOptions(partition_tiles=20))
    assert summary.exit_code == 3 and out.is_dir()
    errors = (tmp_path / "labels.errors.csv").read_text().splitlines()
    assert errors[0] == "tile,reason" and summary.total_errors == 2
    assert sorted(line.split(",")[0] for line in errors[1:]) == [
        str(Path(inputs[0]) / name) for name in ("corrupt.jpg", "empty.png")
    ]


def test_ray_append_embeds_changed_tiles_again_and_removes_gone_ones(ray_cluster, bundles, tmp_path):
    """--ray brings an index up to date as the single process does (test_retrieval has the details)."""
    a, b = tmp_path / "a", tmp_path / "b"
    for i, colour in enumerate(["red", "green", "blue"]):
        save(a / f"{i}.png", solid(colour, 24, seed=i))
    save(b / "other.png", solid("green", 24, seed=7))
    idx = tmp_path / "idx"
    build_index(IndexConfig([str(a), str(b)], bundles["msa"], idx, device="cpu", progress=False))
    save(a / "0.png", solid("blue", 24, seed=3))
    (a / "1.png").unlink()
    cfg = IndexConfig([str(a)], bundles["msa"], idx, device="cpu", progress=False)
    summary = build_index_ray(cfg, RayOptions())
    assert (summary.added, summary.reembedded, summary.removed, summary.known) == (0, 1, 1, 1)
    got = Index.open(idx)
    assert sorted(t["tile"] for t in got.tiles) == sorted(
        str(p) for p in (a / "0.png", a / "2.png", b / "other.png")
    )
    single = tmp_path / "single"
    build_index(IndexConfig([str(a / "0.png")], bundles["msa"], single, device="cpu", progress=False))
    row = [t["tile"] for t in got.tiles].index(str(a / "0.png"))
    np.testing.assert_allclose(got.embeddings[row], Index.open(single).embeddings[0], atol=1e-6)


def test_without_ray_the_option_says_what_to_install(bundles, class_file, tmp_path):
    code = "import sys; sys.modules['ray'] = None\nfrom rsz_infer.cli import main; main(sys.argv[1:])"
    args = [str(tmp_path), "--classes", str(class_file), "--model", str(bundles["dsva"]), "--ray"]
    save(tmp_path / "red.png", solid("red"))
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        "error: --ray: Ray is not installed (pip install 'rsz[ray]' (Ray Data; no PyTorch))"
    )


def test_a_ray_address_that_is_an_input_is_refused(class_file, tmp_path, capsys):
    # `--ray tiles/` took the tiles as the address: said in one line, before anything starts
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--classes", str(class_file), "--ray", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err == [
        f"error: --ray {tmp_path}: looks like an input, not a Ray address; put --ray after the tiles"
    ]


def test_an_out_folder_with_other_files_is_refused_not_replaced(
    ray_cluster, bundles, class_file, inputs, tmp_path
):
    # an --out without a suffix is the partition folder: a folder of the user's (here the tiles' own
    # folder, and one with a note in it) must be refused, never replaced by the partitions
    from rsz_infer.errors import RszError

    notes = tmp_path / "results"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine", encoding="utf-8")
    for out in (notes, inputs[0]):
        before = sorted(p.name for p in Path(out).iterdir())
        cfg = LabelConfig(inputs, class_file, Path(out), bundles["dsva"], "ort", "cpu", progress=False)
        with pytest.raises(RszError, match="holds other files than rsz-infer --ray partitions"):
            label_tiles_ray(cfg, RayOptions(partition_tiles=5))
        assert sorted(p.name for p in Path(out).iterdir()) == before
    # a partition folder of an earlier job is still replaced by a new one
    out = tmp_path / "parts_out"
    cfg = LabelConfig(inputs, class_file, out, bundles["dsva"], "ort", "cpu", progress=False)
    label_tiles_ray(cfg, RayOptions(partition_tiles=5, max_partitions=1))
    again = label_tiles_ray(cfg, RayOptions(partition_tiles=5))
    assert (again.labeled, again.skipped, again.already_done) == (7, 2, 0)  # 6 files + the scene; 2 bad


def test_a_bad_batch_or_top_k_leaves_no_partition_folder(ray_cluster, bundles, class_file, inputs, tmp_path):
    # refused before anything is written, as without --ray (the actors used to refuse it, after the
    # partition folder beside --out, or beside the index, was made)
    from rsz_infer.errors import RszError

    out = tmp_path / "labels.jsonl"
    for batch, top_k in ((0, 5), (32, 0)):
        cfg = LabelConfig(inputs, class_file, out, bundles["dsva"], "ort", "cpu", batch=batch, top_k=top_k)
        with pytest.raises(RszError, match="must be at least 1"):
            label_tiles_ray(cfg, RayOptions())
    idx = IndexConfig(inputs, bundles["msa"], tmp_path / "idx", device="cpu", batch=0, progress=False)
    with pytest.raises(RszError, match="--batch 0: must be at least 1"):
        build_index_ray(idx, RayOptions())
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_pillow_draft_with_ray_decodes_as_one_process_does(ray_cluster, bundles, class_file, tmp_path):
    # `--decoder pillow-draft` is recorded in the run log's header; the decode tasks used to decode the
    # JPEGs whole all the same, so the rows said pillow-draft and held full decodes
    from PIL import Image

    folder = tmp_path / "jpegs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # 8x the model input: pillow-draft decodes these at 1/8 scale
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")

    def labels(out, decoder, ray_job=False):
        cfg = LabelConfig([folder], class_file, out, bundles["dsva"], "ort", "cpu", progress=False)
        cfg.decoder, cfg.precision = decoder, "fp32"
        summary = label_tiles_ray(cfg, RayOptions(partition_tiles=2)) if ray_job else label_tiles(cfg)
        return summary, _by_tile(read_jsonl(out))

    _, draft = labels(tmp_path / "draft.jsonl", "pillow-draft")
    assert {r["rule"] for r in draft.values()} == {"rgb; JPEG decoded at 1/8 scale"}
    summary, got = labels(tmp_path / "ray.jsonl", "pillow-draft", ray_job=True)
    _same_labels(got, draft)
    assert "decode ray tasks (rasterio/pillow-draft)" in summary.decode


def test_a_class_map_with_a_folder_out_is_refused(ray_cluster, bundles, class_file, inputs, tmp_path):
    # an --out without a suffix keeps the partitions and merges nothing: the class map used to be left out
    # without a word (exit 0, no map)
    from rsz_infer.errors import RszError

    cfg = LabelConfig(inputs, class_file, tmp_path / "parts", bundles["dsva"], "ort", "cpu", progress=False)
    cfg.tiles, cfg.class_map = TileOptions(tile_size=32), tmp_path / "map.tif"
    with pytest.raises(RszError, match="--class-map .*map.tif: with --ray, --out must be a labels file"):
        label_tiles_ray(cfg, RayOptions(partition_tiles=5))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_fresh_run_removes_what_a_stopped_run_of_the_other_path_left(
    ray_cluster, bundles, class_file, tmp_path, capsys
):
    """A stopped --ray job's labels.jsonl.parts/ stayed for ever after a fresh run of the same --out without
    --ray (and an interrupted plain run's labels.jsonl.part after a fresh --ray run): nothing removed it,
    and only a --resume of that path read it, to overwrite the new labels with the older run's. Now the
    fresh run removes it once its own output is written, in a one-line note."""
    from dataclasses import replace

    from rsz_infer.outputs import part_path

    write_colour_tiles(tmp_path / "tiles", 2)
    out = tmp_path / "labels.jsonl"
    tiles = [str(tmp_path / "tiles")]
    cfg = LabelConfig(tiles, class_file, out, bundles["dsva"], "ort", "cpu", progress=False)
    label_tiles_ray(cfg, RayOptions(actors=1, partition_tiles=1, max_partitions=1))
    parts, log = parts_folder(out), part_path(out)
    assert parts.is_dir() and not out.exists()
    capsys.readouterr()
    label_tiles(cfg)
    assert out.is_file() and not parts.exists() and not log.exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"{out}: removed labels.jsonl.parts/, the partitions of a stopped run made with --ray, which this "
        "run replaces"
    )

    def interrupt(batches: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        label_tiles(replace(cfg, batch=1), on_batch=interrupt)
    assert log.is_file()
    capsys.readouterr()
    label_tiles_ray(cfg, RayOptions(actors=1, partition_tiles=20))
    assert out.is_file() and not parts.exists() and not log.exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"{out}: removed labels.jsonl.part, the progress of an interrupted run made without --ray, which "
        "this run replaces"
    )
