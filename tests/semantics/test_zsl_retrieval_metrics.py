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
            [0.5, 0.5, 0.5, 0.5],  # image 2: its caption tied with 3 wrong texts -> top-1 in 1 of 4 orders
        ]
    )
    report = retrieval_metrics(sim, text_to_image)
    assert report["i2t_r1"] == pytest.approx(100 * (1 + 0 + 1 / 4) / 3)
    assert report["i2t_r5"] == report["i2t_r10"] == 100.0
    # Text 0 (image 0) has images 1 and 2 above it; texts 1, 2, 3 find their image first.
    assert report["t2i_r1"] == 75.0
    assert report["t2i_r5"] == report["t2i_r10"] == 100.0
    assert report["mR"] == pytest.approx((100 * 1.25 / 3 + 100 + 100 + 75 + 100 + 100) / 6)


def test_retrieval_puts_constant_scores_at_chance_exactly() -> None:
    """Everything tied: every order of the texts (images) is equally likely, so R@K is chance level, not 0
    (the old rule counted ties against the model) nor 100. 20 images, 2 captions each, 40 texts:
    i2t R@K = 1 - C(38, K) / C(40, K), t2i R@K = K / 20, and mR is random_mR(20, 2)."""
    report = retrieval_metrics(np.zeros((20, 40)), np.repeat(np.arange(20), 2))
    assert report["i2t_r1"] == pytest.approx(100 * 2 / 40)
    assert report["i2t_r5"] == pytest.approx(100 * (1 - 35 * 34 / (40 * 39)))  # C(38,5)/C(40,5)
    assert report["i2t_r10"] == pytest.approx(100 * (1 - 30 * 29 / (40 * 39)))
    assert (report["t2i_r1"], report["t2i_r5"], report["t2i_r10"]) == pytest.approx((5.0, 25.0, 50.0))
    assert report["mR"] == pytest.approx(random_mR(20, 2))


def test_retrieval_gives_nan_scores_no_credit() -> None:
    """A NaN score (an FP16 graph that overflowed) ranks below every number: nothing compares with NaN, so
    counting wrong items above it found none and every query was a hit (all-NaN scores gave mR 100)."""
    everything_nan = retrieval_metrics(np.full((20, 40), np.nan), np.repeat(np.arange(20), 2))
    assert everything_nan["mR"] == pytest.approx(random_mR(20, 2))  # all tied at the bottom: chance
    sim = np.eye(3, dtype=np.float32)  # every caption (one per image) first for its image and vice versa
    sim[1, 1] = np.nan  # image 1's score with its caption: below the two wrong texts (0.0) in its row
    report = retrieval_metrics(sim, np.arange(3))
    assert (report["i2t_r1"], report["t2i_r1"]) == pytest.approx((200 / 3, 200 / 3))
    assert report["i2t_r5"] == report["t2i_r5"] == 100.0
    assert np.isnan(sim[1, 1])  # the caller's array is left as it was


def test_retrieval_caption_text_shared_by_two_images() -> None:
    """RSICD repeats caption texts across images: identical text, identical embedding, an exact tie."""
    text_to_image = np.array([0, 1, 2])  # texts 0 and 1 are the same sentence, of images 0 and 1
    sim = np.array(
        [
            [0.9, 0.9, 0.1],  # image 0: its caption tied with text 1 (wrong): top-1 in half the orders
            [0.6, 0.6, 0.2],  # image 1: the same, tied with text 0
            [0.3, 0.3, 0.8],  # image 2: its caption first
        ]
    )
    report = retrieval_metrics(sim, text_to_image)
    assert report["i2t_r1"] == pytest.approx(100 * (0.5 + 0.5 + 1) / 3)  # old rule: 100 / 3
    assert report["i2t_r5"] == 100.0
    # Text 1's column is text 0's: image 0 (0.9) above its image 1 (0.6): a miss at K=1 either way.
    assert report["t2i_r1"] == pytest.approx(100 * 2 / 3)
    assert report["t2i_r5"] == 100.0


def test_retrieval_two_identical_images() -> None:
    """Two identical images score every text the same: each is tied with the other for its captions."""
    text_to_image = np.array([0, 1, 2, 2])
    sim = np.array(
        [
            [0.9, 0.2, 0.1, 0.0],
            [0.9, 0.2, 0.1, 0.0],  # image 1 = image 0
            [0.1, 0.3, 0.8, 0.7],
        ]
    )
    report = retrieval_metrics(sim, text_to_image)
    # Text 0: images 0 and 1 tied at the top -> 1/2 at K=1. Text 1: image 2 above (0.3), then images 0 and 1
    # tied at 0.2 -> 0 at K=1, 1/2 at K=2, 1 at K=5. Texts 2, 3: image 2 first.
    assert report["t2i_r1"] == pytest.approx(100 * (0.5 + 0 + 1 + 1) / 4)  # old rule: 50
    assert report["t2i_r5"] == 100.0
    # Image 1's caption (text 1) has text 0 above it: a miss at K=1; images 0 and 2 find a caption first.
    assert report["i2t_r1"] == pytest.approx(100 * 2 / 3)
    assert report["i2t_r5"] == 100.0


