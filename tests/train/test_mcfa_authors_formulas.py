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
from tests.train.test_mcfa import _batch, _semantics, _task

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


# --- contrastive terms (ContrastiveLoss_new.py) ----------------------------------------------------------


def _authors_inter_mode(feat: torch.Tensor, label: torch.Tensor, tau: float) -> float:
    """Inter_Mode_Loss.forward (ContrastiveLoss_new.py 19-42) written out per anchor: cosines of the
    L2-normalised rows, e = exp(cos / tau); -log(mean of e over the other rows of its label / sum of e over
    every other row), summed over the anchors."""
    unit = [row / row.norm() for row in feat]
    total = 0.0
    for i in range(len(unit)):
        others = [j for j in range(len(unit)) if j != i]
        e = {j: math.exp(float(unit[i] @ unit[j]) / tau) for j in others}
        positives = [e[j] for j in others if label[j] == label[i]]
        total += -math.log((sum(positives) / len(positives)) / sum(e.values()))
    return total


def _authors_cross_mode(img: torch.Tensor, att: torch.Tensor, label: torch.Tensor, tau: float):
    """Cross_Mode_Loss.forward (ContrastiveLoss_new.py 53-83) per anchor: v2s, each image against the
    episode's class rows (its own is the positive), summed; s2v, each class row against the images, -log
    of the mean of e over its images / the sum of e over all images, summed."""
    unit_img = [row / row.norm() for row in img]
    unit_att = [row / row.norm() for row in att]
    e = [[math.exp(float(v @ s) / tau) for s in unit_att] for v in unit_img]
    v2s = sum(-math.log(e[i][int(label[i])] / sum(e[i])) for i in range(len(img)))
    s2v = 0.0
    for c in range(len(att)):
        own = [e[i][c] for i in range(len(img)) if label[i] == c]
        s2v += -math.log((sum(own) / len(own)) / sum(e[i][c] for i in range(len(img))))
    return v2s, s2v


def test_v2v_of_three_samples_of_one_class_by_hand() -> None:
    """ContrastiveLoss_new.py 32-42 on (1,0), (1,0), (0,1), one label, tau 2 (single_experiment.py 69):
    every other row is a positive, so each anchor's mean / sum is 1/2 whatever the cosines: the authors'
    sum is 3 log 2. rsz's default (mean of -log over positives) differs: anchors 0 and 1 see cosines 1
    and 0, log(e^(1/2) + 1) - 1/4 each; anchor 2 sees 0 and 0, log 2."""
    feat = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    label = torch.zeros(3, dtype=torch.long)
    authors_sum = 3 * math.log(2)
    assert _authors_inter_mode(feat, label, 2.0) == pytest.approx(authors_sum)
    pooled = L.supervised_contrastive(feat, feat, label, label, 2.0, exclude_self=True, mean_in_log=True)
    assert pooled.item() == pytest.approx(authors_sum / 3, abs=1e-6)
    rsz = L.supervised_contrastive(feat, feat, label, label, 2.0, exclude_self=True)
    by_hand = (2 * (math.log(math.exp(0.5) + 1) - 0.25) + math.log(2)) / 3
    assert rsz.item() == pytest.approx(by_hand, abs=1e-6)


