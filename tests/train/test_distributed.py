"""DistributedDataParallel training: 2 CPU processes (gloo) against one process with the same global batch.

The tolerance: with dropout off, the two runs differ only in float summation order (each rank's loss
is a mean over its share; gradients are averaged by all-reduce), so per-step losses agree to 1e-4
relative and the weights after two epochs give embeddings equal to 1e-4. A sampler bug (a rank
training on the wrong share, or out-of-step augmentations) moves the losses by far more.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rsz_infer.errors import RszError
from rsz_train import evaluate as ev
from rsz_train.data.batches import load_images
from rsz_train.distributed import DistContext, local_share
from rsz_train.runs import load_run
from rsz_train.train import TrainResult, train, train_run

from .conftest import TINY_OVERRIDES

# batch 16: six steps per epoch on the tiny benchmark; dropout off so the runs can be compared step by step
OVERRIDES = {**TINY_OVERRIDES, "train.batch_size": 16, "model.dropout": 0.0}


def _steps(run) -> list[list[float]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step_losses"] for line in lines]


def test_two_gloo_processes_train_like_one_and_resume(tiny_benchmark, default_split, tmp_path):
    one = train("dsva", tiny_benchmark, default_split, tmp_path / "one", device="cpu", overrides=OVERRIDES)
    # two processes, interrupted after epoch 1 and resumed with two processes: as if never stopped
    two = tmp_path / "two"
    train(
        "dsva",
        tiny_benchmark,
        default_split,
        two,
        device="cpu",
        overrides=OVERRIDES,
        nproc=2,
        stop_after_epoch=1,
    )
    assert not (two / "report.json").exists() and len(_steps(two)) == 1
    resumed = train_run("dsva", tiny_benchmark, default_split, two, device="cpu", resume=True, nproc=2)
    assert resumed == TrainResult(two, nothing_to_do=False)  # rank 0's, through the launcher

    steps_one, steps_two = _steps(one), _steps(two)
    assert [len(s) for s in steps_one] == [len(s) for s in steps_two] == [6, 6]
    np.testing.assert_allclose(np.concatenate(steps_two), np.concatenate(steps_one), rtol=1e-4)
    report = json.loads((two / "report.json").read_text())
    assert report["processes"] == 2
    assert report["best_epoch"] == json.loads((one / "report.json").read_text())["best_epoch"]

    # the checkpoint rank 0 wrote reloads to the model it scored, and to the single-process weights
    from rsz_train.data.formats import load_benchmark, load_split

    data, split = load_benchmark(tiny_benchmark), load_split(tiny_benchmark, default_split)
    label_of = dict(zip(data.image_paths, np.asarray(data.labels).tolist()))
    paths = list(split.test_seen) + list(split.test_unseen)
    model_two, info = load_run(two, kind="dsva")
    images = load_images(data.root, paths, info.preprocess.size)
    emb_two = ev.embed_images(model_two, images, info.preprocess)
    np.testing.assert_allclose(emb_two, ev.embed_images(load_run(one)[0], images, info.preprocess), atol=1e-4)
    index = {name: i for i, name in enumerate(info.class_names)}
    scores = ev.model_zsl_gzsl_scores(
        model_two,
        emb_two,
        np.array([label_of[p] for p in paths]),
        ev.embed_classes(model_two, info.semantics),
        [index[c] for c in info.seen],
        [index[c] for c in info.unseen],
        info.seen_calibration,
    )
    assert scores["zsl"] == pytest.approx(report["test"]["zsl"], abs=1e-9)
    assert scores["gzsl"]["H"] == pytest.approx(report["test"]["gzsl"]["H"], abs=1e-9)


def test_class_balanced_share_keeps_whole_classes():
    labels = np.repeat(np.arange(6), 4)  # 6 classes x 4 images
    batch = np.concatenate([np.flatnonzero(labels == c)[:2] for c in (4, 1, 5, 0)])  # 4 classes x 2
    shares = [batch[local_share(batch, labels, True, DistContext(r, 2, r))] for r in (0, 1)]
    assert [sorted(set(labels[s].tolist())) for s in shares] == [[4, 5], [0, 1]]
    assert all(np.bincount(labels[s]).max() == 2 for s in shares)  # every image of each class kept
    assert sorted(np.concatenate(shares).tolist()) == sorted(batch.tolist())
    with pytest.raises(RszError, match="classes per episode"):
        local_share(batch, labels, True, DistContext(0, 5, 0))
    plain = [local_share(np.arange(7), labels, False, DistContext(r, 2, r)) for r in (0, 1)]
    assert sorted(np.concatenate(plain).tolist()) == list(range(7))


def test_cli_nproc_errors_are_one_line(tiny_benchmark, tmp_path):
    from click.testing import CliRunner

    from rsz_train.cli import main

    result = CliRunner().invoke(
        main, ["dsva", "--data", str(tiny_benchmark), "--out", str(tmp_path / "r"), "--nproc", "0"]
    )
    assert result.exit_code == 2 and result.output.strip() == "error: --nproc 0: must be at least 1"


def _ranks(pid: int) -> list[int]:
    """Live multiprocessing workers whose parent is `pid` (Linux /proc; a zombie is no live process)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:  # it ended meanwhile
            continue
        if fields[0] != "Z" and int(fields[1]) == pid and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_killing_the_nproc_launcher_ends_its_ranks(tiny_benchmark, default_split, tmp_path):
    # SIGKILL (or SIGTERM) of `rsz-train --nproc 2 &` in a shell script used to leave both ranks training
    # and writing the run without its lock, beside the --resume a user starts next: such a background job
    # ignores SIGINT, torch.multiprocessing's parent-death signal (the launcher here is started alike)
    code = (
        "import sys; from rsz_train.train import train\n"
        "train('dsva', sys.argv[1], sys.argv[2], sys.argv[3], device='cpu', nproc=2,"
        " overrides={'train.image_size': 32, 'train.epochs': 100000, 'train.batch_size': 16})"
    )
    out = tmp_path / "run"
    args = [sys.executable, "-c", code, str(tiny_benchmark), default_split, str(out)]
    launcher = subprocess.Popen(args, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    ranks: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(ranks) < 2 and time.monotonic() < deadline:
            ranks = _ranks(launcher.pid)
            time.sleep(0.2)
        while not (out / "metrics.jsonl").is_file() and time.monotonic() < deadline:  # training: 1 epoch
            time.sleep(0.2)
        assert len(ranks) == 2 and launcher.poll() is None
        launcher.kill()
        launcher.wait()
        deadline = time.monotonic() + 30
        while any(_alive(r) for r in ranks) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(r) for r in ranks), "ranks outlived their launcher"
    finally:
        launcher.kill()
        for rank in ranks:
            if _alive(rank):
                os.kill(rank, signal.SIGKILL)
