"""Image preprocessing shared by training and inference (numpy + Pillow only).

Training datasets call the same functions so that an exported model sees exactly
the tensors it was trained on.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from rsz_infer.errors import RszError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# PreprocessSpec.resize -> Pillow's filter. bilinear: rsz's own models (their training resized so);
# bicubic: CLIP checkpoints, whose own pipelines (open_clip's image_transform, Hugging Face's
# CLIPImageProcessor) resize with Pillow's BICUBIC.
RESIZE_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


@dataclass(frozen=True)
class PreprocessSpec:
    """How a tile becomes a model input; stored in every bundle manifest."""

    size: int = 64
    resize: str = "bilinear"  # Pillow's filter (RESIZE_FILTERS) resizing the whole tile to size x size
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


def resize_rgb(rgb: np.ndarray, size: int, resize: str = "bilinear") -> np.ndarray:
    """Resize an HxWx3 uint8 array to size x size with Pillow's `resize` filter (a RESIZE_FILTERS name)."""
    if resize not in RESIZE_FILTERS:
        raise RszError(f"preprocess.resize {resize!r}: expected one of {', '.join(RESIZE_FILTERS)}")
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), RESIZE_FILTERS[resize]))


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
    return normalize(resize_rgb(rgb, spec.size, spec.resize), spec)
