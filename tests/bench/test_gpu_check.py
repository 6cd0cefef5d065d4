"""scripts/gpu_check.sh --cpu-smoke: every step of the GPU check runs here, reduced, so the script is known
to work before it first meets a GPU (the full run: `bash scripts/gpu_check.sh` on an H100/H200)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rsz_infer.decoders import _nvimgcodec

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_check.sh"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
def test_cpu_smoke_runs_every_step_and_writes_json_and_tables(tmp_path: Path) -> None:
    out = tmp_path / "check"
    done = _run("--cpu-smoke", "--out", str(out))
    summary = (out / "summary.md").read_text(encoding="utf-8")
    steps = {line.split("|")[1].strip(): int(line.split("|")[2]) for line in summary.splitlines()[6:]}
    assert list(steps) == ["latency", "decode", "train", "e2e", "label", "gpu_tests", "ray"], summary
    expected = {step: 0 for step in steps} | ({} if _nvimgcodec() else {"decode": 1})
    assert steps == expected, done.stderr[-2000:]
    assert done.returncode == sum(expected.values())

    latency = json.loads((out / "latency" / "latency_vit_tiny.json").read_text(encoding="utf-8"))
    assert [r["status"] for r in latency["rows"]] == ["ok"] and latency["machine"] and latency["command"]
    if _nvimgcodec():
        decode = json.loads((out / "decode" / "decode.json").read_text(encoding="utf-8"))
        assert decode["identical"] == decode["tiles"] > 10 and (out / "decode" / "decode.md").is_file()
    train = json.loads((out / "train" / "train.json").read_text(encoding="utf-8"))
    assert [(r["config"], r["status"]) for r in train["rows"]] == [("dsva_vit_b32", "ok")]
    assert train["rows"][0]["peak_mib"] > 0 and train["rows"][0]["seconds"] > 0
    e2e = json.loads((out / "e2e" / "e2e_dsva_vit_b32.json").read_text(encoding="utf-8"))
    assert e2e["tiles"] == 8 and "stages" in e2e
    with open(out / "label" / "labels.csv", newline="", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 8
    assert "backend ort:cpu" in (out / "label" / "summary.txt").read_text(encoding="utf-8")
    twins = (out / "gpu_tests" / "pytest.txt").read_text(encoding="utf-8")
    assert "1 skipped" in twins and "needs an NVIDIA GPU" in twins  # no GPU here: the twin skips, says why


def test_unknown_option_is_one_line(tmp_path: Path) -> None:
    done = _run("--gpu", "--out", str(tmp_path))
    assert done.returncode == 2 and done.stderr == "error: --gpu: unknown option (--out DIR, --cpu-smoke)\n"
