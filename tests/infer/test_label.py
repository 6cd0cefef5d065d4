"""Labeling runs end to end: bad inputs, exit codes, one-line errors, calibrated stacking, the three class
embedding rules, resume after a kill or Ctrl-C, atomic outputs, backends, fixed-shape batches."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rsz_infer.backend import open_runner
from rsz_infer.batching import embed_batch, iter_batches
from rsz_infer.bundle import load_manifest
from rsz_infer.class_embeddings import class_embeddings
from rsz_infer.classfile import read_class_file
from rsz_infer.cli import main
from rsz_infer.errors import RszError
from rsz_infer.images import TileOptions, discover_tiles
from rsz_infer.pipeline import LabelConfig, label_tiles

from .helpers import COLOURS, read_jsonl, save, solid


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def many_tiles(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("many")
    for i in range(9):
        save(folder / f"t{i}_{list(COLOURS)[i % 3]}.png", solid(list(COLOURS)[i % 3], 24, seed=i))
    return folder


def test_bad_files_are_skipped_with_rows_and_good_ones_labeled(bundles, class_file, tmp_path, capsys):
    folder = tmp_path / "tiles"
    save(folder / "good_red.png", solid("red"))
    save(folder / "good_blue.jpg", solid("blue"))
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 20)
    full = (folder / "good_red.png").read_bytes()
    (folder / "truncated.png").write_bytes(full[: len(full) // 2])
    (folder / "empty.png").write_bytes(b"")
    save(folder / "tiny.png", solid("red", 4))
    (folder / "readme.txt").write_text("ignored")
    out = tmp_path / "labels.csv"
    gallery = tmp_path / "gallery.html"
    args = [
        folder,
        "--classes",
        class_file,
        "--model",
        bundles["msa"],
        "--out",
        out,
        "--html",
        gallery,
        "--quiet",
    ]
    code, _, err = run_cli(args, capsys)
    assert code == 3
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert {Path(r["tile"]).name: r["label_1"] for r in rows} == {
        "good_red.png": "red",
        "good_blue.jpg": "blue",
    }
    assert list(rows[0])[:5] == ["tile", "path", "window", "label_1", "score_1"] and "rule" in rows[0]
    with open(tmp_path / "labels.csv.errors.csv", newline="") as f:
        errors = {Path(r["tile"]).name: r["reason"] for r in csv.DictReader(f)}
    assert set(errors) == {"corrupt.jpg", "truncated.png", "empty.png", "tiny.png"}
    assert "0 bytes" in errors["empty.png"] and "4x4 px" in errors["tiny.png"]
    assert "cannot decode" in errors["corrupt.jpg"] and "cannot decode" in errors["truncated.png"]
    skip_lines = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert len(skip_lines) == 4 and "readme.txt" not in err
    assert "2 tiles labeled, 4 skipped" in err.splitlines()[-2]
    assert (
        gallery.read_text().count('src="data:image/jpeg;base64,') == 2 and "red 1.00" in gallery.read_text()
    )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["gallery.html", "labels.csv", "labels.csv.errors.csv", "labels.csv.run.json", "tiles"]


def test_bad_usage_is_one_clear_line(bundles, class_file, tmp_path, capsys, monkeypatch):
    tile = save(tmp_path / "red.png", solid("red"))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    dup = tmp_path / "dup.txt"
    dup.write_text("red\nRed: again\n")
    tampered = tmp_path / "tampered"
    shutil.copytree(bundles["msa"], tampered)
    with open(tampered / "text.onnx", "ab") as f:
        f.write(b"\0")
    model = ["--model", bundles["msa"]]
    plain = [tile, "--classes", class_file, *model]
    (tmp_path / "no_tiles").mkdir()
    cases = {
        "no classes found": [tile, "--classes", empty, *model],
        "duplicate class 'Red'": [tile, "--classes", dup, *model],
        "sha256 does not match": [tile, "--classes", class_file, "--model", tampered],
        "no such file or folder": [tmp_path / "missing", "--classes", class_file, *model],
        # a page of a missing TIFF is a typo as that TIFF is, not a skipped row with GDAL's words
        f"GTIFF_DIR:2:{tmp_path}/missing.tif: no such file or folder": [
            f"GTIFF_DIR:2:{tmp_path}/missing.tif",
            "--classes",
            class_file,
            *model,
        ],  # fmt: skip
        "no JPEG, PNG or TIFF files found": [tmp_path / "no_tiles", "--classes", class_file, *model],
        "unknown format '.xlsx'": [tile, "--classes", class_file, *model, "--out", tmp_path / "x.xlsx"],
        "needs a file name ending in one of .csv": [*plain, "--out", tmp_path / "no_tiles"],
        "--bands 0: give 3": [tile, "--classes", class_file, *model, "--bands", "0"],
        # NaN, an infinity or a number beyond float32 subtracted from seen logits made every score NaN
        "--seen-calibration nan: must be a finite": [*plain, "--seen-calibration", "nan"],
        "--seen-calibration 1e+300: must be": [*plain, "--seen-calibration", "1e300"],
        "README demo writes it": [tile, "--classes", class_file],
    }
    monkeypatch.chdir(tmp_path)  # no models/default here
    for expected, args in cases.items():
        code, _, err = run_cli([*args, "--quiet"], capsys)
        assert code == 2, expected
        assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert not list(tmp_path.glob("*.csv*"))


def test_calibrated_stacking_shifts_only_seen_classes(bundles, tmp_path):
    # the bundle's seen classes are "red" and "Forest": names match ignoring case
    classes = tmp_path / "mixed.txt"
    classes.write_text("red\ngreen\nblue\nforest: dark green woods\n")
    tile = save(tmp_path / "t.png", solid((120, 110, 90)))
    log_probs = {}
    for lam in (0.0, 3.0, None):
        out = tmp_path / f"lam{lam}.jsonl"
        cfg = LabelConfig(
            [str(tile)], classes, out, bundles["msa"], top_k=4, seen_calibration=lam, progress=False
        )
        label_tiles(cfg)
        (row,) = read_jsonl(out)
        log_probs[lam] = {name: np.log(p) for name, p in zip(row["labels"], row["scores"])}

    def relative(lam, name):
        return log_probs[lam][name] - log_probs[lam]["blue"]

    assert relative(3.0, "green") == pytest.approx(relative(0.0, "green"), abs=1e-3)  # unseen vs unseen
    assert relative(0.0, "red") - relative(3.0, "red") == pytest.approx(3.0, abs=0.02)
    assert relative(0.0, "forest") - relative(3.0, "forest") == pytest.approx(3.0, abs=0.02)
    assert relative(0.0, "red") - relative(None, "red") == pytest.approx(0.5, abs=0.01)  # bundle default


def test_a_trained_class_written_with_spaces_is_that_class(bundles, tmp_path):
    # "Dark Red" names the trained class dark_red, as rsz-train folds names: its training description,
    # calibrated stacking and scores are those of "dark_red"
    bundle = tmp_path / "dsva"
    shutil.copytree(bundles["dsva"], bundle)
    manifest = load_manifest(bundle)
    manifest.seen_classes, manifest.seen_descriptions = ["dark_red", "Forest"], {"dark_red": "green roofs"}
    (bundle / "manifest.json").write_text(manifest.to_json(), encoding="utf-8")
    tile = save(tmp_path / "t.png", solid((120, 110, 90)))
    rows = {}
    for name in ("dark_red", "Dark Red", "dark-red"):
        classes = tmp_path / "classes.txt"
        classes.write_text(f"{name}\ngreen: green fields\nblue: blue water\n")
        out = tmp_path / "labels.jsonl"
        label_tiles(LabelConfig([str(tile)], classes, out, bundle, top_k=3, progress=False))
        (row,) = read_jsonl(out)
        rows[name] = [row["scores"], row["similarities"]]
    assert rows["Dark Red"] == rows["dark_red"] == rows["dark-red"]


@pytest.mark.parametrize("kind", ["mcfa", "dsva"])
def test_semantic_and_attribute_class_embeddings(kind, bundles, class_file, many_tiles, tmp_path):
    out = tmp_path / "labels.jsonl"
    summary = label_tiles(LabelConfig([str(many_tiles)], class_file, out, bundles[kind], progress=False))
    assert summary.labeled == 9
    for row in read_jsonl(out):
        assert row["labels"][0] == Path(row["tile"]).stem.split("_")[1]


def test_class_embeddings_are_cached_by_content(bundles, tmp_path):
    bundle = bundles["msa"]
    manifest = load_manifest(bundle)
    classes = tmp_path / "c.txt"
    classes.write_text("red\ngreen   # comment\n")
    opened = []

    def opener(role):
        opened.append(role)
        return open_runner(bundle, manifest, role, "ort", "cpu")

    first = class_embeddings(bundle, manifest, read_class_file(classes), opener)
    classes.write_text("# same classes, other spacing\nred\ngreen\n")
    second = class_embeddings(bundle, manifest, read_class_file(classes), opener)
    assert opened == ["text"] and np.array_equal(first, second) and first.shape == (2, 16)


KILL_SCRIPT = """
import os, signal, sys
from pathlib import Path
from rsz_infer.pipeline import LabelConfig, label_tiles

