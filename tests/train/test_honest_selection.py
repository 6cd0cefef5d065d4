"""Honest model selection: the kept epoch and the calibration lambda come from the validation split only.

Two checks that fail when validation quietly scores the test split:
- the validation scores recomputed from the finished run (lambda left free) are the ones the run recorded;
- a copy of the benchmark whose test images are replaced by noise selects the same epochs and lambda.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from rsz_train import evaluate as ev
from rsz_train.data.batches import load_images
from rsz_train.data.formats import load_benchmark, load_split
from rsz_train.runs import load_run
from rsz_train.train import train

from .conftest import TINY_OVERRIDES


def _metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_recorded_choice_is_the_validation_choice(tiny_run, tiny_benchmark, default_split):
    model, info = load_run(tiny_run, kind="dsva")
    data, split = load_benchmark(tiny_benchmark), load_split(tiny_benchmark, default_split)
    label_of = dict(zip(data.image_paths, np.asarray(data.labels).tolist()))
    index = {name: i for i, name in enumerate(info.class_names)}
    paths = list(split.val_seen) + list(split.val_unseen)
    assert paths and set(info.val) and not set(info.val) & set(info.unseen)
    recomputed = ev.model_zsl_gzsl_scores(
        model,
        ev.embed_images(model, load_images(data.root, paths, info.preprocess.size), info.preprocess),
        np.array([label_of[p] for p in paths]),
        ev.embed_classes(model, info.semantics),
        [index[c] for c in info.seen],  # training classes (seen minus val)
        [index[c] for c in info.val],  # validation stands in for the unseen classes
        seen_calibration=None,  # lambda free: chosen here, on validation
    )
    report = info.report
    # the lambda the run kept (and applied at test) is the one validation picks: a gap between float32
    # scores, which the recomputation's other batches move by a few ulps (4e-7 relative on one CPU),
    # while a lambda picked on other images moves by far more than 1e-5
    lam = pytest.approx(recomputed["seen_calibration"], rel=1e-5)
    assert report["seen_calibration"] == lam
    assert report["test"]["gzsl"]["seen_calibration"] == report["seen_calibration"]
    assert info.seen_calibration == report["seen_calibration"]
    # the recorded validation scores of the kept weights are these
    assert report["val"]["zsl"] == pytest.approx(recomputed["zsl"], abs=1e-9)
    for key in ("U", "S", "H"):
        assert report["val"]["gzsl"][key] == pytest.approx(recomputed["gzsl"][key], abs=1e-9)
    # and the kept epoch is the first best selection score, whose score is the recomputed one
    lines = _metrics(tiny_run)
    scores = [line["selection_score"] for line in lines]
    best = int(np.argmax(scores))
    assert report["best_epoch"] == best + 1 and lines[best]["best"]
    assert scores[best] == pytest.approx(recomputed["zsl"], abs=1e-9)
    assert lines[best]["val"]["zsl"] == pytest.approx(recomputed["zsl"], abs=1e-9)


def test_noise_in_the_test_split_moves_no_choice(tiny_run, tiny_benchmark, default_split, tmp_path):
    bench = tmp_path / "bench"
    shutil.copytree(tiny_benchmark, bench)
    split = load_split(bench, default_split)
    test_paths = set(split.test_seen) | set(split.test_unseen)
    assert test_paths and not test_paths & (set(split.train) | set(split.val_seen) | set(split.val_unseen))
    root = load_benchmark(bench).root
    rng = np.random.default_rng(7)
    for rel in sorted(test_paths):
        with Image.open(root / rel) as image:
            size = image.size
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / rel)

    noisy = train("dsva", bench, default_split, tmp_path / "run", device="cpu", overrides=TINY_OVERRIDES)
    clean_lines, noisy_lines = _metrics(tiny_run), _metrics(noisy)
    assert [line["selection_score"] for line in noisy_lines] == [
        line["selection_score"] for line in clean_lines
    ]
    assert [line["best"] for line in noisy_lines] == [line["best"] for line in clean_lines]
    assert [line["val"] for line in noisy_lines] == [line["val"] for line in clean_lines]
    clean, report = (json.loads((run / "report.json").read_text()) for run in (tiny_run, noisy))
    assert report["best_epoch"] == clean["best_epoch"]
    assert report["seen_calibration"] == clean["seen_calibration"]
    assert report["val"] == clean["val"]
    # the noise did reach the test split: the test scores moved while nothing chosen did
    assert report["test"] != clean["test"]
