"""Tiny open_clip architectures for the tests: registered from JSON, built with random weights
(pretrained=None), so real open_clip checkpoints can be written without any downloaded weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rsz_train.models.clip import import_open_clip

TINY_VIT = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def register_arch(folder: Path, name: str, config: dict):
    """open_clip with `config` registered as architecture `name` (its JSON written into `folder`)."""
    open_clip = import_open_clip()
    (folder / f"{name}.json").write_text(json.dumps(config), encoding="utf-8")
    open_clip.add_model_config(folder / f"{name}.json")
    return open_clip


def random_open_clip(folder: Path, name: str, config: dict = TINY_VIT, seed: int = 0):
    """(open_clip, a model of `config` in eval mode with weights drawn from `seed`)."""
    open_clip = register_arch(folder, name, config)
    torch.manual_seed(seed)
    return open_clip, open_clip.create_model(name, pretrained=None).eval()
