"""Image backbones every rsz model builds on: ViT (with CLIP weights) and ResNet (with geoembed weights).

This is the one entry point; the code lives in vit.py and resnet.py.
"""

from __future__ import annotations

from rsz_train.models.resnet import (
    GEOEMBED_IMAGE_SIZE,
    GEOEMBED_MEAN,
    GEOEMBED_STD,
    RESNET_CONFIGS,
    GeoEmbedHead,
    ResNetStages,
    create_resnet,
    load_geoembed_resnet18,
    pooled_features,
)
from rsz_train.models.vit import (
    CLIP_MEAN,
    CLIP_STD,
    VIT_CONFIGS,
    ViT,
    create_vit,
    load_clip_vision,
    resize_pos_embed,
    vit_from_clip_checkpoint,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "GEOEMBED_IMAGE_SIZE",
    "GEOEMBED_MEAN",
    "GEOEMBED_STD",
    "RESNET_CONFIGS",
    "VIT_CONFIGS",
    "GeoEmbedHead",
    "ResNetStages",
    "ViT",
    "create_resnet",
    "create_vit",
    "load_clip_vision",
    "load_geoembed_resnet18",
    "pooled_features",
    "resize_pos_embed",
    "vit_from_clip_checkpoint",
]
