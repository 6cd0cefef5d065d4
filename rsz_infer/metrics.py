"""Metrics shared by training evaluation, inference and benchmarks (numpy).

Zero-shot labeling: per-class top-1 accuracy (the ZSL standard, so frequent classes do not dominate) and
generalised ZSL U/S/H with calibrated stacking. Retrieval: R@1/5/10 both ways and their mean mR, in percent
as the RSICD/RSITMD papers report them.
"""

from __future__ import annotations

import numpy as np

from rsz_infer.scoring import calibrated_stacking


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, classes: np.ndarray | None = None) -> float:
    """Mean over classes of top-1 accuracy, in [0, 1].

    `classes` restricts the mean to those class ids; classes without samples are skipped either way.
    """
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.shape != labels.shape:
        raise ValueError(f"pred has shape {pred.shape} but labels have {labels.shape}")
    present = np.unique(labels)
    if classes is not None:
        present = np.intersect1d(present, np.asarray(classes))
    if present.size == 0:
        raise ValueError("per_class_accuracy: no samples of the requested classes")
    correct = pred == labels
    return float(np.mean([correct[labels == c].mean() for c in present]))


def _check_gzsl(logits: np.ndarray, labels: np.ndarray, seen_mask: np.ndarray) -> np.ndarray:
    seen_mask = np.asarray(seen_mask, dtype=bool)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0] or logits.shape[1] != seen_mask.shape[0]:
        raise ValueError(
            f"logits {logits.shape}, labels {labels.shape}, seen_mask {seen_mask.shape} disagree"
        )
    if seen_mask.all() or not seen_mask.any():
        raise ValueError("GZSL needs both seen and unseen classes in the label space")
    return seen_mask


def gzsl_report(
    logits: np.ndarray, labels: np.ndarray, seen_mask: np.ndarray, seen_calibration: float
) -> dict[str, float]:
    """Generalised ZSL over all classes after calibrated stacking with lambda `seen_calibration`.

    U: per-class accuracy on samples of unseen classes, S: on samples of seen classes (both predicted
    among ALL classes), H: their harmonic mean. Fractions in [0, 1].
    """
    logits, labels = np.asarray(logits, dtype=np.float32), np.asarray(labels)
    seen_mask = _check_gzsl(logits, labels, seen_mask)
    pred = calibrated_stacking(logits, seen_mask, seen_calibration).argmax(axis=1)
    is_seen_sample = seen_mask[labels]
    unseen = per_class_accuracy(pred[~is_seen_sample], labels[~is_seen_sample])
    seen = per_class_accuracy(pred[is_seen_sample], labels[is_seen_sample])
    harmonic = 2 * unseen * seen / (unseen + seen) if unseen + seen > 0 else 0.0
    return {"U": unseen, "S": seen, "H": harmonic}


def choose_calibration(
    logits: np.ndarray, labels: np.ndarray, seen_mask: np.ndarray, grid: np.ndarray | None = None
) -> float:
    """The calibrated-stacking lambda that maximises H. Call it on the VALIDATION split only
    (val_seen + val_unseen); scoring the test split with a lambda chosen on it would be cheating.

    The default grid comes from the data: a sample switches from its best seen class to its best unseen
    class when lambda passes the gap between their scores, so quantiles of those gaps (plus 0, no
    calibration) cover every behaviour worth trying. Ties go to the lambda nearest 0.
    """
    logits, labels = np.asarray(logits, dtype=np.float32), np.asarray(labels)
    seen_mask = _check_gzsl(logits, labels, seen_mask)
    if grid is None:
        gaps = logits[:, seen_mask].max(axis=1) - logits[:, ~seen_mask].max(axis=1)
        # Just above a gap, so that sample has switched (at exactly the gap it is a tie).
        nudge = 1e-4 * max(float(np.abs(gaps).max()), 1e-6)
        grid = np.concatenate([[0.0], np.quantile(gaps, np.linspace(0, 1, 101)) + nudge])
    candidates = sorted(np.unique(np.asarray(grid, dtype=np.float64)), key=abs)
    best, best_h = 0.0, -1.0
    for seen_calibration in candidates:
        h = gzsl_report(logits, labels, seen_mask, float(seen_calibration))["H"]
        if h > best_h:
            best, best_h = float(seen_calibration), h
    return best


