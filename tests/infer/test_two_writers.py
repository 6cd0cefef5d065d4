"""Two writers, stale state and full disks: one writer per --out or index (a clear line for the second),
a torn or NUL-filled last log line is dropped on resume, --resume with other inputs refuses, outputs never
overwrite inputs, a full disk names the file and leaves no temporary file, an index swap never leaves no
index."""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import signal
import subprocess
import sys

import pytest

from rsz_infer.index import Index, IndexConfig, build_index
from rsz_infer.pipeline import LabelConfig, label_tiles

from .helpers import bands_first, save, solid, write_colour_tiles, write_geotiff, write_multi_page_tiff
from .test_hostile_bundles_and_indexes import error_lines
from .test_label import run_cli

HOLD_LOCK = (
    "import sys\n"
    "from rsz_infer.locking import OutputLock\n"
    "lock = OutputLock(sys.argv[1])\n"
    "print('held', flush=True)\n"
    "sys.stdin.readline()\n"
)


@pytest.fixture()
def tiles(tmp_path):
    folder = tmp_path / "tiles"
    write_colour_tiles(folder, 6)
    return folder


def _rows(out):
    with open(out, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.DictReader(f))


class _Holder:
    """Another process holding the lock of `target`, as a second rsz-infer run would."""

    def __init__(self, target):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(target)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout.readline().strip() == "held"

    def release(self):
        self.proc.communicate("\n", timeout=30)


def test_second_labeling_run_on_one_out_is_one_line(bundles, class_file, tiles, tmp_path, capsys):
    out = tmp_path / "labels.csv"
    args = [tiles, "--classes", class_file, "--model", bundles["msa"], "--out", out, "--quiet"]
    holder = _Holder(out)
    try:
        code, _, err = run_cli(args, capsys)
    finally:
        holder.release()
    lines = error_lines(err)
    assert (
        code == 2 and len(lines) == 1 and "another rsz-infer labeling run is writing it right now" in lines[0]
    )
    assert (
        not out.exists() and not out.with_name("labels.csv.part").exists()
    )  # the other run's files untouched
    code, _, _ = run_cli(args, capsys)  # once the lock is free the run goes through, and leaves no lock file
    assert (
        code == 0
        and len(_rows(out)) == 6
        and sorted(os.listdir(tmp_path)) == ["labels.csv", "labels.csv.run.json", "tiles"]
    )


def test_second_index_append_is_one_line_and_loses_nothing(bundles, tiles, tmp_path, capsys):
    idx = tmp_path / "idx"
    build_index(IndexConfig([str(tiles)], bundles["msa"], idx, progress=False))
    more = tmp_path / "more"
    save(more / "extra_red.png", solid("red", 24, seed=42))
    holder = _Holder(idx)
    try:
        code, _, err = run_cli(["index", more, "--model", bundles["msa"], "--out", idx, "--quiet"], capsys)
    finally:
        holder.release()
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "another rsz-infer index call is writing it" in lines[0]
    assert len(Index.load(idx).tiles) == 6
    code, _, _ = run_cli(["index", more, "--model", bundles["msa"], "--out", idx, "--quiet"], capsys)
    assert code in (0, None) and len(Index.load(idx).tiles) == 7
    assert sorted(os.listdir(tmp_path)) == ["idx", "more", "tiles"]  # no lock, no old or temporary folders


def test_a_run_that_fails_before_writing_leaves_no_new_folder(bundles, class_file, tiles, tmp_path, capsys):
    """The lock beside --out makes its folder; a run that then fails (here: --backend trt, the toy bundle
    has no engines) removes it again, a folder that was there stays, and a run that writes keeps its own."""
    label = [tiles, "--classes", class_file, "--model", bundles["msa"], "--quiet", "--out"]
    index = ["index", tiles, "--model", bundles["msa"], "--quiet", "--out"]
    for args in ([*label, tmp_path / "new" / "sub" / "labels.csv"], [*index, tmp_path / "new" / "idx"]):
        code, _, err = run_cli([*args, "--backend", "trt"], capsys)
        # the image or the text graph's line: the two runners open at once
        assert code == 2 and "no TensorRT engine for the" in error_lines(err)[0]
        assert sorted(os.listdir(tmp_path)) == ["tiles"]
    (tmp_path / "there").mkdir()
    code, _, _ = run_cli([*label, tmp_path / "there" / "labels.csv", "--backend", "trt"], capsys)
    assert code == 2 and os.listdir(tmp_path / "there") == []
    code, _, _ = run_cli([*label, tmp_path / "new" / "labels.csv"], capsys)
    assert code == 0 and sorted(os.listdir(tmp_path / "new")) == ["labels.csv", "labels.csv.run.json"]


