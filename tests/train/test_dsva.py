"""DSVA losses on hand-checkable tensors and the shape contracts of the DSVA model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from rsz_infer.preprocess import PreprocessSpec
from rsz_infer.scoring import class_logits
from rsz_train.data.batches import Mixing, cutmix, image_batch, training_batch
from rsz_train.losses.dsva import compatibility_loss, concentration_loss, group_sparsity_loss, regression_loss
from rsz_train.models.base import ClassSemantics, TaskInfo
from rsz_train.models.dsva import DSVAConfig
from rsz_train.models.registry import create_model
from rsz_train.train import train

from .conftest import TINY_OVERRIDES


def test_compatibility_loss_is_cross_entropy_on_logits():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1])
    expected = 0.5 * (-math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(2))
    assert compatibility_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_regression_loss_compares_with_the_rows_of_the_labels():
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    predicted = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    # first sample exact; second misses (0, 1) by 1 in one of 4 entries
    assert regression_loss(predicted, classes, torch.tensor([0, 1])).item() == pytest.approx(0.25)


def test_both_losses_take_class_weights_as_the_mixture_of_their_labels():
    """A CutMix batch's [B, C] class weights: cross-entropy = the weighted sum of each label's; the
    regression target = the weighted mixture of the class rows."""
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    weights = torch.tensor([[0.75, 0.25], [0.0, 1.0]])
    first = 0.75 * -math.log(math.exp(2) / (math.exp(2) + 1)) + 0.25 * -math.log(1 / (math.exp(2) + 1))
    expected = 0.5 * (first + math.log(2))
    assert compatibility_loss(logits, weights).item() == pytest.approx(expected, rel=1e-6)
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    predicted = torch.tensor([[0.75, 0.25], [0.0, 0.0]])
    # first sample exactly its mixture (0.75, 0.25); second misses (0, 1) by 1 in one of 4 entries
    assert regression_loss(predicted, classes, weights).item() == pytest.approx(0.25)


def test_cutmix_pastes_one_grid_aligned_box_and_weights_classes_by_area():
    rng = np.random.default_rng(3)
    images = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 3, 32, 32).contiguous()  # image i is all i
    labels = np.array([0, 1, 2, 0, 1, 2])
    for _ in range(20):
        mixed, weights = cutmix(images, labels, 4, 8, rng)
        assert torch.allclose(weights.sum(dim=1), torch.ones(6))
        changed = mixed[:, 0] != images[:, 0]  # [B, H, W]
        box = changed.any(dim=0)
        rows, cols = box.any(dim=1).nonzero().flatten(), box.any(dim=0).nonzero().flatten()
        if len(rows):  # the box is whole cells of the 8 px grid
            assert (
                rows[0] % 8 == 0 and (rows[-1] + 1) % 8 == 0 and cols[0] % 8 == 0 and (cols[-1] + 1) % 8 == 0
            )
        area = box.float().mean().item()
        for i in range(6):
            source = int(mixed[i, 0][box][0].item()) if len(rows) else i  # the image pasted into i
            expected = torch.zeros(4)
            expected[labels[i]] += 1 - area
            expected[labels[source]] += area
            assert torch.allclose(weights[i], expected), (i, weights[i], expected)


def test_a_rank_gets_its_share_of_the_mixed_global_batch():
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    labels, keep, spec = np.array([0, 1, 2, 0, 1, 2]), np.array([1, 3, 5]), PreprocessSpec(size=32)

    def rngs():  # the batches' generator and the mixing one, fresh each time
        return np.random.default_rng(1), Mixing(1.0, 8, 3, np.random.default_rng(2))

    rng, mixing = rngs()
    image, label = training_batch(images, labels, spec, rng, keep, mixing)
    rng, mixing = rngs()
    mixing.rng.random()  # the draw that decides whether the batch is mixed
    whole, weights = cutmix(image_batch(images, spec, rng), labels, 3, 8, mixing.rng)
    assert torch.equal(image, whole[keep]) and torch.equal(label, weights[keep])
    rng, _ = rngs()
    image, label = training_batch(
        images, labels, spec, rng, keep, Mixing(0.0, 8, 3, np.random.default_rng(2))
    )
    assert torch.equal(image, image_batch(images, spec, np.random.default_rng(1), keep))
    assert label.tolist() == [1, 0, 2]


def test_training_batches_are_mixed_with_attribute_mix(tiny_benchmark, default_split, tmp_path):
    """The trainer mixes (DSVA.cutmix_settings); two processes mixing the global batch alike is
    test_distributed's. Dropout off, so the runs differ by the mixing alone."""
    steps = {}
    for mix in (0.0, 1.0):
        overrides = {**TINY_OVERRIDES, "train.epochs": 1, "model.dropout": 0.0, "model.attribute_mix": mix}
        run = train(
            "dsva", tiny_benchmark, default_split, tmp_path / f"m{mix}", device="cpu", overrides=overrides
        )
        steps[mix] = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["step_losses"]
    assert len(steps[0.0]) == len(steps[1.0]) > 1
    # every batch is mixed at 1.0, so the weights part after the first step (whose loss the random initial
    # model makes nearly independent of the pixels and labels)
    assert all(a != pytest.approx(b, rel=1e-3) for a, b in zip(steps[0.0][1:], steps[1.0][1:]))


