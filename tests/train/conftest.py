"""Session fixtures: one tiny trained DSVA run and one MCFA classifier run shared by the tests (the tiny
benchmark they train on, tiny_benchmark, and default_split are tests/conftest.py's)."""

from __future__ import annotations

import pytest

# Tiny but real: 32 px tiles, a 2-layer-sized budget (vit_tiny at 32 px has 16 patches), 2 epochs.
TINY_OVERRIDES = {
    "train.image_size": 32,
    "train.epochs": 2,
    "train.batch_size": 32,
    "train.eval_batch_size": 128,
    "train.warmup_epochs": 1,
}


@pytest.fixture(scope="session")
def tiny_run(tiny_benchmark, default_split, tmp_path_factory):
    from rsz_train.train import train

    out = tmp_path_factory.mktemp("runs") / "dsva"
    return train("dsva", tiny_benchmark, default_split, out, device="cpu", overrides=TINY_OVERRIDES)


# MCFA with CADA-VAE's final stage (model.inference classifier), small sample counts and classifier epochs
MCFA_CLASSIFIER_OVERRIDES = {
    **TINY_OVERRIDES,
    "model.inference": "classifier",
    "model.classifier_epochs": 2,
    "model.classifier_zsl_epochs": 2,
    "model.classifier_seen_samples": 20,
    "model.classifier_unseen_samples": 40,
    "model.classifier_zsl_samples": 20,
}


@pytest.fixture(scope="session")
def mcfa_classifier_run(tiny_benchmark, default_split, tmp_path_factory):
    from rsz_train.train import train

    out = tmp_path_factory.mktemp("runs") / "mcfa_classifier"
    overrides = MCFA_CLASSIFIER_OVERRIDES
    return train("mcfa", tiny_benchmark, default_split, out, device="cpu", overrides=overrides)