def test_expected_hit_matches_all_orders_of_the_tied_items() -> None:
    """P(a right item is in the top K) when g wrong items are above the best right score and t wrong and m
    right items tie at it, against counting over every order of the t + m tied items."""
    from itertools import permutations

    from rsz_infer.metrics import _expected_hit

    cases = [(g, t, m, k) for g in range(3) for t in range(5) for m in range(1, 4) for k in (1, 2, 3, 5, 10)]
    g, t, m = (np.array(column) for column in zip(*[c[:3] for c in cases]))
    for k in (1, 2, 3, 5, 10):
        got = _expected_hit(g, t, m, k)
        for i, (gi, ti, mi, ki) in enumerate(cases):
            if ki != k:
                continue
            orders = list(permutations([False] * ti + [True] * mi))  # True: a right item
            brute = np.mean([gi < k and any(order[: k - gi]) for order in orders])
            assert got[i] == pytest.approx(brute, abs=1e-12), (gi, ti, mi, k)


def argsort_recall_over_all_orders(sim: np.ndarray, text_to_image: np.ndarray) -> dict[str, float]:
    """The authors' ranking (a stable argsort: ties broken by position), averaged over every order of the
    texts (for i2t) and of the images (for t2i)."""
    from itertools import permutations

    n_images, n_texts = sim.shape
    with_captions = np.unique(text_to_image)
    out = {}
    for k in (1, 5, 10):
        runs = []
        for order in permutations(range(n_texts)):
            s, owner = sim[:, order], text_to_image[list(order)]
            hits = [
                np.isin(np.argsort(-s[i], kind="stable")[:k], np.flatnonzero(owner == i)).any()
                for i in with_captions
            ]
            runs.append(np.mean(hits))
        out[f"i2t_r{k}"] = 100 * np.mean(runs)
    for k in (1, 5, 10):
        runs = []
        for order in permutations(range(n_images)):
            position = np.argsort(order)  # where each image went
            s = sim[list(order)]
            hits = [
                position[text_to_image[j]] in np.argsort(-s[:, j], kind="stable")[:k] for j in range(n_texts)
            ]
            runs.append(np.mean(hits))
        out[f"t2i_r{k}"] = 100 * np.mean(runs)
    return out


def test_retrieval_with_ties_is_argsort_averaged_over_tie_orders() -> None:
    """Integer scores 0..2 (ties everywhere), uneven captions per image and one image without any: the
    metric equals the authors' argsort ranking averaged over all orders of texts and images."""
    rng = np.random.default_rng(3)
    text_to_image = np.array([0, 0, 0, 1, 2, 3])  # image 4 has no caption
    for _ in range(3):
        sim = rng.integers(0, 3, size=(5, 6)).astype(np.float32)
        report = retrieval_metrics(sim, text_to_image)
        brute = argsort_recall_over_all_orders(sim, text_to_image)
        for key, value in brute.items():
            assert report[key] == pytest.approx(value, abs=1e-9), key


def old_rule_recall(sim: np.ndarray, text_to_image: np.ndarray) -> dict[str, float]:
    """The rule before 2026-12-04 (ties counted against the model): the same figures when nothing ties."""
    is_caption = text_to_image[None, :] == np.arange(sim.shape[0])[:, None]
    has_caption = is_caption.any(axis=1)
    best = np.where(is_caption, sim, -np.inf).max(axis=1)
    i2t_rank = ((sim >= best[:, None]) & ~is_caption).sum(axis=1)[has_caption]
    right = sim[text_to_image, np.arange(sim.shape[1])]
    t2i_rank = ((sim >= right[None, :]) & ~is_caption).sum(axis=0)
    out = {f"i2t_r{k}": 100.0 * float(np.mean(i2t_rank < k)) for k in (1, 5, 10)}
    out.update({f"t2i_r{k}": 100.0 * float(np.mean(t2i_rank < k)) for k in (1, 5, 10)})
    return out


def test_retrieval_without_ties_is_unchanged() -> None:
    rng = np.random.default_rng(7)
    for n_images, n_texts in ((12, 30), (40, 90), (25, 25)):
        text_to_image = rng.integers(0, n_images, size=n_texts)  # uneven, some images without captions
        signal = 1.5 * (text_to_image[None, :] == np.arange(n_images)[:, None])
        sim = (signal + rng.normal(size=(n_images, n_texts))).astype(np.float32)
        report = retrieval_metrics(sim, text_to_image)
        for key, value in old_rule_recall(sim, text_to_image).items():
            assert report[key] == pytest.approx(value, abs=1e-9), key


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
