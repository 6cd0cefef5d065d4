"""The training loop end to end on a tiny benchmark: run files, reload, resume, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rsz_infer.errors import RszError
from rsz_train import evaluate as ev
from rsz_train import runs
from rsz_train.cli import main
from rsz_train.data.batches import load_images
from rsz_train.runs import load_run
from rsz_train.train import TEST_NOTE, TrainResult, train, train_run

from .conftest import TINY_OVERRIDES


def test_run_folder_contents(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert {
        "config.yaml",
        "model.safetensors",
        "classes.json",
        "metrics.jsonl",
        "report.json",
        "last.pt",
    } <= names
    lines = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert all({"losses", "val", "seconds"} <= set(line) for line in lines)
    report = json.loads((tiny_run / "report.json").read_text())
    assert report["note"] == TEST_NOTE
    assert {"zsl", "gzsl", "gzsl_uncalibrated"} <= set(report["test"])
    assert (
        report["test"]["gzsl"]["seen_calibration"]
        == report["seen_calibration"]
        == report["val"]["seen_calibration"]
    )
    # the best epoch on validation: strictly better than every earlier one (a tie keeps the earlier epoch)
    scores = [line["selection_score"] for line in lines]
    assert [line["best"] for line in lines] == [True, scores[1] > scores[0]]
    assert report["best_epoch"] == (2 if scores[1] > scores[0] else 1)
    assert report["selection"] == "ZSL accuracy on val_unseen"
    # on what lambda was chosen, and which classes each test score ranks among (rsz: no val class)
    classes = json.loads((tiny_run / "classes.json").read_text())
    seen, val, unseen = len(classes["seen"]), len(classes["val"]), len(classes["unseen"])
    assert report["val_classes"] == classes["val"] and val > 0
    assert report["calibration"] == (
        "calibrated-stacking lambda with the best GZSL H on validation: val_seen images of the "
        f"{seen} training classes and val_unseen images of the {val} val classes"
    )
    assert report["label_space"] == {
        "zsl": f"the {unseen} unseen classes",
        "gzsl": f"the {seen} training classes (seen minus the {val} val classes) + the {unseen} unseen "
        "classes",
    }


def test_select_last_epoch_keeps_the_last_weights(tiny_benchmark, default_split, tmp_path):
    overrides = {**TINY_OVERRIDES, "train.select_last_epoch": True}
    out = train("dsva", tiny_benchmark, default_split, tmp_path / "r", device="cpu", overrides=overrides)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["best"] for line in lines] == [False, True]
    report = json.loads((out / "report.json").read_text())
    assert (report["best_epoch"], report["selection"]) == (2, "last epoch")


def test_load_run_reproduces_the_reported_test_scores(tiny_run, tiny_benchmark, default_split):
    from rsz_train.data.formats import load_benchmark, load_split

    model, info = load_run(tiny_run, kind="dsva")
    assert info.kind == "dsva" and not model.training
    assert set(info.seen).isdisjoint(info.val) and set(info.seen).isdisjoint(info.unseen)
    assert info.semantics.attributes.shape == (len(info.class_names), len(info.task.attribute_names))
    data, split = load_benchmark(tiny_benchmark), load_split(tiny_benchmark, default_split)
    label_of = dict(zip(data.image_paths, np.asarray(data.labels).tolist()))
    paths = list(split.test_seen) + list(split.test_unseen)
    images = load_images(data.root, paths, info.preprocess.size)
    index = {name: i for i, name in enumerate(info.class_names)}
    scores = ev.model_zsl_gzsl_scores(
        model,
        ev.embed_images(model, images, info.preprocess),
        np.array([label_of[p] for p in paths]),
        ev.embed_classes(model, info.semantics),
        [index[c] for c in info.seen],
        [index[c] for c in info.unseen],
        info.seen_calibration,
    )
    report = info.report["test"]
    assert scores["zsl"] == pytest.approx(report["zsl"], abs=1e-9)
    assert scores["gzsl"]["H"] == pytest.approx(report["gzsl"]["H"], abs=1e-9)


def test_resume_gives_identical_weights(tiny_run, tiny_benchmark, default_split, tmp_path):
    out = tmp_path / "resumed"
    train(
        "dsva", tiny_benchmark, default_split, out, device="cpu", overrides=TINY_OVERRIDES, stop_after_epoch=1
    )
    assert not (out / "report.json").exists() and len((out / "metrics.jsonl").read_text().splitlines()) == 1
    train("dsva", tiny_benchmark, default_split, out, device="cpu", resume=True)
    straight = torch.load(tiny_run / "last.pt", weights_only=True)["model"]
    resumed = torch.load(out / "last.pt", weights_only=True)["model"]
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert (out / "model.safetensors").read_bytes() == (tiny_run / "model.safetensors").read_bytes()
    a, b = (json.loads((d / "report.json").read_text())["test"] for d in (tiny_run, out))
    assert a == b


def test_resume_with_other_epochs_keeps_them_for_the_next_resume(tiny_benchmark, default_split, tmp_path):
    """`--resume --epochs 3` of a 2-epoch run: config.yaml says 3, so a later --resume (a second kill)
    trains to 3, not back to 2."""
    out = tmp_path / "longer"
    train(
        "dsva", tiny_benchmark, default_split, out, device="cpu", overrides=TINY_OVERRIDES, stop_after_epoch=1
    )
    train("dsva", tiny_benchmark, default_split, out, device="cpu", epochs=3, resume=True, stop_after_epoch=2)
    assert runs.read_config(out, "dsva").train.epochs == 3
    train("dsva", tiny_benchmark, default_split, out, device="cpu", resume=True)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    assert json.loads((out / "report.json").read_text())["epochs"] == 3


def test_resume_refuses_options_that_would_change_the_run(tiny_run, tiny_benchmark, tmp_path):
    """--resume continues with the run's own config.yaml: --gsd or a --config that differ are named, not
    silently ignored; the same values are accepted."""
    before = (tiny_run / "config.yaml").read_bytes()
    args = ["dsva", "--data", str(tiny_benchmark), "--out", str(tiny_run), "--resume"]
    result = CliRunner().invoke(main, [*args, "--gsd", "0.3"])
    assert result.exit_code == 2 and "train.gsd (run: None, now: 0.3)" in result.output, result.output
    changed = tmp_path / "other.yaml"
    changed.write_text("train:\n  lr: 0.5\n", encoding="utf-8")
    result = CliRunner().invoke(main, [*args, "--config", str(changed)])
    assert result.exit_code == 2 and "train.lr (run: " in result.output and "now: 0.5" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert (tiny_run / "config.yaml").read_bytes() == before
    from rsz_train.train import _check_resumed_config

    config = runs.read_config(tiny_run, "dsva")
    _check_resumed_config(config, runs.read_config(tiny_run, "dsva"), None)  # the run's own file: accepted


def test_resume_of_a_run_killed_in_its_first_epoch_starts_it_from_epoch_0(
    tiny_run, tiny_benchmark, default_split, tmp_path, capsys
):
    """Killed before its first last.pt (config.yaml, classes.json, metrics.jsonl only): --resume starts the
    run from epoch 0 with its own config (a different one is still refused), not a dead end."""
    out = tmp_path / "e1"
    train(
        "dsva", tiny_benchmark, default_split, out, device="cpu", overrides=TINY_OVERRIDES, stop_after_epoch=0
    )
    assert {p.name for p in out.iterdir()} == {"config.yaml", "classes.json", "metrics.jsonl"}
    args = ["dsva", "--data", str(tiny_benchmark), "--split", default_split, "--out", str(out), "--resume"]
    result = CliRunner().invoke(main, [*args, "--gsd", "0.3"])
    assert result.exit_code == 2 and "train.gsd (run: None, now: 0.3)" in result.output, result.output
    result = CliRunner().invoke(main, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    # a restart is said, never silent (a user may have expected epochs that were not written)
    note = f"note: {out} has no last.pt yet (stopped in its first epoch): training from epoch 1"
    assert note in result.output.splitlines()
    assert (out / "model.safetensors").read_bytes() == (tiny_run / "model.safetensors").read_bytes()
    a, b = (json.loads((d / "report.json").read_text())["test"] for d in (tiny_run, out))
    assert a == b
    # --protocol paper: killed in the selection run's first epoch (selection/config.yaml, no last.pt)
    paper = tmp_path / "p1"
    train("dsva", tiny_benchmark, default_split, paper, device="cpu", overrides=TINY_OVERRIDES,
          protocol="paper", stop_after_epoch=0)  # fmt: skip
    assert not any(paper.glob("**/last.pt")) and (paper / "selection" / "config.yaml").is_file()
    train("dsva", tiny_benchmark, default_split, paper, device="cpu", resume=True, protocol="paper")
    assert json.loads((paper / "report.json").read_text())["protocol"] == "paper"
    # nothing of a run at all (killed while it read its data; the folder missing or empty): --resume starts
    # it, said in a note, so that a requeued job's one command line (always --resume) works
    (tmp_path / "empty").mkdir()
    for fresh in (tmp_path / "missing", tmp_path / "empty"):
        capsys.readouterr()
        train("dsva", tiny_benchmark, default_split, fresh, device="cpu", resume=True, epochs=1,
              overrides=TINY_OVERRIDES)  # fmt: skip
        note = f"note: --resume: {fresh} holds no run yet (stopped before it began): starting it"
        assert note in capsys.readouterr().err.splitlines() and (fresh / "report.json").is_file()
    # a folder holding something else than a run: still nothing to resume
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine\n")
    with pytest.raises(RszError, match="nothing to resume"):
        train("dsva", tiny_benchmark, default_split, tmp_path / "other", device="cpu", resume=True)


@pytest.mark.parametrize("unseen", [[], ["--unseen", "3"]])
def test_negative_split_seed_is_a_one_line_error(tiny_benchmark, tmp_path, unseen):
    """--seed -1 (the split seed) has train.seed's range: one line naming it, not numpy's ValueError."""
    out = tmp_path / "run"
    args = ["dsva", "--data", str(tiny_benchmark), *unseen, "--seed", "-1", "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--device", "cpu"])
    assert result.exit_code == 2 and "--seed -1: must be" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def test_resume_removes_temporaries_of_a_killed_write(tiny_benchmark, default_split, tmp_path):
    """A kill inside torch.save leaves .last.pt.tmp<PID>: the resume removes it (its PID is dead), not a
    live process's file nor a file of the user's."""
    import os
    import subprocess
    import sys

    out = tmp_path / "k"
    train(
        "dsva", tiny_benchmark, default_split, out, device="cpu", overrides=TINY_OVERRIDES, stop_after_epoch=1
    )
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    stale = out / f".last.pt.tmp{int(dead.stdout)}"
    stale.write_bytes((out / "last.pt").read_bytes())
    live = out / f".metrics.jsonl.tmp{os.getppid()}"
    live.write_text("")
    mine = out / "notes.tmp123"
    mine.write_text("")
    train("dsva", tiny_benchmark, default_split, out, device="cpu", resume=True)
    assert not stale.exists() and live.exists() and mine.exists() and (out / "report.json").is_file()


def test_load_run_errors(tiny_run, tmp_path):
    with pytest.raises(RszError, match="run folder not found"):
        load_run(tmp_path / "nothing")
    with pytest.raises(RszError, match="is a dsva run, not msa"):
        load_run(tiny_run, kind="msa")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RszError, match="config.yaml: missing"):
        load_run(tmp_path / "empty")


def test_cli_help_and_one_line_errors(tmp_path, tiny_run, tiny_benchmark):
    runner = CliRunner()
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0 and "dsva" in result.output and "synth" in result.output
    result = runner.invoke(main, ["dsva", "--help"])
    assert result.exit_code == 0 and "--resume" in result.output and "--data" in result.output
    result = runner.invoke(main, ["dsva", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "nope: data folder not found" in lines[0]
    # the archive as downloaded, not the folder it unpacks into: not "make one with rsz-train synth"
    (tmp_path / "UCMerced_LandUse.zip").write_bytes(b"PK\x03\x04")
    result = runner.invoke(main, ["dsva", "--data", str(tmp_path / "UCMerced_LandUse.zip"), "--unseen", "2",
                                  "--out", str(tmp_path / "r")])  # fmt: skip
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        f"error: {tmp_path / 'UCMerced_LandUse.zip'}: not a folder (--data is the folder of a data set; "
        "unpack an archive first)"
    ]
    # an existing run is never overwritten by accident
    result = runner.invoke(main, ["dsva", "--data", str(tiny_benchmark), "--out", str(tiny_run)])
    assert result.exit_code == 2 and "not empty" in result.output


def test_a_second_rsz_train_on_a_run_being_written_is_refused(tiny_benchmark, default_split, tmp_path):
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    code = (
        "from rsz_train.train import train\n"
        f"train('dsva', {str(tiny_benchmark)!r}, {default_split!r}, {str(out)!r}, device='cpu', "
        f"overrides={{**{TINY_OVERRIDES!r}, 'train.epochs': 200}})\n"
    )
    first = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (out / "last.pt").exists():  # the first one is training
            assert time.time() < deadline and first.poll() is None, first.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        # a --resume beside it would interleave the same checkpoint and metrics: refused before any work
        with pytest.raises(RszError, match="another rsz-train is writing this run right now"):
            train("dsva", tiny_benchmark, default_split, out, device="cpu", resume=True, stop_after_epoch=1)
    finally:
        first.kill()
        first.wait()
    # a kill releases the lock: the run resumes (a step of it here)
    train("dsva", tiny_benchmark, default_split, out, device="cpu", resume=True, stop_after_epoch=1)


def test_sigterm_stops_training_as_ctrl_c_does_and_the_run_resumes(
    tiny_run, tiny_benchmark, default_split, tmp_path, monkeypatch
):
    """SIGTERM (`kill`, `timeout`, a scheduler's stop) ended rsz-train with no word (exit 143); as Ctrl-C it
    is one line, exit 130, and --resume goes on from the last epoch written to the same result."""
    import os
    import signal

    save = runs.save_resume_state

    def save_then_sigterm(path, state):  # the stop arrives once epoch 1's last.pt is written
        save(path, state)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(runs, "save_resume_state", save_then_sigterm)
    # without the CLI's own handler a SIGTERM would end pytest; this one lets training go on instead
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    out = tmp_path / "stopped"
    overrides = tmp_path / "tiny.yaml"
    settings = "".join(f"  {k.split('.')[1]}: {v}\n" for k, v in TINY_OVERRIDES.items())
    overrides.write_text("train:\n" + settings, encoding="utf-8")
    args = ["dsva", "--data", str(tiny_benchmark), "--split", default_split, "--out", str(out)]
    args += ["--device", "cpu"]
    try:
        result = CliRunner().invoke(main, [*args, "--config", str(overrides)])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result.exit_code == 130, result.output
    assert result.output.strip().splitlines()[-1] == "interrupted"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1 and not (out / "report.json").exists()
    monkeypatch.setattr(runs, "save_resume_state", save)
    train("dsva", tiny_benchmark, default_split, out, device="cpu", resume=True)
    a, b = (json.loads((d / "report.json").read_text())["test"] for d in (tiny_run, out))
    assert a == b


def test_resume_of_a_finished_run_has_nothing_left_to_do(tiny_run, tiny_benchmark, tmp_path):
    """`--resume` of a finished run (a retry loop after a kill that came too late) scored the test split
    again and rewrote report.json, saying "run written to": now one line, exit 0, nothing rewritten."""
    import shutil

    run = tmp_path / "done"
    shutil.copytree(tiny_run, run)
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    result = CliRunner().invoke(main, ["dsva", "--data", str(tiny_benchmark), "--out", str(run), "--resume"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"nothing left to do: run finished in {run}"), lines
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before
    # said by train_run, not guessed from report.json's inode and mtime (unsteady on some network mounts)
    again = train_run("dsva", tiny_benchmark, None, run, device="cpu", resume=True)
    assert again == TrainResult(run, nothing_to_do=True)
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before
