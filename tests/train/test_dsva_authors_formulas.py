"""DSVA's losses and GZSL scoring against the authors' formulas, on hand-computed values.

The authors' code: wenjiaXu/RS_Scene_ZSL at commit 9acbc9fa (model/model.py, model/main.py,
model/main_utils.py) and 6e26236f (script/*.sh); line numbers as read there. Where rsz departs on purpose
(docs/DESIGN.md, "The papers' training"), the docstring says how, and the expected value is rsz's.
The per-branch sum of cross-entropies and MSEs with the script's weights is
test_paper_schedules.test_dsva_per_branch_losses_follow_the_authors_loss_fn.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rsz_infer.scoring import calibrated_stacking
from rsz_train.config import load_config
from rsz_train.evaluate import model_zsl_gzsl_scores
from rsz_train.losses.dsva import compatibility_loss, concentration_loss, regression_loss
from rsz_train.models.base import TaskInfo
from rsz_train.models.dsva import DSVAConfig
from rsz_train.models.registry import create_model


def _paper_model(num_attributes: int, **changes) -> torch.nn.Module:
    """dsva_vit_b32's model settings on a small ViT (the heads and losses are what these tests look at)."""
    config = load_config("dsva", "dsva_vit_b32").model
    config = DSVAConfig(**{**config.__dict__, "backbone": "vit_tiny", **changes})
    names = [f"a{i}" for i in range(num_attributes)]
    torch.manual_seed(0)
    return create_model("dsva", config, TaskInfo(names, names, ["g"] * num_attributes, 32, 2)).eval()


def test_compatibility_is_one_cross_entropy_over_the_class_scores():
    """model/model.py line 168 `output_final = self.softmax(pre_attri_final.mm(attribute))` (line 148 the
    same for the local branch): a class's score is the predicted attribute vector times the class's
    attribute column; main.py line 87 `criterion = nn.CrossEntropyLoss()` and main_utils.py line 603
    `criterion(output, label_v)` then take the cross-entropy of those softmax outputs, a second softmax.
    rsz takes one cross-entropy of the scores (DESIGN.md: the double softmax fixed), with rsz's scale x
    cosine rule; `scoring_rule: dot` at scale 1 gives the authors' scores pre_attri.mm(attribute)."""
    predicted = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    classes = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # the rows are classes (the authors' columns)
    labels = torch.tensor([1, 0])
    cosine = _paper_model(2, learn_scale=False, logit_scale=2.0)
    # cos = [[0.6, 0.8], [1, 0]], x 2 = [[1.2, 1.6], [2, 0]]: -log softmax of the right class
    expected = 0.5 * (math.log(1 + math.exp(-0.4)) + math.log(1 + math.exp(-2.0)))  # 0.31997
    got = compatibility_loss(cosine.logits(predicted, classes), labels).item()
    assert got == pytest.approx(expected, rel=1e-6)
    dot = _paper_model(2, scoring_rule="dot", learn_scale=False, logit_scale=1.0)
    # predicted.mm(classes.T) = [[3, 8], [1, 0]]
    expected = 0.5 * (math.log(1 + math.exp(-5.0)) + math.log(1 + math.exp(-1.0)))  # 0.15999
    got = compatibility_loss(dot.logits(predicted, classes), labels).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_regression_is_the_mean_squared_error_to_the_attribute_rows_of_the_labels():
    """model/main.py line 151 `label_a = attribute_seen[:, label_v].t()` (each image's class attribute
    vector) and line 88 `criterion_regre = nn.MSELoss()` (the mean over every image and attribute),
    applied to each branch: main_utils.py line 608 `criterion_regre(pre_attri['final'], label_a)` (global)
    and line 632 `criterion_regre(pre_attri[name], label_a)` (local)."""
    classes = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([1, 1, 0])
    predicted = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0], [0.0, 0.0, -2.0]])
    # squared errors: (0 + 1 + 4) + 0 + (0 + 0 + 4) = 9 over 3 x 3 entries
    assert regression_loss(predicted, classes, labels).item() == pytest.approx(1.0)
    model = _paper_model(3, concentration_weight=0.0)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        losses = model.training_losses({"image": images, "label": labels, "class_inputs": classes})
        out = model.attribute_outputs(images)
    target = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])  # classes[labels], by hand
    for branch in ("global", "local"):  # each branch's own term, unscaled (the weights apply in "loss")
        expected = float(((out[branch].numpy() - target) ** 2).mean())
        assert losses[f"{branch}_regression"].item() == pytest.approx(expected, rel=1e-5)


