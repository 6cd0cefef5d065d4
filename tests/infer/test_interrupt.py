"""rsz-infer as a real process, interrupted by SIGINT (Ctrl-C) after its first batch: exit 130, the
`interrupted` line, a complete output of what finished, and --resume finishing the rest."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .helpers import write_geotiff
from .test_label import run_cli

# 512 x 512 px scene in 8 px windows, one per batch: several seconds of work, each batch fsync'd, so that a
# test process slowed by a loaded machine still signals well before the run ends (1024 windows did not)
SIDE = 512
WINDOWS = (SIDE // 8) ** 2


def _rsz_infer() -> list[str]:
    script = Path(sys.executable).parent / "rsz-infer"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "rsz_infer.cli"]


def _sigint_as_in_a_terminal() -> None:
    """The child's SIGINT as a shell gives it: not ignored, not blocked. A child inherits both from the
    test process, where an earlier test's native library may have changed them (the whole suite, not this
    file alone, ran the child deaf to SIGINT)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _complete_lines(path: Path) -> int:
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return 0
    return text.count(b"\n")


def test_sigint_after_the_first_batch_exits_130_and_resume_finishes(bundles, class_file, tmp_path, capsys):
    rng = np.random.default_rng(0)
    scene = write_geotiff(tmp_path / "scene.tif", rng.integers(0, 256, (3, SIDE, SIDE)).astype(np.uint8))
    out = tmp_path / "labels.csv"
    part = out.with_name(out.name + ".part")
    args = [scene, "--classes", class_file, "--model", bundles["msa"], "--out", out, "--tile-size", "8"]
    proc = subprocess.Popen(
        [*_rsz_infer(), *map(str, args), "--batch", "1", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_as_in_a_terminal,
    )
    try:
        deadline = time.monotonic() + 60
        while _complete_lines(part) < 2:  # the run header, then the first batch
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no first batch within 60 s"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    parent = f"test process: SIGINT {signal.getsignal(signal.SIGINT)}, blocked {blocked}"
    assert proc.returncode == 130, f"{err}\n{parent}"
    lines = err.strip().splitlines()  # start-up notes, then the pipeline's line and the CLI's "interrupted"
    interrupted = [line for line in lines if line.startswith("interrupted")]
    assert interrupted and lines[-1].startswith("interrupted") and "Traceback" not in err, err
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert 1 <= len(rows) < WINDOWS, "the run finished before SIGINT came: make the scene bigger"
    assert interrupted[0].startswith(f"interrupted: {len(rows)} tiles written to {out}"), err
    assert all(r["label_1"] in ("red", "green", "blue") and r["window"] for r in rows)
    assert part.is_file() and _complete_lines(part) == 1 + len(rows)  # the log holds exactly what is out

    code, _, err = run_cli([*args, "--batch", "256", "--resume", "--quiet"], capsys)
    assert code == 0, err
    assert f"{WINDOWS - len(rows)} tiles labeled" in err and f"{len(rows)} done before (resumed)" in err
    with open(out, newline="") as f:
        resumed = list(csv.DictReader(f))
    assert len(resumed) == WINDOWS and len({r["tile"] for r in resumed}) == WINDOWS
    assert [r["tile"] for r in resumed[: len(rows)]] == [r["tile"] for r in rows]  # what was done stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv", "labels.csv.run.json", "scene.tif"]
