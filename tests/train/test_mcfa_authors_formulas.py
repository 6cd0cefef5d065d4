"""MCFA's losses against the authors' code, on tensors small enough to work out by hand.

Line numbers are those of masuqiang/MCFA-Pytorch at commit b2b3692075a1ccd7e69ef7931631d8a8827e0a91
(vaemodel.py, ContrastiveLoss_new.py, single_experiment.py). The authors sum every term over the batch
(and L1 and KL over feature dimensions too); rsz takes means (docs/DESIGN.md, MCFA), so each expected value
below is the authors' sum, worked out by hand, divided by the count rsz averages over.
"""

from __future__ import annotations

import math

import pytest
import torch

from rsz_train.config import load_config
from rsz_train.losses import mcfa as L
from rsz_train.models.registry import create_model
from tests.train.test_mcfa import _batch, _task

# --- CADA-VAE terms (vaemodel.py Model.trainstep) ------------------------------------------------------


def test_reconstruction_is_the_authors_l1_per_element() -> None:
    """vaemodel.py 107: nn.L1Loss(size_average=False), i.e. the sum of |x' - x| over every element
    (single_experiment.py 49: 'loss': 'l1'). |1-0| + |2-4| + |3-3| + |-1-1| = 5 over 4 elements."""
    reconstruction = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    target = torch.tensor([[0.0, 4.0], [3.0, 1.0]])
    authors_sum = 5.0
    assert L.reconstruction_loss(reconstruction, target).item() == pytest.approx(authors_sum / 4)


def test_kl_is_the_authors_kld_per_sample() -> None:
    """vaemodel.py 163-166: KLD = 0.5 * sum(1 + logvar - mu^2 - exp(logvar)) over batch and dimensions,
    and loss = reconstruction - KLD (weight 1). Elements: 1+0-1-1 = -1, 1+ln2-0-2 = ln2-1,
    1-ln2-0-1/2 = 1/2-ln2, 1+0-4-1 = -4; sum -5.5, so -KLD = 2.75 over 2 samples."""
    mu = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [math.log(0.5), 0.0]])
    authors_minus_kld = 2.75
    assert L.kl_to_standard_normal(mu, logvar).item() == pytest.approx(authors_minus_kld / 2, abs=1e-6)


def test_distribution_alignment_is_the_authors_wasserstein_per_sample() -> None:
    """vaemodel.py 189-191: distance = sqrt(sum (mu_img - mu_att)^2 + sum (sqrt(exp(logvar_img)) -
    sqrt(exp(logvar_att)))^2) per sample, summed. Row 0: means (0,0) vs (3,4), equal spreads: 5.
    Row 1: equal means, sigma (1,3) vs (1,1): sqrt(0 + 2^2) = 2. Sum 7 over 2 samples. (Note sigma is
    sqrt(exp(logvar)) here, not the exp(logvar) of their reparameterize, vaemodel.py 118.)"""
    mu_img = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    mu_att = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    logvar_img = torch.tensor([[0.0, 0.0], [0.0, 2 * math.log(3.0)]])
    logvar_att = torch.zeros(2, 2)
    authors_sum = 7.0
    distance = L.wasserstein_gaussians(mu_img, logvar_img, mu_att, logvar_att)
    assert distance.item() == pytest.approx(authors_sum / 2, abs=1e-6)


def _paper_model(**overrides: object):
    """mcfa_resnet18's model settings on a tiny backbone (the loss weights and schedule are what matter)."""
    model_cfg = load_config("mcfa", "mcfa_resnet18").model
    for key, value in {"backbone": "resnet_tiny", "pretrained": None, "hidden_dim": 32, **overrides}.items():
        setattr(model_cfg, key, value)
    return create_model("mcfa", model_cfg, _task())


def test_paper_config_weighs_every_term_fully_from_the_first_step() -> None:
    """MCFA's code has none of CADA-VAE's warm-ups: loss = reconstruction - KLD (vaemodel.py 166), then
    + cross_reconstruction_factor * cross (179-182), + distribution_alignment_factor * distance (193-196),
    + 100 v2v, 100 v2s, 10 s2v (203-218), constant factors from the first batch (single_experiment.py
    61-65: 10, 1, 100, 100, 10)."""
    torch.manual_seed(0)
    model = _paper_model().train()
    parts = model.training_losses(_batch(model))
    weights = {
        "reconstruction": 1.0,
        "kl": 1.0,
        "cross_reconstruction": 10.0,
        "distribution": 1.0,
        "contrast_vv": 100.0,
        "contrast_vs": 100.0,
        "contrast_sv": 10.0,
    }
    expected = sum(weight * parts[name].item() for name, weight in weights.items())
    assert parts["loss"].item() == pytest.approx(expected, rel=1e-6)


def test_cross_reconstruction_decodes_each_modality_from_the_other(monkeypatch) -> None:
    """vaemodel.py 173-177: the visual decoder on the class's latent against the image features, plus
    the semantic decoder on the image's latent against the class descriptor (z = mu here, so that the
    expected value can be recomputed from the encoders' means)."""
    monkeypatch.setattr(L, "reparameterize", lambda mu, logvar: mu)
    model = _paper_model().eval()
    batch = _batch(model)
    with torch.no_grad():
        parts = model.training_losses(batch)
        visual = model.image_features(batch["image"])
        semantic = model.semantic(batch["class_inputs"])[batch["label"]]
        mu_v, mu_s = model.visual_encoder(visual)[0], model.semantic_encoder(semantic)[0]
        img_from_att = model.visual_decoder(mu_s)
        att_from_img = model.semantic_decoder(mu_v)
    expected = (img_from_att - visual).abs().mean() + (att_from_img - semantic).abs().mean()
    assert parts["cross_reconstruction"].item() == pytest.approx(expected.item(), rel=1e-6)