def kill(n):
    if n == 2:
        os.kill(os.getpid(), signal.SIGKILL)

folder, classes, out, model = sys.argv[1:]
cfg = LabelConfig([folder], Path(classes), Path(out), Path(model), batch=2, progress=False)
label_tiles(cfg, on_batch=kill)
"""


def test_resume_after_kill_finishes_without_redoing(bundles, class_file, many_tiles, tmp_path):
    out = tmp_path / "labels.jsonl"
    script = [sys.executable, "-c", textwrap.dedent(KILL_SCRIPT)]
    proc = subprocess.run([*script, many_tiles, class_file, out, bundles["msa"]], capture_output=True)
    assert proc.returncode == -9
    assert not out.exists()
    part = out.with_name(out.name + ".part")
    done = [json.loads(line)["tile"] for line in part.read_text().splitlines()[1:]]
    assert len(done) == 4
    with open(part, "a") as f:
        f.write('{"tile": "half a line')  # what a kill during a write leaves

    cfg = LabelConfig(
        [str(many_tiles)], class_file, out, bundles["msa"], batch=2, resume=True, progress=False
    )
    summary = label_tiles(cfg)
    assert (summary.already_done, summary.labeled) == (4, 5)
    assert not part.exists()
    resumed = read_jsonl(out)
    clean_out = tmp_path / "clean.jsonl"
    label_tiles(
        LabelConfig([str(many_tiles)], class_file, clean_out, bundles["msa"], batch=2, progress=False)
    )
    clean = read_jsonl(clean_out)
    assert [r["tile"] for r in resumed] == [r["tile"] for r in clean]
    for a, b in zip(resumed, clean):
        assert a["labels"] == b["labels"] and np.allclose(a["scores"], b["scores"], atol=1e-5)


def test_ctrl_c_leaves_valid_output_and_resume_completes(bundles, class_file, many_tiles, tmp_path):
    out = tmp_path / "labels.csv"

    def interrupt(n):
        if n == 1:
            raise KeyboardInterrupt

    cfg = LabelConfig([str(many_tiles)], class_file, out, bundles["msa"], batch=3, progress=False)
    with pytest.raises(KeyboardInterrupt):
        label_tiles(cfg, on_batch=interrupt)
    with open(out, newline="") as f:
        assert len(list(csv.DictReader(f))) == 3  # what finished, as a complete CSV
    with pytest.raises(RszError, match="another model, class file or settings"):
        label_tiles(LabelConfig([str(many_tiles)], class_file, out, bundles["msa"], top_k=2, resume=True))
    summary = label_tiles(
        LabelConfig([str(many_tiles)], class_file, out, bundles["msa"], resume=True, progress=False)
    )
    assert (summary.already_done, summary.labeled) == (3, 6)
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and len({r["tile"] for r in rows}) == 9
    assert sorted(os.listdir(tmp_path)) == [
        "labels.csv",
        "labels.csv.run.json",
    ]  # no part file or temporaries
    # issue 16: --resume on a finished output has nothing left to do, and says so (exit 0)
    done = label_tiles(LabelConfig([str(many_tiles)], class_file, out, bundles["msa"], resume=True))
    assert done.exit_code == 0 and done.line(out).endswith("already complete; nothing left to do")
    assert sorted(os.listdir(tmp_path)) == ["labels.csv", "labels.csv.run.json"]


def test_a_rerun_killed_as_it_opens_its_run_log_leaves_what_resume_finishes(
    bundles, class_file, many_tiles, tmp_path, monkeypatch
):
    """A new run over a finished output removes its .run.json as it starts its log. It removed it first and
    then made an empty log and wrote its header: a kill in between left the output with neither (--resume:
    "already complete, with no labels.csv.run.json", exit 2) or an empty log ("not an rsz run log", exit 2).
    The whole header is in place (renamed) before the .run.json goes: this looks at the disk then, and
    resumes from there, as after a kill at that moment."""
    from rsz_infer.outputs import RunLog, finished_path, part_path

    out = tmp_path / "labels.csv"
    cfg = LabelConfig([str(many_tiles)], class_file, out, bundles["msa"], batch=4, progress=False)
    label_tiles(cfg)
    header = json.loads(finished_path(out).read_text())["run"]
    at_unlink = []
    real_unlink = Path.unlink

    def unlink(self, missing_ok=False):
        if self == finished_path(out):  # the moment a kill would leave the output without it
            at_unlink.append(part_path(out).read_text() if part_path(out).exists() else None)
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    log = RunLog(out, header, resume=False)  # what the rerun (no --resume) does before its first batch
    monkeypatch.undo()
    log._file.close()  # killed: nothing more is written
    assert at_unlink == [json.dumps({"run": header}, separators=(",", ":")) + "\n"]
    summary = label_tiles(LabelConfig(**{**cfg.__dict__, "resume": True}))
    assert (summary.already_done, summary.labeled, summary.exit_code) == (0, 9, 0)
    assert sorted(os.listdir(tmp_path)) == ["labels.csv", "labels.csv.run.json"]


def test_batches_hold_their_real_rows_and_padding_is_dropped(bundles, many_tiles):
    manifest = load_manifest(bundles["msa"])
    tiles = list(discover_tiles([many_tiles], TileOptions()))[:5]
    batches = list(iter_batches(tiles, TileOptions(), manifest.preprocess, 4, workers=2))
    assert [len(b.tiles) for b in batches] == [4, 1]
    # one input row per real tile: a --batch far above the tiles allocates no padding rows
    assert [b.inputs.shape for b in batches] == [(4, 3, 32, 32), (1, 3, 32, 32)]
    assert [t.id for b in batches for t in b.tiles] == [t.id for t in tiles]  # order kept
    runner = open_runner(bundles["msa"], manifest, "image", "auto", "cpu")
    assert runner.name == "ort:cpu"
    out = embed_batch(runner, batches[1])
    assert out["embedding"].shape == (1, 16) and out["scales"].shape == (1, 2, 8)


def test_backend_choices_say_clearly_what_is_unavailable(bundles):
    manifest = load_manifest(bundles["msa"])
    # a bundle without engines says so on the CPU too (not "TensorRT needs a GPU": a GPU would not help)
    with pytest.raises(RszError, match="no TensorRT engine for the image graph"):
        open_runner(bundles["msa"], manifest, "image", "trt", "cpu")
    with pytest.raises(RszError, match="no TensorRT engine for the image graph"):
        open_runner(bundles["msa"], manifest, "image", "trt", "cuda")
    with pytest.raises(RszError, match="has no 'semantic' graph"):
        open_runner(bundles["msa"], manifest, "semantic", "ort", "cpu")
    # the toy bundles ship no run weights (exported bundles do: tests/export/test_export_real_run.py):
    # exactly this one line, no other error accepted
    bundle = re.escape(str(bundles["msa"]))
    with pytest.raises(
        RszError,
        match=rf"^--backend torch: {bundle} carries no PyTorch weights \(.*\); re-export it with rsz-export, "
        "or use --backend ort or trt$",
    ):
        open_runner(bundles["msa"], manifest, "image", "torch", "cpu")


def test_label_gallery_summary_counts_tiles_without_a_preview(bundles, class_file, tmp_path, capsys):
    """A tile labeled before a stop and gone before --resume keeps its card ("no preview"); the summary line
    counts it as rsz-infer search's does (it said only "gallery of 3 tiles")."""
    folder, out, page = tmp_path / "tiles", tmp_path / "labels.csv", tmp_path / "g.html"
    for i, colour in enumerate(["red", "green", "blue"]):
        save(folder / f"{i}_{colour}.png", solid(colour, 24, seed=i))

    def interrupt(n):
        if n == 1:
            raise KeyboardInterrupt

    cfg = LabelConfig([str(folder)], class_file, out, bundles["msa"], batch=1, progress=False)
    with pytest.raises(KeyboardInterrupt):
        label_tiles(cfg, on_batch=interrupt)
    part = out.with_name(out.name + ".part")
    (done,) = [json.loads(line)["tile"] for line in part.read_text().splitlines()[1:]]
    (folder / Path(done).name).unlink()
    args = [folder, "--classes", class_file, "--model", bundles["msa"], "--out", out, "--batch", "1"]
    code, _, err = run_cli([*args, "--resume", "--html", page, "--quiet"], capsys)
    assert code == 0, err
    why = "1 without a preview (the file is gone, changed or cannot be read)"
    assert err.splitlines()[-1] == f"rsz-infer: gallery of 3 tiles, {why} -> {page}", err
    assert page.read_text().count('<div class="missing">no preview') == 1