def test_concentration_loss_values():
    peaked = torch.zeros(1, 1, 3, 3)
    peaked[0, 0, 1, 1] = 1.0
    assert concentration_loss(peaked).item() == pytest.approx(0.0)
    spread = torch.zeros(1, 1, 3, 3)
    spread[0, 0, 0, 0], spread[0, 0, 0, 2] = 0.75, 0.25  # peak at (0,0); mass 0.25 at 2 columns away
    assert concentration_loss(spread).item() == pytest.approx(0.25 * (2 / 3) ** 2)


def test_concentration_gradient_raises_the_peak():
    torch.manual_seed(0)
    scores = torch.randn(2, 3, 4, 4, requires_grad=True)
    maps = scores.flatten(2).softmax(-1).view_as(scores)
    peak_before = maps.flatten(2).max(-1).values.detach()
    concentration_loss(maps).backward()
    with torch.no_grad():
        stepped = (scores - 1.0 * scores.grad).flatten(2).softmax(-1)
    assert (stepped.max(-1).values > peak_before).all()
    assert (stepped.argmax(-1) == maps.flatten(2).argmax(-1)).all()  # the peak stays where it was


def test_group_sparsity_is_a_group_lasso():
    weights = torch.tensor([[3.0, 0.0], [4.0, 1.0], [0.0, 2.0]])
    groups = torch.tensor([0, 0, 1])
    # group 0: ||(3,4)|| + ||(0,1)|| = 5 + 1; group 1: 0 + 2; divided by D = 2
    assert group_sparsity_loss(weights, groups).item() == pytest.approx(4.0, rel=1e-5)


def _task(num_attributes: int = 6, image_size: int = 32) -> TaskInfo:
    return TaskInfo(
        attribute_names=[f"a{i}" for i in range(num_attributes)],
        attribute_phrases=[f"phrase {i}" for i in range(num_attributes)],
        attribute_groups=["colour" if i % 2 else "shape" for i in range(num_attributes)],
        image_size=image_size,
        num_train_classes=3,
    )


@pytest.fixture(scope="module")
def small_dsva():
    torch.manual_seed(0)
    return create_model("dsva", DSVAConfig(group_sparsity_weight=0.1), _task())