def _interrupted_run(bundles, class_file, tiles, out):
    def interrupt(n):
        if n == 1:
            raise KeyboardInterrupt

    cfg = LabelConfig([str(tiles)], class_file, out, bundles["msa"], batch=2, progress=False)
    with pytest.raises(KeyboardInterrupt):
        label_tiles(cfg, on_batch=interrupt)
    return out.with_name(out.name + ".part")


@pytest.mark.parametrize(
    "damage", [b"\x00" * 64 + b"\n", b'{"tile": "half a rec', b"\x00" * 40, b'{"tile": "\xff\xfe"}\n']
)
def test_torn_or_nul_filled_last_line_is_dropped_on_resume(
    damage, bundles, class_file, tiles, tmp_path, capsys
):
    out = tmp_path / "labels.csv"
    part = _interrupted_run(bundles, class_file, tiles, out)
    with open(part, "ab") as f:
        f.write(damage)
    args = [tiles, "--classes", class_file, "--model", bundles["msa"], "--out", out, "--quiet", "--resume"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    rows = _rows(out)
    assert len(rows) == 6 and len({r["tile"] for r in rows}) == 6  # no good tile lost, none twice
    assert not part.exists()


def test_resume_with_other_inputs_refuses_naming_them(bundles, class_file, tiles, tmp_path, capsys):
    out = tmp_path / "labels.csv"
    part = _interrupted_run(bundles, class_file, tiles, out)
    before = part.read_bytes()
    other = tmp_path / "other"
    save(other / "x_red.png", solid("red", 24))
    args = [other, "--classes", class_file, "--model", bundles["msa"], "--out", out, "--quiet", "--resume"]
    code, _, err = run_cli(args, capsys)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1
    assert "started with other inputs" in lines[0] and str(tiles) in lines[0] and str(other) in lines[0]
    assert part.read_bytes() == before  # still resumable with the right inputs
    code, _, _ = run_cli([tiles, *args[1:]], capsys)
    assert code == 0 and len(_rows(out)) == 6


def test_outputs_never_overwrite_an_input(bundles, class_file, tmp_path, capsys):
    scene = write_geotiff(tmp_path / "scene.tif", bands_first(solid("red", 64)))
    before = scene.read_bytes()
    args = [scene, "--classes", class_file, "--model", bundles["msa"], "--out", tmp_path / "l.csv", "--quiet"]
    code, _, err = run_cli(args + ["--tile-size", 32, "--class-map", scene], capsys)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "--class-map" in lines[0] and "is one of the inputs" in lines[0]
    assert scene.read_bytes() == before and not (tmp_path / "l.csv").exists()
    code, _, err = run_cli(args + ["--html", scene], capsys)
    assert code == 2 and len(error_lines(err)) == 1 and scene.read_bytes() == before


def test_index_never_replaces_a_folder_or_file_that_is_no_index(bundles, tiles, tmp_path, capsys):
    """Writing an index swaps a new folder in and deletes the old one: `--out` naming the tiles' own folder
    (or a file) would delete them, so it is refused before anything is embedded."""
    before = sorted(p.name for p in tiles.iterdir())
    code, _, err = run_cli(["index", tiles, "--model", bundles["msa"], "--out", tiles, "--quiet"], capsys)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and f"--out {tiles}: holds files that are not an index's" in lines[0]
    assert sorted(p.name for p in tiles.iterdir()) == before
    # an empty folder and an index folder are written as before
    idx = tmp_path / "idx"
    idx.mkdir()
    build_index(IndexConfig([str(tiles)], bundles["msa"], idx, progress=False))
    assert build_index(IndexConfig([str(tiles)], bundles["msa"], idx, progress=False)).known == 6
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    for command in (["index", tiles, "--model", bundles["msa"], "--out", notes], ["merge", notes, idx]):
        code, _, err = run_cli(command, capsys)
        lines = error_lines(err)
        assert code == 2 and len(lines) == 1 and str(notes) in lines[0] and "Errno" not in lines[0], err
        assert notes.read_text() == "mine\n"


def test_class_maps_and_quicklooks_never_overwrite_an_input(bundles, class_file, tmp_path, capsys):
    """Each scene's map (map.<scene>.tif) and each quicklook (.png) is checked, not only --class-map: a
    tile named like a quicklook, and a rerun over a folder that holds the first run's maps."""
    scenes = tmp_path / "scenes"
    for name in ("a", "b"):
        write_geotiff(scenes / f"{name}.tif", bands_first(solid("red", 64, seed=ord(name))))
    tile = save(tmp_path / "map.png", solid("green", 24))
    before = tile.read_bytes()
    base = ["--classes", class_file, "--model", bundles["msa"], "--tile-size", 32, "--quiet"]
    args = [scenes / "a.tif", tile, *base, "--out", tmp_path / "l.csv", "--class-map", tmp_path / "map.tif"]
    code, _, err = run_cli(args, capsys)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and f"would overwrite {tile}, one of the inputs" in lines[0], lines
    assert tile.read_bytes() == before and not (tmp_path / "l.csv").exists()

    args = [scenes, *base, "--out", tmp_path / "l2.csv", "--class-map", scenes / "map.tif"]
    code, _, err = run_cli(args, capsys)
    assert code == 0 and (scenes / "map.a.tif").exists() and (scenes / "map.b.png").exists(), err
    maps = {p: p.read_bytes() for p in scenes.glob("map.*")}
    code, _, err = run_cli(args, capsys)  # the first run's maps are now inputs (scenes) of this one
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "would overwrite" in lines[0] and "one of the inputs" in lines[0]
    assert {p: p.read_bytes() for p in scenes.glob("map.*")} == maps


def test_outputs_never_overwrite_the_file_of_a_page_named_as_input(bundles, class_file, tmp_path, capsys):
    """GTIFF_DIR:2:scan.tif reads scan.tif: a class map (or a scene's map) named scan.tif would replace it."""
    stack = write_multi_page_tiff(tmp_path / "stack.tif", [solid("green", 24), solid("red", 64)])
    before = stack.read_bytes()
    base = ["--classes", class_file, "--model", bundles["msa"], "--tile-size", 32, "--quiet"]
    code, _, err = run_cli(
        [f"GTIFF_DIR:2:{stack}", *base, "--out", tmp_path / "l.csv", "--class-map", stack], capsys
    )
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "--class-map" in lines[0] and "is one of the inputs" in lines[0]
    scene = write_geotiff(tmp_path / "a.tif", bands_first(solid("blue", 64)))
    named_like_a_map = write_multi_page_tiff(tmp_path / "map.a.tif", [solid("green", 24), solid("red", 64)])
    page = f"GTIFF_DIR:2:{named_like_a_map}"
    code, _, err = run_cli(
        [scene, page, *base, "--out", tmp_path / "l.csv", "--class-map", tmp_path / "map.tif"], capsys
    )
    lines = error_lines(err)
    assert (
        code == 2 and len(lines) == 1 and f"would overwrite {named_like_a_map}, one of the inputs" in lines[0]
    )
    assert stack.read_bytes() == before and not (tmp_path / "l.csv").exists()


FULL_DISK = (
    "import resource, signal, sys\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), as if disk full\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))\n"
    "from rsz_infer.cli import main\n"
    "main(sys.argv[2:])\n"
)


def test_full_disk_names_the_file_and_leaves_no_temporary(bundles, class_file, tiles, tmp_path):
    out, page = tmp_path / "labels.csv", tmp_path / "gallery.html"
    args = [
        tiles,
        "--classes",
        class_file,
        "--model",
        bundles["msa"],
        "--out",
        out,
        "--html",
        page,
        "--quiet",
    ]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(
        [sys.executable, "-c", FULL_DISK, "6000", *map(str, args)], capture_output=True, text=True, env=env
    )
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {page}: cannot write it (File too large)")
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]  # no hidden half-written file
    assert len(_rows(out)) == 6  # the labels finished before the gallery are complete


