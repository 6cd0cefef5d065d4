from __future__ import annotations

import numpy as np
import pytest

from rsz_infer.metrics import (
    choose_calibration,
    gzsl_report,
    per_class_accuracy,
    random_mR,
    retrieval_metrics,
)


def test_per_class_accuracy_averages_classes_not_samples() -> None:
    labels = np.array([0, 0, 0, 1])
    pred = np.array([0, 0, 1, 1])
    assert per_class_accuracy(pred, labels) == pytest.approx((2 / 3 + 1) / 2)  # not 3/4
    assert per_class_accuracy(pred, labels, classes=np.array([0])) == pytest.approx(2 / 3)
    assert per_class_accuracy(pred, labels, classes=np.array([1, 5])) == 1.0  # class 5 has no samples
    with pytest.raises(ValueError):
        per_class_accuracy(pred, labels, classes=np.array([7]))


# Classes 0, 1 seen, class 2 unseen. Seen scores are inflated, as after training on seen classes.
LOGITS = np.array(
    [
        [2.0, 0.0, 1.0],  # label 0: gap seen-unseen 1.0
        [0.0, 3.0, 1.0],  # label 1: gap 2.0
        [1.0, 0.0, 0.5],  # label 2: gap 0.5, predicted seen class 0 without calibration
        [0.0, 2.0, 1.8],  # label 2: gap 0.2, predicted seen class 1 without calibration
    ]
)
LABELS = np.array([0, 1, 2, 2])
SEEN = np.array([True, True, False])


def test_gzsl_without_calibration_never_predicts_unseen() -> None:
    assert gzsl_report(LOGITS, LABELS, SEEN, 0.0) == pytest.approx({"U": 0.0, "S": 1.0, "H": 0.0})


def test_calibration_moves_predictions_from_seen_to_unseen() -> None:
    # lambda 0.6 flips exactly the samples with gap < 0.6 (both unseen ones): everything right.
    assert gzsl_report(LOGITS, LABELS, SEEN, 0.6) == pytest.approx({"U": 1.0, "S": 1.0, "H": 1.0})
    # lambda 1.5 also flips the class-0 sample (gap 1.0) to unseen: S = (0 + 1) / 2.
    assert gzsl_report(LOGITS, LABELS, SEEN, 1.5) == pytest.approx({"U": 1.0, "S": 0.5, "H": 2 / 3})


def test_choose_calibration_finds_the_best_lambda() -> None:
    lam = choose_calibration(LOGITS, LABELS, SEEN)
    assert 0.5 < lam < 1.0
    assert gzsl_report(LOGITS, LABELS, SEEN, lam)["H"] == 1.0
    assert choose_calibration(LOGITS, LABELS, SEEN, grid=np.array([0.0, 1.5])) == 1.5


def test_gzsl_needs_seen_and_unseen_classes() -> None:
    with pytest.raises(ValueError):
        gzsl_report(LOGITS, LABELS, np.array([True, True, True]), 0.0)


def test_retrieval_hand_computed_with_multiple_captions_and_ties() -> None:
    text_to_image = np.array([0, 0, 1, 2])
    sim = np.array(
        [
            [0.1, 0.9, 0.5, 0.2],  # image 0: its 2nd caption is the top text -> hit (any caption counts)
            [0.8, 0.1, 0.7, 0.3],  # image 1: one wrong text above its caption -> rank 2
            [0.5, 0.5, 0.5, 0.5],  # image 2: tied with 3 wrong texts -> rank 4 (ties count against)
        ]
    )
    report = retrieval_metrics(sim, text_to_image)
    assert report["i2t_r1"] == pytest.approx(100 / 3)
    assert report["i2t_r5"] == report["i2t_r10"] == 100.0
    # Text 0 (image 0) has images 1 and 2 above it; texts 1, 2, 3 find their image first.
    assert report["t2i_r1"] == 75.0
    assert report["t2i_r5"] == report["t2i_r10"] == 100.0
    assert report["mR"] == pytest.approx((100 / 3 + 100 + 100 + 75 + 100 + 100) / 6)


def test_retrieval_gives_no_credit_for_constant_scores() -> None:
    report = retrieval_metrics(np.zeros((20, 40)), np.repeat(np.arange(20), 2))
    assert report["i2t_r1"] == report["t2i_r1"] == report["i2t_r10"] == 0.0


def naive_recall(sim: np.ndarray, text_to_image: np.ndarray) -> dict[str, float]:
    """Rank by sorting, one query at a time (continuous scores: no ties)."""
    out = {}
    for k in (1, 5, 10):
        hits = [
            np.isin(np.argsort(-row)[:k], np.flatnonzero(text_to_image == i)).any()
            for i, row in enumerate(sim)
        ]
        out[f"i2t_r{k}"] = 100 * np.mean(hits)
    for k in (1, 5, 10):
        hits = [text_to_image[j] in np.argsort(-sim[:, j])[:k] for j in range(sim.shape[1])]
        out[f"t2i_r{k}"] = 100 * np.mean(hits)
    return out


def test_retrieval_matches_sorting_and_random_mr_matches_random_scores() -> None:
    rng = np.random.default_rng(0)
    text_to_image = np.repeat(np.arange(30), 5)
    signal = 2.0 * (text_to_image[None, :] == np.arange(30)[:, None])
    sim = signal + rng.normal(size=(30, 150))
    report = retrieval_metrics(sim, text_to_image)
    naive = naive_recall(sim, text_to_image)
    for key, value in naive.items():
        assert report[key] == pytest.approx(value)

    random_runs = [retrieval_metrics(rng.normal(size=(30, 150)), text_to_image)["mR"] for _ in range(300)]
    assert np.mean(random_runs) == pytest.approx(random_mR(30, 5), rel=0.05)
    assert report["mR"] > 3 * random_mR(30, 5)


def test_random_mr_hand_computed() -> None:
    # 2 images, 1 caption each: R@1 = 1/2 both ways, R@5 = R@10 = 1.
    assert random_mR(2, 1) == pytest.approx(100 * (0.5 + 1 + 1 + 0.5 + 1 + 1) / 6)
