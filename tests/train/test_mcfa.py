"""MCFA: its losses on hand-checkable tensors, module shapes, a few training steps, export graphs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rsz_infer.errors import RszError
from rsz_infer.semantics import attribute_vectors
from rsz_train.losses import mcfa as L
from rsz_train.models.base import ClassSemantics, TaskInfo
from rsz_train.models.frozen import FrozenFeatureCache
from rsz_train.models.mcfa import MCFAConfig
from rsz_train.models.mcfa import phrase_attributes as L_phrase
from rsz_train.models.registry import create_model, model_entry

IMAGE_SIZE = 32
NUM_CLASSES = 4


def _semantics(num_classes: int = NUM_CLASSES, seed: int = 0) -> ClassSemantics:
    rng = np.random.default_rng(seed)
    sentence = rng.standard_normal((num_classes, 384)).astype(np.float32)
    sentence /= np.linalg.norm(sentence, axis=1, keepdims=True)
    return ClassSemantics(
        names=[f"class{i}" for i in range(num_classes)],
        descriptions=[f"description {i}" for i in range(num_classes)],
        attributes=rng.random((num_classes, 6)).astype(np.float32),
        sentence=sentence,
        glove=rng.standard_normal((num_classes, 50)).astype(np.float32),
    )


PHRASES = ["a runway", "red roofs", "dark blue water", "dense trees", "cars", "round storage tanks"]


def _task() -> TaskInfo:
    names = [f"attr{i}" for i in range(6)]
    return TaskInfo(names, PHRASES, ["g"] * 6, IMAGE_SIZE, NUM_CLASSES)


def _tiny(**overrides: object):
    config = MCFAConfig(backbone="resnet_tiny", pretrained=None, latent_dim=16, hidden_dim=64, **overrides)
    return create_model("mcfa", config, _task())


def _batch(model, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(2)
    # Images of one class share a colour offset, so there is something to learn.
    images = torch.randn(len(labels), 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen) * 0.3
    images += labels.float().view(-1, 1, 1, 1) - 1.5
    return {"image": images, "label": labels, "class_inputs": model.class_inputs(_semantics())}


# --- losses -------------------------------------------------------------------------------------------


def test_kl_is_zero_at_the_prior_and_half_mu_squared_off_it() -> None:
    zeros = torch.zeros(3, 4)
    assert L.kl_to_standard_normal(zeros, zeros).item() == pytest.approx(0.0)
    mu = torch.zeros(1, 4)
    mu[0, 0] = 2.0
    assert L.kl_to_standard_normal(mu, torch.zeros(1, 4)).item() == pytest.approx(2.0)  # 0.5 * 2^2


def test_wasserstein_is_the_distance_of_means_and_pulls_them_together() -> None:
    mu_a = torch.tensor([[0.0, 0.0]], requires_grad=True)
    mu_b = torch.tensor([[3.0, 4.0]])
    logvar = torch.zeros(1, 2)
    distance = L.wasserstein_gaussians(mu_a, logvar, mu_b, logvar)
    assert distance.item() == pytest.approx(5.0, abs=1e-4)
    distance.backward()
    step = -mu_a.grad  # gradient descent direction points from mu_a towards mu_b
    assert torch.allclose(step, torch.tensor([[0.6, 0.8]]), atol=1e-4)
    # Equal means, different spreads: |sigma_a - sigma_b| = |1 - e^1| per dimension.
    spread = L.wasserstein_gaussians(
        torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), torch.full((1, 1), 2.0)
    )
    assert spread.item() == pytest.approx(math.e - 1, abs=1e-4)


def test_reconstruction_loss_is_mean_absolute_error() -> None:
    assert L.reconstruction_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])).item() == 1.5


def test_supervised_contrastive_matches_hand_computation() -> None:
    anchors = torch.tensor([[1.0, 0.0]])
    candidates = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # cosines 1 and 0
    loss = L.supervised_contrastive(anchors, candidates, torch.tensor([0]), torch.tensor([0, 1]), 1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-5)
    # Self-contrast: anchor 0's only positive is anchor 1 (cos 1), its only negative anchor 2 (cos 0).
    points = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    loss = L.supervised_contrastive(points, points, labels, labels, 1.0, exclude_self=True)
    # anchors 0 and 1 each: log(1 + e^-1); anchor 2 has no positive and is skipped.
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-5)


def test_supervised_contrastive_gradient_moves_anchor_towards_its_class() -> None:
    anchor = torch.tensor([[1.0, 1.0]], requires_grad=True)
    candidates = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = L.supervised_contrastive(anchor, candidates, torch.tensor([0]), torch.tensor([0, 1]), 0.5)
    loss.backward()
    moved = anchor.detach() - 0.1 * anchor.grad
    cos = torch.nn.functional.cosine_similarity
    assert cos(moved, candidates[:1]).item() > cos(anchor.detach(), candidates[:1]).item()
    assert cos(moved, candidates[1:]).item() < cos(anchor.detach(), candidates[1:]).item()


# --- the model ----------------------------------------------------------------------------------------


def test_registry_entry_uses_class_balanced_episodes() -> None:
    entry = model_entry("mcfa")
    assert entry.sampler == "class_balanced" and entry.config_cls is MCFAConfig and not entry.uses_captions


@pytest.mark.parametrize(
    ("source", "dim"), [("phrases", 384), ("sentence", 384), ("glove", 50), ("attributes", 6)]
)
def test_shapes_for_each_semantic_source(source: str, dim: int) -> None:
    model = _tiny(semantic_source=source).eval()
    class_inputs = model.class_inputs(_semantics())
    assert class_inputs.shape == (NUM_CLASSES, dim) and class_inputs.dtype == torch.float32
    with torch.no_grad():
        assert model.encode_images(torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)).shape == (3, 16)
        assert model.encode_classes(class_inputs).shape == (NUM_CLASSES, 16)
    assert model.scoring_rule == "cosine" and model.class_embedding == "semantic"
    assert model.logit_scale() == pytest.approx(1 / model.config.temperature)


def test_phrase_attributes_match_the_inference_attribute_vectors() -> None:
    rng = np.random.default_rng(1)
    descriptions, phrases = rng.standard_normal((5, 384)), rng.standard_normal((7, 384))
    ours = L_phrase(torch.from_numpy(descriptions).float(), torch.from_numpy(phrases).float()).numpy()
    assert np.allclose(ours, attribute_vectors(descriptions, phrases), atol=1e-5)


def test_feature_cache_runs_the_backbone_only_on_new_tiles() -> None:
    seen = []

    def backbone(x: torch.Tensor) -> torch.Tensor:
        seen.append(len(x))
        return x.flatten(1).sum(1, keepdim=True)

    cache = FrozenFeatureCache()
    a, b = torch.randn(3, 3, 4, 4), torch.randn(2, 3, 4, 4)
    first = cache(backbone, a)
    mixed = cache(backbone, torch.cat([b[:1], a, b[1:]]))
    assert seen == [3, 2]  # the second call computed only the two new tiles
    assert torch.allclose(mixed, backbone(torch.cat([b[:1], a, b[1:]])))
    assert torch.allclose(first, mixed[1:4])


def test_bad_semantic_source_is_a_one_line_error() -> None:
    with pytest.raises(RszError, match="semantic_source='words'"):
        _tiny(semantic_source="words")


def test_training_steps_reduce_the_loss_and_leave_the_frozen_backbone_alone() -> None:
    torch.manual_seed(0)
    model = _tiny(warmup_steps=1).train()
    backbone_before = {k: v.clone() for k, v in model.visual.backbone.state_dict().items()}
    batch = _batch(model)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    history = []
    for _ in range(40):
        parts = model.training_losses(batch)
        assert set(parts) >= {"loss", "reconstruction", "cross_reconstruction", "kl", "distribution"}
        assert {"contrast_vv", "contrast_vs", "contrast_sv"} <= set(parts)
        optimizer.zero_grad()
        parts["loss"].backward()
        optimizer.step()
        history.append(parts["loss"].item())
    assert np.mean(history[-5:]) < 0.7 * np.mean(history[:5])
    assert model.feature_cache is not None and len(model.feature_cache.store) == len(batch["image"])
    for key, value in model.visual.backbone.state_dict().items():
        assert torch.equal(value, backbone_before[key]), key  # weights and BatchNorm statistics
    # After training, the images of each class are nearest to their own class latent.
    model.eval()
    with torch.no_grad():
        images = torch.nn.functional.normalize(model.encode_images(batch["image"]), dim=-1)
        classes = torch.nn.functional.normalize(model.encode_classes(batch["class_inputs"]), dim=-1)
    assert ((images @ classes.T).argmax(1) == batch["label"]).float().mean() >= 0.75


def test_default_config_uses_the_frozen_geoembed_resnet18() -> None:
    model = create_model("mcfa", MCFAConfig(), _task())
    assert model.visual.backbone.head is not None  # geoembed's weights come with its embedding head
    assert not any(p.requires_grad for p in model.visual.backbone.parameters())
    assert all(p.requires_grad for p in model.visual_encoder.parameters())
    with torch.no_grad():
        assert model.eval().encode_images(torch.randn(2, 3, 16, 16)).shape == (2, 64)


def test_export_graphs_run_with_the_documented_names_and_shapes() -> None:
    model = _tiny().eval()
    graphs = {g.role: g for g in model.export_graphs()}
    assert set(graphs) == {"image", "semantic", "text"}
    expected = {
        "image": (["image"], ["embedding"]),
        "semantic": (["semantic"], ["embedding", "logvar"]),
        "text": (["input_ids", "attention_mask"], ["embedding"]),
    }
    for role, (inputs, outputs) in expected.items():
        assert (graphs[role].input_names, graphs[role].output_names) == (inputs, outputs)
    images = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    semantic = model.class_inputs(_semantics())
    with torch.no_grad():
        # The exported pieces compute exactly what evaluation scores with.
        assert torch.allclose(graphs["image"].module(images), model.encode_images(images), atol=1e-5)
        mu, logvar = graphs["semantic"].module(semantic)  # the class posterior, as training samples it
        expected_mu, expected_logvar = model.class_posteriors(semantic)
        assert torch.allclose(mu, model.encode_classes(semantic), atol=1e-5)
        assert torch.allclose(mu, expected_mu) and torch.allclose(logvar, expected_logvar)
        text = graphs["text"].module(*graphs["text"].example_inputs)
    assert text.shape == (len(graphs["text"].example_inputs[0]), 384)
    for graph in graphs.values():
        with torch.no_grad():
            graph.module(*graph.example_inputs)


def test_only_sentence_semantics_can_be_exported() -> None:
    with pytest.raises(RszError, match="semantic_source='glove'"):
        _tiny(semantic_source="glove").export_graphs()