def test_v2v_authors_form_on_an_episode() -> None:
    """2 classes x 3 images (their 5-way 5-shot episodes, single_experiment.py 67-68, in small), rows of
    different norms (the loss normalises, ContrastiveLoss_new.py 22), tau 2."""
    feat = torch.tensor([[2.0, 0.5], [1.0, 1.0], [0.3, -1.0], [-1.0, 0.2], [-4.0, -1.0], [0.5, 2.0]])
    label = torch.tensor([0, 0, 0, 1, 1, 1])
    expected = _authors_inter_mode(feat, label, 2.0) / len(feat)
    loss = L.supervised_contrastive(feat, feat, label, label, 2.0, exclude_self=True, mean_in_log=True)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_v2s_and_s2v_by_hand() -> None:
    """Cross_Mode_Loss on images (3,0), (0,1), (-1,0), (0,-2) of classes 0, 0, 1, 1 and class rows (2,0),
    (-1,0), tau 1. Cosines: image 0: 1, -1; image 1: 0, 0; image 2: -1, 1; image 3: 0, 0.
    v2s (ContrastiveLoss_new.py 60-66): 2 log(1 + e^-2) + 2 log 2 over 4 images.
    s2v (72-80): each class row's sum over images is D = e + 1 + e^-1 + 1 and its own images' mean
    (e + 1) / 2: 2 (log D - log((e + 1) / 2)) over 2 classes; rsz's default form gives log D - 1/2 each."""
    img = torch.tensor([[3.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -2.0]])
    att = torch.tensor([[2.0, 0.0], [-1.0, 0.0]])
    label, classes = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1])
    e = math.e
    v2s_sum = 2 * math.log(1 + e**-2) + 2 * math.log(2)
    d = e + 1 + 1 / e + 1
    s2v_sum = 2 * (math.log(d) - math.log((e + 1) / 2))
    assert _authors_cross_mode(img, att, label, 1.0) == pytest.approx((v2s_sum, s2v_sum))
    v2s = L.supervised_contrastive(img, att, label, classes, 1.0)
    assert v2s.item() == pytest.approx(v2s_sum / 4, abs=1e-6)
    s2v = L.supervised_contrastive(att, img, classes, label, 1.0, mean_in_log=True)
    assert s2v.item() == pytest.approx(s2v_sum / 2, abs=1e-6)
    assert L.supervised_contrastive(att, img, classes, label, 1.0).item() == pytest.approx(
        math.log(d) - 0.5, abs=1e-6
    )


def test_a_batch_without_positive_pairs_gives_a_zero_not_nan() -> None:
    """One image per class: v2v has no positive pair. The masked self logits are -inf, and -inf * 0 made
    the 'no positive' zero a nan that would poison the step."""
    points = torch.eye(3, requires_grad=True)
    labels = torch.arange(3)
    for pooled in (False, True):
        loss = L.supervised_contrastive(points, points, labels, labels, 2.0, True, mean_in_log=pooled)
        assert loss.item() == 0.0
        loss.backward()
        assert torch.isfinite(points.grad).all()


def test_authors_contrast_form_in_the_model_uses_the_episode_classes(monkeypatch) -> None:
    """contrast_form "authors" (mcfa_resnet18): v2s against the episode's class latents only (their batches
    carry the c_way classes' attributes alone, data_loader.py next_batch), s2v with the mean in the log;
    the expected values are the authors' formulas on the model's latents (z = mu here), / N and / C."""
    monkeypatch.setattr(L, "reparameterize", lambda mu, logvar: mu)
    # a sharp temperature: the untrained latents of a class are nearly parallel, and the mean in or out of
    # the log would otherwise differ by less than float32 can tell
    model = _paper_model(temperature=0.05).eval()
    assert model.config.contrast_form == "authors"
    first, second = _batch(model, seed=0), _batch(model, seed=1)  # 4 images of each class
    images, labels = (
        torch.cat([first["image"], second["image"]]),
        torch.cat([first["label"], second["label"]]),
    )
    keep = (labels == 0) | (labels == 2)  # an episode of classes 0 and 2 out of 4
    batch = {"image": images[keep], "label": labels[keep], "class_inputs": first["class_inputs"]}
    with torch.no_grad():
        parts = model.training_losses(batch)
        mu_v = model.encode_images(batch["image"])
        class_mu = model.encode_classes(batch["class_inputs"])[torch.tensor([0, 2])]
    episode_label = batch["label"] // 2  # classes 0, 2 -> rows 0, 1 of the episode's class latents
    v2s, s2v = _authors_cross_mode(mu_v, class_mu, episode_label, model.config.temperature)
    v2v = _authors_inter_mode(mu_v, batch["label"], model.config.temperature)
    assert parts["contrast_vs"].item() == pytest.approx(v2s / len(mu_v), rel=1e-5)
    assert parts["contrast_sv"].item() == pytest.approx(s2v / 2, rel=1e-5)
    assert parts["contrast_vv"].item() == pytest.approx(v2v / len(mu_v), rel=1e-5)


def test_an_unknown_contrast_form_is_a_one_line_error() -> None:
    from rsz_infer.errors import RszError

    with pytest.raises(RszError, match="model.contrast_form 'paper': expected rsz or authors"):
        _paper_model(contrast_form="paper")