def _expected_hit(g: np.ndarray, t: np.ndarray, m: np.ndarray, k: int) -> np.ndarray:
    """P(a right item is within the top k) when the tied items come in a uniformly random order.

    Per query: g wrong items score above its best right item, t wrong items and m >= 1 right items tie at
    that score. A hit needs k > g and a right item among the first r = k - g of the t + m tied ones, so
    P = 1 - C(t, r) / C(t + m, r) = 1 - prod_{i<r} (t - i) / (t + m - i): 1 once r > t.
    """
    g, t, m = (np.asarray(a, dtype=np.int64) for a in (g, t, m))
    r = k - g
    p_all_wrong = np.ones(g.shape, dtype=np.float64)
    for i in range(k):
        factor = np.clip(t - i, 0, None) / np.maximum(t + m - i, 1)  # t - i > 0 gives t + m - i > 0
        p_all_wrong *= np.where(i < r, factor, 1.0)
    return np.where(r > 0, 1.0 - p_all_wrong, 0.0)


def retrieval_metrics(sim: np.ndarray, text_to_image: np.ndarray) -> dict[str, float]:
    """Image<->text retrieval recall in percent, from similarities [N_images, N_texts].

    `text_to_image[j]` is the image that caption j describes. Image->text: an image is a hit at K if ANY
    of its captions is within its top K texts. Text->image: a caption is a hit if its image is within the
    top K. Exact ties (a caption text several images share, two identical images) are taken in a uniformly
    random order, computed exactly: R@K is the expected recall over those orders, which is what a ranking
    by argsort (ties broken by position) gives on average, and a model that scores everything equal gets
    chance level. Without ties it is the plain R@K. Images without any caption are left out of image->text.
    A NaN score (an FP16 graph that overflowed) ranks below every other: nothing compares with NaN, so it
    would otherwise be a hit.
    """
    sim = np.asarray(sim, dtype=np.float32)
    if np.isnan(sim.sum(dtype=np.float64)):  # a sum, not np.isnan(sim).any(): no temporary as large as sim
        sim = np.where(np.isnan(sim), np.float32(-np.inf), sim)
    text_to_image = np.asarray(text_to_image, dtype=np.int64)
    n_images, n_texts = sim.shape
    if text_to_image.shape != (n_texts,):
        raise ValueError(f"text_to_image has shape {text_to_image.shape}, expected ({n_texts},)")
    if n_texts == 0 or text_to_image.min() < 0 or text_to_image.max() >= n_images:
        raise ValueError(f"text_to_image must map each of the {n_texts} texts to an image in [0, {n_images})")

    right_score = sim[text_to_image, np.arange(n_texts)]  # each caption's score with its own image
    has_caption = np.bincount(text_to_image, minlength=n_images) > 0
    best_right_text = np.full(n_images, -np.inf, dtype=np.float32)
    np.maximum.at(best_right_text, text_to_image, right_score)
    # Image->text: g wrong texts above the best caption (no caption is), t wrong and m right texts tied at it.
    i2t_above = np.count_nonzero(sim > best_right_text[:, None], axis=1)
    i2t_level = np.count_nonzero(sim == best_right_text[:, None], axis=1)
    i2t_right = np.bincount(
        text_to_image, weights=right_score == best_right_text[text_to_image], minlength=n_images
    ).astype(np.int64)
    i2t = (i2t_above[has_caption], (i2t_level - i2t_right)[has_caption], i2t_right[has_caption])
    # Text->image: one right image per caption (m = 1).
    t2i_right = np.ones(n_texts, dtype=np.int64)
    t2i_above = np.count_nonzero(sim > right_score[None, :], axis=0)
    t2i = (t2i_above, np.count_nonzero(sim == right_score[None, :], axis=0) - t2i_right, t2i_right)

    report: dict[str, float] = {}
    for k in (1, 5, 10):
        report[f"i2t_r{k}"] = 100.0 * float(np.mean(_expected_hit(*i2t, k)))
    for k in (1, 5, 10):
        report[f"t2i_r{k}"] = 100.0 * float(np.mean(_expected_hit(*t2i, k)))
    report["mR"] = float(np.mean(list(report.values())))
    return report


def random_mR(n_images: int, n_texts_per_image: int) -> float:
    """Expected mR (percent) of a random ranking, for the "at least 5x random" sanity check.

    Text->image: the right image is in the top K with probability K / N_images. Image->text: with m
    captions per image among N = m * N_images texts, P(none of the m in the top K) = C(N-m, K) / C(N, K).
    """
    if n_images < 1 or n_texts_per_image < 1:
        raise ValueError("random_mR needs at least one image and one caption per image")
    m, n_texts = n_texts_per_image, n_images * n_texts_per_image
    recalls = []
    for k in (1, 5, 10):
        k_texts = min(k, n_texts)
        p_no_caption = float(np.prod([(n_texts - m - i) / (n_texts - i) for i in range(k_texts)]))
        recalls.append(1.0 - max(p_no_caption, 0.0))
    for k in (1, 5, 10):
        recalls.append(min(k, n_images) / n_images)
    return 100.0 * float(np.mean(recalls))
