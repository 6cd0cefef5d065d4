"""Image preprocessing shared by training and inference (numpy + Pillow only).

Training datasets call the same functions so that an exported model sees exactly
the tensors it was trained on.
"""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=8)
def _channel_tables(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """[3, 256] float32: the normalised value of each uint8 level, per channel.

    A table lookup is several times faster than float arithmetic on every pixel and gives the
    identical float32 numbers, because it is computed with the same float32 operations.
    """
    levels = np.arange(256, dtype=np.float32)[None, :] * np.float32(1.0 / 255.0)
    return (levels - np.asarray(mean, np.float32)[:, None]) / np.asarray(std, np.float32)[:, None]


def normalize(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """HxWx3 uint8 (already resized) -> 3xHxW float32, scaled to [0,1] then standardised."""
    tables = _channel_tables(tuple(spec.mean), tuple(spec.std))
    chw = rgb.transpose(2, 0, 1)
    out = np.empty(chw.shape, np.float32)
    for c in range(3):
        out[c] = tables[c][chw[c]]
    return out


def to_model_input(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """One tile, HxWx3 uint8 RGB of any size -> 3 x size x size float32."""
    return normalize(resize_rgb(rgb, spec.size), spec)
