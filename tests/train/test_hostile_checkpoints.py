"""Crafted run folders and checkpoints never run code: resume state is read weights-only, TorchScript
archives are refused, each with one error line."""

from __future__ import annotations

import os
import pickle
import shutil

import torch
from click.testing import CliRunner

from rsz_train.cli import main
from rsz_train.models.vit import create_vit, load_clip_vision


class _Payload:
    """Unpickling this calls os.system: what a crafted last.pt would do with weights_only=False."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_resume_state_is_refused_without_running_it(tiny_run, tiny_benchmark, tmp_path):
    run = tmp_path / "crafted"
    shutil.copytree(tiny_run, run)
    (run / "report.json").unlink()  # unfinished, so --resume reads last.pt (a finished run has nothing to do)
    marker = tmp_path / "code-ran"
    state = {"epoch": 1, "model": {}, "optimizer": {}, "scheduler": {}, "scaler": {}, "best_score": 0.0}
    state["best_epoch"] = _Payload(marker)
    with open(run / "last.pt", "wb") as f:
        pickle.dump(state, f)  # torch.load reads plain pickles too (the legacy format)
    result = CliRunner().invoke(main, ["dsva", "--data", str(tiny_benchmark), "--out", str(run), "--resume"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "last.pt: not a plain resume state, refused" in lines[0]
    assert not marker.exists()
    # the same payload inside torch's own zip format
    torch.save(state, run / "last.pt")
    result = CliRunner().invoke(main, ["dsva", "--data", str(tiny_benchmark), "--out", str(run), "--resume"])
    assert result.exit_code == 2 and "refused" in result.output and not marker.exists()


class _Tiny(torch.nn.Module):
    def forward(self, x):
        return x + 1


def test_torchscript_clip_checkpoint_is_refused(tmp_path):
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.script(_Tiny()), str(path))
    try:
        load_clip_vision(create_vit("vit_tiny", 32), path)
    except Exception as err:  # RszError: one line naming the file
        message = str(err)
    else:
        raise AssertionError("a TorchScript archive was loaded")
    assert "ViT-B-32.pt: a TorchScript archive" in message and "\n" not in message


def test_a_cut_resume_state_is_one_line_naming_it(tiny_run, tiny_benchmark, tmp_path):
    """A last.pt cut short (a partial copy, a full disk) said "not a plain resume state, refused", as for a
    crafted one: now it says damaged, and what to do; never a traceback nor a silent restart."""
    run = tmp_path / "cut"
    shutil.copytree(tiny_run, run)
    (run / "report.json").unlink()
    with open(run / "last.pt", "r+b") as f:
        f.truncate(1_000_000)
    result = CliRunner().invoke(main, ["dsva", "--data", str(tiny_benchmark), "--out", str(run), "--resume"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"{run / 'last.pt'}: damaged or incomplete, cannot resume from it" in lines[0]
    assert not (run / "report.json").exists()
