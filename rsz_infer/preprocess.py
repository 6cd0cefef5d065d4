"""Image preprocessing shared by training and inference (numpy + Pillow only).

Training datasets call the same functions so that an exported model sees exactly
the tensors it was trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessSpec:
    """How a tile becomes a model input; stored in every bundle manifest."""

    size: int = 64
    resize: str = "bilinear"  # Pillow bilinear resize of the whole tile to size x size (no crop)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    band_order: str = "RGB"
    layout: str = "NCHW"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        d = dict(d)
        d["mean"] = tuple(d["mean"])
        d["std"] = tuple(d["std"])
        return cls(**d)


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an HxWx3 uint8 array to size x size with Pillow's bilinear filter."""
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))


def normalize(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """HxWx3 uint8 (already resized) -> 3xHxW float32, scaled to [0,1] then standardised."""
    x = rgb.astype(np.float32) * (1.0 / 255.0)
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def to_model_input(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """One tile, HxWx3 uint8 RGB of any size -> 3 x size x size float32."""
    return normalize(resize_rgb(rgb, spec.size), spec)
