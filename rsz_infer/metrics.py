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


def retrieval_metrics(sim: np.ndarray, text_to_image: np.ndarray) -> dict[str, float]:
    """Image<->text retrieval recall in percent, from similarities [N_images, N_texts].

    `text_to_image[j]` is the image that caption j describes. Image->text: an image is a hit at K if ANY
    of its captions is within its top K texts. Text->image: a caption is a hit if its image is within the
    top K. Ties count against the model: the rank of the right item is the number of wrong items scored
    at least as high, so a model that scores everything equal does not get credit.
    Images without any caption are left out of image->text.
    """
    sim = np.asarray(sim, dtype=np.float32)
    text_to_image = np.asarray(text_to_image, dtype=np.int64)
    n_images, n_texts = sim.shape
    if text_to_image.shape != (n_texts,):
        raise ValueError(f"text_to_image has shape {text_to_image.shape}, expected ({n_texts},)")
    if n_texts == 0 or text_to_image.min() < 0 or text_to_image.max() >= n_images:
        raise ValueError(f"text_to_image must map each of the {n_texts} texts to an image in [0, {n_images})")

    is_caption = text_to_image[None, :] == np.arange(n_images)[:, None]  # [N_images, N_texts]
    has_caption = is_caption.any(axis=1)
    best_right_text = np.where(is_caption, sim, -np.inf).max(axis=1)
    i2t_rank = ((sim >= best_right_text[:, None]) & ~is_caption).sum(axis=1)[has_caption]

    right_image_score = sim[text_to_image, np.arange(n_texts)]
    t2i_rank = ((sim >= right_image_score[None, :]) & ~is_caption).sum(axis=0)

    report: dict[str, float] = {}
    for k in (1, 5, 10):
        report[f"i2t_r{k}"] = 100.0 * float(np.mean(i2t_rank < k))
    for k in (1, 5, 10):
        report[f"t2i_r{k}"] = 100.0 * float(np.mean(t2i_rank < k))
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