def test_dsva_shapes_and_scoring_contract(small_dsva):
    model = small_dsva.eval()
    images = torch.randn(2, 3, 32, 32)
    out = model.attribute_outputs(images)
    h = 32 // model.backbone.patch_size
    assert out["embedding"].shape == (2, 6)
    assert out["attention_maps"].shape == (2, 6, h, h)
    assert torch.allclose(out["attention_maps"].sum(dim=(-2, -1)), torch.ones(2, 6), atol=1e-5)
    semantics = ClassSemantics(
        names=["x", "y", "z"],
        descriptions=["x", "y", "z"],
        attributes=np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32),
        sentence=np.zeros((3, 384), np.float32),
    )
    classes = model.encode_classes(model.class_inputs(semantics))
    assert torch.equal(classes, torch.from_numpy(semantics.attributes))  # the class embedding IS the vector
    with torch.no_grad():
        torch_logits = model.logits(model.encode_images(images), classes).numpy()
        embedding = model.encode_images(images).numpy()
    numpy_logits = class_logits(embedding, semantics.attributes, model.scoring_rule, model.logit_scale())
    np.testing.assert_allclose(torch_logits, numpy_logits, rtol=1e-4, atol=1e-4)

    graphs = {g.role: g for g in model.export_graphs()}
    assert set(graphs) == {"image", "text"}
    image = graphs["image"]
    assert image.input_names == ["image"] and image.output_names == ["embedding", "attention_maps"]
    emb, maps = image.module(*image.example_inputs)
    assert emb.shape == (2, 6) and maps.shape == (2, 6, h, h)
    assert graphs["text"].output_names == ["embedding"]


def test_dsva_few_steps_reduce_the_loss(small_dsva):
    model = small_dsva.train()
    torch.manual_seed(1)
    images = torch.randn(12, 3, 32, 32)
    batch = {
        "image": images,
        "label": torch.arange(12) % 3,
        "class_inputs": torch.nn.functional.normalize(torch.randn(3, 6), dim=1),
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = None
    for _ in range(8):
        losses = model.training_losses(batch)
        assert set(losses) >= {"loss", "compatibility", "regression", "concentration", "group_sparsity"}
        first = first if first is not None else losses["loss"].item()
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    assert model.training_losses(batch)["loss"].item() < 0.8 * first


def test_dsva_on_geoembed_resnet18_trains_only_its_head_and_exports_the_same_embedding():
    """model.backbone geoembed_resnet18: the frozen aerial ResNet-18's last map (stride 8) as patch tokens."""
    from rsz_train.models.backbones import GEOEMBED_MEAN, load_geoembed_resnet18

    torch.manual_seed(0)
    model = create_model("dsva", DSVAConfig(backbone="geoembed_resnet18"), _task(image_size=32))
    assert model.image_mean == GEOEMBED_MEAN  # the preprocessing the weights were trained with
    pretrained = load_geoembed_resnet18().state_dict()
    assert all(torch.equal(v, pretrained[k]) for k, v in model.backbone.resnet.state_dict().items())
    model.train()
    assert not model.backbone.training  # BatchNorm keeps the pretrained statistics
    images = torch.randn(4, 3, 32, 32)
    batch = {
        "image": images,
        "label": torch.arange(4) % 3,
        "class_inputs": torch.nn.functional.normalize(torch.randn(3, 6), dim=1),
    }
    model.training_losses(batch)["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())
    assert model.prototypes.grad is not None and model.global_head.weight.grad is not None
    assert len(model.feature_cache.store) == 4
    mixed = {
        **batch,
        "image": torch.randn(4, 3, 32, 32),
        "label": torch.full((4, 3), 1 / 3),
    }  # a CutMix batch
    model.training_losses(mixed)["loss"].backward()
    assert len(model.feature_cache.store) == 4  # its tiles never come again: not memoised
    assert all(p.grad is None for p in model.backbone.parameters())
    model.eval()
    cached = model.attribute_outputs(images)  # second pass over these tiles: from the feature cache
    image = {g.role: g for g in model.export_graphs()}["image"]
    with torch.no_grad():
        embedding, maps = image.module(images)
    assert maps.shape == (4, 6, 4, 4)  # 32 px / stride 8
    torch.testing.assert_close(embedding, cached["embedding"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("patch_size", [0, 8])
def test_an_unknown_backbone_names_the_setting_and_every_choice(patch_size):
    # it read "resnet: unknown ViT; known: vit_tiny, ..." (no setting named, geoembed_resnet18 left out)
    from rsz_infer.errors import RszError

    config = DSVAConfig(backbone="resnet", patch_size=patch_size)
    with pytest.raises(
        RszError, match=r"^model.backbone 'resnet': unknown; known: vit_tiny, .*geoembed_resnet18$"
    ):
        create_model("dsva", config, _task(image_size=32))