def test_a_stop_mid_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    """Ctrl-C (or SIGTERM, which rsz turns into it) while atomic_write flushes: the old file stays whole and
    no hidden .NAME.PID.tmp is left beside it (a later run would never remove it)."""
    from rsz_infer.outputs import atomic_write

    target = tmp_path / "labels.csv"
    target.write_text("old\n", encoding="utf-8")

    def stopped(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", stopped)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, "new\n")
    assert sorted(os.listdir(tmp_path)) == ["labels.csv"] and target.read_text(encoding="utf-8") == "old\n"


def test_what_a_killed_index_call_left_beside_the_index_is_removed_by_the_next(bundles, tiles, tmp_path):
    """kill -9 while an index call writes its new folder leaves `.idx.PID.tmp` (as large as the index), and
    one between the fallback swap's last rename and its cleanup leaves `.idx.PID.old`: another PID's, never
    removed by a later call until now. Names that are not rsz's own stay."""
    idx = tmp_path / "idx"
    build_index(IndexConfig([str(tiles)], bundles["msa"], idx, progress=False))
    for name in (".idx.4242.tmp", ".idx.4243.old", ".idx.mine.tmp", ".idx2.4244.tmp"):
        shutil.copytree(idx, tmp_path / name)  # half-written or old index folders of dead calls
    more = tmp_path / "more"
    save(more / "extra_red.png", solid("red", 24, seed=42))
    build_index(IndexConfig([str(more)], bundles["msa"], idx, progress=False))
    assert len(Index.load(idx).tiles) == 7
    assert sorted(os.listdir(tmp_path)) == [".idx.mine.tmp", ".idx2.4244.tmp", "idx", "more", "tiles"]


def test_an_interrupted_index_swap_leaves_an_index(bundles, tiles, tmp_path):
    idx = tmp_path / "idx"
    build_index(IndexConfig([str(tiles)], bundles["msa"], idx, progress=False))
    os.replace(idx, tmp_path / ".idx.4242.old")  # where a kill between the fallback's two renames leaves it
    assert len(Index.load(idx).tiles) == 6 and idx.is_dir()


_ = (resource, signal)


def test_resume_with_another_decoding_refuses_naming_it(bundles, class_file, tiles, tmp_path, capsys):
    """pillow-draft gives other pixels than a full decode: a log of one never continues with the other."""
    out = tmp_path / "labels.csv"
    part = _interrupted_run(bundles, class_file, tiles, out)
    header = json.loads(part.read_text(encoding="utf-8").splitlines()[0])["run"]
    assert header["precision"] == "fp32" and "decoder" not in header  # the precision that ran is logged too
    args = [tiles, "--classes", class_file, "--model", bundles["msa"], "--out", out, "--quiet", "--resume"]
    code, _, err = run_cli([*args, "--decoder", "pillow-draft"], capsys)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "differs: decoder" in lines[0], lines
    assert part.exists()
    code, _, _ = run_cli([*args, "--decoder", "pillow"], capsys)  # a full-decode path: the same pixels
    assert code == 0 and len(_rows(out)) == 6


def test_resume_with_another_shard_refuses(bundles, class_file, tiles, tmp_path, capsys):
    # the run log of shard 0/2 resumed as shard 1/2 wrote shard 0's finished rows and all of shard 1's into
    # one output; now refused, and the log stays resumable as the shard it was
    from rsz_infer.cluster import in_shard

    out = tmp_path / "labels.csv"
    cfg = LabelConfig([str(tiles)], class_file, out, bundles["msa"], batch=1, progress=False, shard=(0, 2))

    def interrupt(n):
        if n == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        label_tiles(cfg, on_batch=interrupt)
    part = out.with_name(out.name + ".part")
    before = part.read_bytes()
    args = [tiles, "--classes", class_file, "--model", bundles["msa"], "--out", out, "--quiet", "--resume"]
    for other in (["--shard", "1/2"], []):
        code, _, err = run_cli([*args, *other], capsys)
        lines = error_lines(err)
        assert code == 2 and len(lines) == 1 and "(differs: --shard)" in lines[0], err
        assert part.read_bytes() == before
    code, _, err = run_cli([*args, "--shard", "0/2"], capsys)
    rows = _rows(out)
    assert code == 0 and rows and all(in_shard(r["tile"], (0, 2)) for r in rows), err
    code, _, err = run_cli([*args, "--shard", "1/2"], capsys)  # finished: what it was made with is kept
    assert code == 2 and "already complete" in err and "(differs: --shard)" in err
