"""rsz_infer.scoring.hubness_offsets: the hubness correction's per-class term, on hand-computed vectors."""

from __future__ import annotations

import numpy as np
import pytest

from rsz_infer.scoring import class_logits, hubness_offsets

TRAINED = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # three trained classes


def test_mean_cosine_to_the_nearest_trained_classes_leaving_a_class_itself_out() -> None:
    # class 0 is trained row 0: its neighbours are rows 2 (cos 1/sqrt 2) and 1 (cos 0), not itself (cos 1);
    # class 1, new, has cosines 1/sqrt 1.04 = 0.98058, 0.2/sqrt 1.04 = 0.19612 and 1.2/sqrt 2.08 = 0.83205
    classes = np.array([[2.0, 0.0], [1.0, 0.2]])
    offsets = hubness_offsets(classes, TRAINED, np.array([0, -1]), neighbours=2)
    assert offsets == pytest.approx([(0.5**0.5 + 0.0) / 2, (0.98058 + 0.83205) / 2], abs=1e-5)
    one = hubness_offsets(classes, TRAINED, np.array([0, -1]), neighbours=1)
    assert one == pytest.approx([0.5**0.5, 0.98058], abs=1e-5)


def test_more_neighbours_than_trained_classes_takes_them_all() -> None:
    offsets = hubness_offsets(np.array([[1.0, 0.2]]), TRAINED, np.array([-1]), neighbours=10)
    assert offsets == pytest.approx([(0.98058 + 0.19612 + 0.83205) / 3], abs=1e-5)


def test_offsets_come_off_the_similarity_before_the_scale() -> None:
    image, classes = np.array([[1.0, 0.0]]), np.array([[1.0, 0.0], [0.0, 1.0]])
    logits = class_logits(image, classes, "cosine", 10.0, offsets=np.array([0.25, -0.5]))
    assert logits == pytest.approx(np.array([[10.0 * 0.75, 10.0 * 0.5]]))


@pytest.mark.parametrize("neighbours", [2, 3, 5])
def test_a_new_class_has_the_same_offset_whatever_is_scored_beside_it(neighbours: int) -> None:
    """Training scores every class (the trained ones too); a class file may hold only new ones. With as
    many neighbours as trained classes, a trained class can take one fewer (itself is left out) while a new
    class still takes them all."""
    new = np.array([[1.0, 0.2], [0.3, 1.0]])
    alone = hubness_offsets(new, TRAINED, np.array([-1, -1]), neighbours)
    beside = hubness_offsets(np.vstack([TRAINED, new]), TRAINED, np.array([0, 1, 2, -1, -1]), neighbours)
    assert beside[3:] == pytest.approx(alone, abs=1e-6)
    k = min(neighbours, 2)  # a trained class: its two other trained classes at most
    assert beside[0] == pytest.approx(np.sort([0.0, 0.5**0.5])[::-1][:k].mean(), abs=1e-6)
