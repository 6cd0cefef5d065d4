"""The configs shipped in rsz_train/configs load by bare name and build the papers' model sizes."""

from __future__ import annotations

import pytest
import torch

from rsz_infer.errors import RszError
from rsz_train.config import load_config, packaged_configs
from rsz_train.models.base import TaskInfo
from rsz_train.models.registry import create_model

ATTRIBUTES = [f"attr{i}" for i in range(6)]
# name -> (kind, image embedding size, parameters in millions: a range that pins the architecture)
EXPECTED = {
    "dsva_vit_b16": ("dsva", 6, (85, 90)),  # ViT-B/16 is 86M
    "dsva_vit_b32": ("dsva", 6, (86, 92)),  # ViT-B/32 is 88M
    "mcfa_resnet18": ("mcfa", None, (11, 16)),  # ResNet-18 (11.2M) + the two VAEs
    "msa_resnet50": ("msa", 512, (45, 60)),  # ResNet-50 (23.5M) + MiniLM (22.7M) + projections
}


def test_every_shipped_config_is_tested():
    assert packaged_configs() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_config_builds_its_model(name):
    kind, dim, (low, high) = EXPECTED[name]
    config = load_config(kind, name)
    assert config.train.image_size == 224
    if kind == "msa":  # no ResNet-50 weights offline: the deliberate random-init run
        with pytest.raises(RszError, match="--allow-random-init"):
            create_model(kind, config.model, TaskInfo(ATTRIBUTES, ATTRIBUTES, ["g"] * 6, 224, 4))
        config.model.require_pretrained = False
    task = TaskInfo(ATTRIBUTES, [f"a {a}" for a in ATTRIBUTES], ["g"] * 6, 224, 4)
    model = create_model(kind, config.model, task).eval()
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert low <= millions <= high, f"{name}: {millions:.1f}M parameters"
    with torch.no_grad():
        emb = model.encode_images(torch.randn(1, 3, 224, 224))
    assert emb.shape[0] == 1 and torch.isfinite(emb).all()
    if dim is not None:
        assert emb.shape[1] == dim


def test_a_config_for_another_kind_is_refused():
    with pytest.raises(RszError, match="not 'msa'"):
        load_config("msa", "dsva_vit_b16")
    with pytest.raises(RszError, match="config file not found .*dsva_vit_b16"):
        load_config("dsva", "dsva_vit_b17")