# --- the final stage (vaemodel.py train_classifier, final_classifier.py, single_experiment.py) -----------


def test_final_stage_trains_on_the_authors_sample_counts_and_epochs(monkeypatch) -> None:
    """single_experiment.py 77-91: GZSL: 200 latents per seen class from its images' posteriors and 400 per
    unseen class from its class posterior, a classifier over all classes, 23 epochs (cls_train_steps);
    ZSL: no seen latents, 200 per unseen class, a classifier over the unseen classes, 50 epochs. Both at
    lr_cls 1e-3 (51), batches of 32 (vaemodel.py Model.__init__: classifier_batch_size = 32);
    final_classifier.py CLASSIFIER's Adam betas (beta1 0.5, 0.999), which rsz-infer's fit also gets."""
    from rsz_train.models import mcfa

    fits = []

    def record(z, y, num_classes, epochs, lr, batch_size, seed):
        fits.append({"counts": torch.bincount(y).tolist(), "classes": num_classes, "epochs": epochs})
        fits[-1].update(lr=lr, batch_size=batch_size, dim=z.shape[1])
        return torch.nn.Linear(z.shape[1], num_classes)

    monkeypatch.setattr(mcfa, "fit_latent_classifier", record)
    model = _paper_model().eval()
    latent = model.config.latent_dim
    seen_labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])  # 3 and 5 training images: cycled up to 200
    posteriors = (torch.randn(8, latent), torch.zeros(8, latent))
    class_inputs = model.class_inputs(_semantics())  # classes 0, 1 seen; 2, 3 unseen
    model.final_stage(posteriors, seen_labels, class_inputs, num_seen=2, seed=0)
    gzsl, zsl = fits
    common = {"lr": 0.001, "batch_size": 32, "dim": latent}
    assert gzsl == {"counts": [200, 200, 400, 400], "classes": 4, "epochs": 23, **common}
    assert zsl == {"counts": [200, 200], "classes": 2, "epochs": 50, **common}
    fit = model.classifier_fit()  # rsz-infer's fit of new classes: the ZSL classifier's settings
    assert (fit["samples_per_class"], fit["epochs"], fit["lr"], fit["batch_size"]) == (200, 50, 0.001, 32)
    assert fit["betas"] == [0.5, 0.999]


# --- mcfa_resnet18 against single_experiment.py ----------------------------------------------------------


def test_paper_config_has_the_authors_settings() -> None:
    """single_experiment.py 44-73: lr_gen_model 1.5e-4 (46), epochs 51 = range(1, 51), i.e. 50 (48;
    vaemodel.py 241), latent 64 and hidden (512, 512) / (256, 256) (53-55), factors 10 / 1 / 100 / 100 /
    10 (61-65), c_way 5, k_shot 5 (67-68), tau 2 (69). vaemodel.py 101: Adam, betas (0.9, 0.999),
    weight_decay 0, amsgrad; 225-227: no gradient clipping. Features are precomputed there: no
    augmentation, no dropout."""
    config = load_config("mcfa", "mcfa_resnet18")
    train, model = config.train, config.model
    assert (train.lr, train.weight_decay, train.amsgrad, train.grad_clip) == (1.5e-4, 0.0, True, 0.0)
    assert (train.epochs, train.warmup_epochs, train.classes_per_batch, train.images_per_class) == (
        50,
        0,
        5,
        5,
    )
    assert train.sampler == "auto" and not train.augment  # auto = MCFA's class-balanced episodes
    assert (model.latent_dim, model.hidden_dim, model.semantic_hidden_dim) == (64, 512, 256)
    assert (model.temperature, model.contrast_form, model.input_dropout) == (2.0, "authors", 0.0)
    weights = (
        model.reconstruction_weight,
        model.kl_weight,
        model.cross_reconstruction_weight,
        model.distribution_weight,
        model.contrast_vv_weight,
        model.contrast_vs_weight,
        model.contrast_sv_weight,
    )
    assert weights == (1.0, 1.0, 10.0, 1.0, 100.0, 100.0, 10.0)
    assert model.warmup_steps <= 1  # no warm-up: see test_paper_config_weighs_every_term_fully_...
    assert model.inference == "classifier"
