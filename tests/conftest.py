"""Session fixtures shared by every test folder: one tiny synthetic benchmark and one tiny real MSA run.

MSA is the costly kind to train (its MiniLM passes dominate), and tests/bench, tests/export, tests/train and
tests/test_retrieval_end_to_end.py each need a real one: it is trained once per session. Tests read these
folders and never write into them (copy one first to edit it).
"""

from __future__ import annotations

import pytest

# Tiny but real: 32 px tiles, one epoch, short captions (the MiniLM passes dominate this tiny run).
TINY_MSA = {
    "train.image_size": 32,
    "train.epochs": 1,
    "train.batch_size": 32,
    "train.warmup_epochs": 1,
    "model.max_text_length": 16,
}


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory):
    from rsz_train.data.synth import write_benchmark

    return write_benchmark(tmp_path_factory.mktemp("bench") / "synth", seed=0, size=32, per_class=5)


@pytest.fixture(scope="session")
def default_split():
    from rsz_train.data.synth import DEFAULT_SPLIT

    return DEFAULT_SPLIT


@pytest.fixture(scope="session")
def tiny_msa_run(tiny_benchmark, default_split, tmp_path_factory):
    from rsz_train.train import train

    out = tmp_path_factory.mktemp("runs") / "msa"
    return train("msa", tiny_benchmark, default_split, out, device="cpu", overrides=TINY_MSA)


@pytest.fixture(scope="session")
def tiny_msa_bundle(tiny_msa_run, tmp_path_factory):
    """The README's export of that run, `rsz-export --model msa --run RUN --fp16 --engine trt` (FP32 and
    FP16 graphs, a TensorRT-RTX engine per graph, built on the CPU): -> (CliRunner result, bundle). Made
    once for tests/export (which checks it) and tests/test_retrieval_end_to_end.py; read only."""
    from click.testing import CliRunner

    from rsz_export.cli import main

    out = tmp_path_factory.mktemp("models") / "msa"
    args = ["--model", "msa", "--run", str(tiny_msa_run), "--fp16", "--engine", "trt", "--batch", "1:4:16"]
    return CliRunner().invoke(main, [*args, "--out", str(out)]), out
