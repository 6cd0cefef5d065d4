"""Session fixtures: one tiny synthetic benchmark, written once and read by the data tests."""

from __future__ import annotations

import pytest

TINY = {"seed": 0, "size": 64, "per_class": 5}


@pytest.fixture(scope="session")
def tiny() -> dict:
    """The parameters synth_dir was written with."""
    return dict(TINY)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    from rsz_train.data.synth import write_benchmark

    return write_benchmark(tmp_path_factory.mktemp("data") / "synth", workers=1, **TINY)


@pytest.fixture(scope="session")
def synth_data(synth_dir):
    from rsz_train.data.formats import load_benchmark

    return load_benchmark(synth_dir)