def test_concentration_weights_squared_cell_distances_to_the_peak():
    """model/main_utils.py lines 572-588, get_middle_graph: the mask of a peak at cell (x, y) holds
    (i - x)^2 + (j - y)^2 at cell (i, j); lines 642-647: `peak_id = torch.argmax(...)` and
    `cpt * torch.sum(model.sigmoid(attention[name]) * peak_mask)`, a sum over images, attributes and cells
    of sigmoid(raw scores). rsz keeps the squared distance to the argmax cell, weights it by the softmax
    map (each map sums to 1), divides by the side^2 and takes the mean over (image, attribute), so its
    weight does not grow with the batch, the attributes or the grid (DESIGN.md: DSVA concentration)."""
    maps = torch.zeros(2, 1, 3, 3)
    maps[0, 0, 0, 0], maps[0, 0, 0, 1], maps[0, 0, 2, 2] = 0.5, 0.3, 0.2  # peak (0, 0): d^2 1 and 8
    maps[1, 0, 1, 1], maps[1, 0, 0, 0], maps[1, 0, 2, 1] = 0.6, 0.1, 0.3  # peak (1, 1): d^2 2 and 1
    expected = (0.3 * 1 + 0.2 * 8 + 0.1 * 2 + 0.3 * 1) / (2 * 3**2)  # = 2.4 / 18
    assert concentration_loss(maps).item() == pytest.approx(expected, rel=1e-6)


def test_calibrated_stacking_subtracts_lambda_from_the_seen_class_logits():
    """model/main_utils.py lines 154-176, calibrated_stacking: `output[:, seen_L] = output[:, seen_L] - lam`
    (line 174), applied at lines 226-227 to the local and global outputs, which are softmax probabilities
    (model.py lines 148 and 168). rsz subtracts lambda from the logits, scale x cosine (rsz_infer.scoring;
    DESIGN.md says why). The two rules pick different classes: image 0's logits (4, 0, 3) are the
    probabilities (0.721, 0.013, 0.265); at lambda 0.7 its seen class 0 still wins by logits
    (3.3 > 3.0), where the authors' rule would already pick the unseen class 2 (0.021 < 0.265)."""
    model = _paper_model(3, learn_scale=False, logit_scale=5.0)  # hubness_penalty 0, as the paper's
    class_emb = np.eye(3, dtype=np.float32)  # classes 0 and 1 seen, 2 unseen
    image_emb = np.array([[0.8, 0.0, 0.6], [0.0, 1.0, 0.0]], dtype=np.float32)  # unit length
    labels = np.array([2, 1])
    logits = 5.0 * image_emb @ class_emb.T  # [[4, 0, 3], [0, 5, 0]]
    seen = np.array([True, True, False])
    expected = np.array([[3.3, -0.7, 3.0], [-0.7, 4.3, 0.0]], dtype=np.float32)
    assert np.allclose(calibrated_stacking(logits, seen, 0.7), expected, atol=1e-6)
    low = model_zsl_gzsl_scores(model, image_emb, labels, class_emb, [0, 1], [2], seen_calibration=0.7)
    assert (low["gzsl"]["U"], low["gzsl"]["S"], low["gzsl"]["H"]) == (0.0, 1.0, 0.0)
    assert low["zsl"] == 1.0 and low["gzsl"]["seen_calibration"] == pytest.approx(0.7)
    # past the logit gap of 1 the unseen image switches: (2.8, -1.2, 3.0)
    high = model_zsl_gzsl_scores(model, image_emb, labels, class_emb, [0, 1], [2], seen_calibration=1.2)
    assert (high["gzsl"]["U"], high["gzsl"]["S"], high["gzsl"]["H"]) == (1.0, 1.0, 1.0)
    assert (low["gzsl_uncalibrated"]["U"], low["gzsl_uncalibrated"]["S"]) == (0.0, 1.0)
