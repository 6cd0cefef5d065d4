"""Training data in memory: images decoded once, batches drawn by a seeded generator.

The benchmarks are small (a few thousand tiles), so every image is read once (as rsz-infer reads a tile
file), resized by rsz_infer.preprocess.resize_rgb and kept as uint8; a batch is augmented (flips,
90-degree rotations: a remote-sensing tile has no "up") and standardised by rsz_infer.preprocess.normalize,
so without augmentation a batch is exactly what rsz_infer.preprocess.to_model_input gives at inference.

Every random choice comes from a numpy Generator that the caller seeds per epoch, which makes an
interrupted run resumed at epoch e draw the same batches as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rsz_infer.errors import RszError
from rsz_infer.images import TileError, TileOptions, decode_image_file
from rsz_infer.preprocess import PreprocessSpec, normalize, resize_rgb

# rsz-infer's defaults (no --bands: a 4-band file gives bands 1-3; 16-bit data stretched per image)
INFER_DECODING = TileOptions()


def read_rgb(path: Path) -> np.ndarray:
    """One image file -> HxWx3 uint8 RGB, decoded as rsz-infer decodes a tile file: a model trains on the
    pixels it will label (a 16-bit TIFF is stretched, not clipped at 255 as Pillow's convert would)."""
    try:
        return decode_image_file(path, INFER_DECODING)[0]
    except TileError as err:
        raise RszError(f"{path}: cannot read image ({err})") from None


def load_images(root: Path | str, paths: list[str], size: int, resize: str = "bilinear") -> np.ndarray:
    """Images at `root/paths[i]`, resized to size x size (Pillow's `resize` filter, as
    rsz_infer.preprocess.resize_rgb) -> [N, size, size, 3] uint8; an image that cannot be read is an
    RszError naming it."""
    _, images, unreadable = load_readable_images(root, paths, size, resize)
    if unreadable:
        raise RszError(next(iter(unreadable.values())))
    return images


def load_readable_images(
    root: Path | str, paths: list[str], size: int, resize: str = "bilinear"
) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """load_images that leaves out what cannot be read: (kept paths, [K, size, size, 3], {path: why}).

    Why: one corrupt or truncated file among thousands (real downloads have them) must not stop a
    training run; the caller reports what was left out."""
    root = Path(root)
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)  # filled in place: no second copy
    kept: list[str] = []
    unreadable: dict[str, str] = {}
    for rel in paths:
        try:
            out[len(kept)] = resize_rgb(read_rgb(root / rel), size, resize)
        except RszError as err:
            unreadable[rel] = str(err)
            continue
        kept.append(rel)
    return kept, out[: len(kept)], unreadable


def augment(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random element of the dihedral group: 0-3 quarter turns, then maybe a horizontal flip."""
    rgb = np.rot90(rgb, k=int(rng.integers(4)))
    if rng.integers(2):
        rgb = rgb[:, ::-1]
    return rgb


def image_batch(
    images: np.ndarray,
    spec: PreprocessSpec,
    rng: np.random.Generator | None = None,
    keep: np.ndarray | None = None,
) -> torch.Tensor:
    """[B, S, S, 3] uint8 -> [B, 3, S, S] float32 model input; augmented when `rng` is given.

    `keep`: positions to return (a distributed rank's share); augmentations are still drawn for all B
    images, so the generator ends where it would in a single-process run.
    """
    keep = np.arange(len(images)) if keep is None else np.asarray(keep)
    out = np.empty((len(keep), 3, spec.size, spec.size), dtype=np.float32)
    row = {int(p): i for i, p in enumerate(keep)}
    for i, rgb in enumerate(images):
        view = augment(rgb, rng) if rng is not None else rgb  # a view: cheap for images not kept
        if i in row:
            out[row[i]] = normalize(view, spec)
    return torch.from_numpy(out)


def cutmix(
    images: torch.Tensor, labels: np.ndarray, num_classes: int, cell: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al., 2019) of a [B, 3, H, W] batch: one box, its sides multiples of `cell` (the patch
    size, so that every token sees one image), copied from a shuffled copy of the batch into every image.
    -> (mixed images, [B, num_classes] class weights: each image's area share of its own and the pasted
    image's class). The box area is uniform in (0, 1) before snapping to the grid."""
    b, _, h, w = images.shape
    rows, cols = h // cell, w // cell
    side = (1.0 - rng.random()) ** 0.5  # box side / tile side, so the area is uniform
    box_rows, box_cols = round(side * rows), round(side * cols)
    top = int(rng.integers(rows - box_rows + 1)) * cell
    left = int(rng.integers(cols - box_cols + 1)) * cell
    order = rng.permutation(b)
    mixed = images.clone()
    box = (slice(None), slice(None), slice(top, top + box_rows * cell), slice(left, left + box_cols * cell))
    mixed[box] = images[torch.from_numpy(order)][box]
    pasted = box_rows * box_cols / (rows * cols)
    weights = np.zeros((b, num_classes), dtype=np.float32)
    np.add.at(weights, (np.arange(b), labels), 1.0 - pasted)
    np.add.at(weights, (np.arange(b), labels[order]), pasted)
    return mixed, torch.from_numpy(weights)


@dataclass
class Mixing:
    """CutMix settings of a training run: per-batch probability, grid cell, class count, its generator."""

    probability: float
    cell: int
    num_classes: int
    rng: np.random.Generator


def training_batch(
    images: np.ndarray,
    labels: np.ndarray,
    spec: PreprocessSpec,
    rng: np.random.Generator | None,
    keep: np.ndarray,
    mixing: Mixing | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A global batch's [B, S, S, 3] uint8 images and [B] labels -> this rank's (`keep`) model input and
    labels: [K] classes, or [K, C] class weights when the batch is a CutMix one (mixed whole, so every
    rank sees the same boxes and pairs as a single process)."""
    if mixing is not None and mixing.probability > 0 and mixing.rng.random() < mixing.probability:
        mixed, weights = cutmix(
            image_batch(images, spec, rng), labels, mixing.num_classes, mixing.cell, mixing.rng
        )
        return mixed[keep], weights[keep]
    return image_batch(images, spec, rng, keep), torch.from_numpy(labels[keep])


def random_batches(num_items: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch: a random permutation cut into batches (the last, smaller one kept unless it has 1 item,
    which would break batch statistics and adds nothing)."""
    order = rng.permutation(num_items)
    batches = [order[i : i + batch_size] for i in range(0, num_items, batch_size)]
    return [b for b in batches if len(b) > 1] or batches


def class_balanced_batches(
    labels: np.ndarray,
    classes_per_batch: int,
    images_per_class: int,
    rng: np.random.Generator,
    num_batches: int = 0,
) -> list[np.ndarray]:
    """Episodes for metric learning (MCFA) and DSVA's authors' sampler: each batch has `images_per_class`
    images of each of `classes_per_batch` classes (0 = all). An epoch has `num_batches` batches, or
    (0) about as many images as the data set."""
    classes = np.unique(labels)
    per_batch = len(classes) if classes_per_batch <= 0 else min(classes_per_batch, len(classes))
    by_class = {c: np.flatnonzero(labels == c) for c in classes}
    num_batches = num_batches or max(1, len(labels) // (per_batch * images_per_class))
    batches = []
    for _ in range(num_batches):
        chosen = rng.choice(classes, size=per_batch, replace=False)
        parts = []
        for c in chosen:
            pool = by_class[c]
            parts.append(rng.choice(pool, size=images_per_class, replace=len(pool) < images_per_class))
        batches.append(np.concatenate(parts))
    return batches


def pick_captions(paths: list[str], captions: dict[str, list[str]], rng: np.random.Generator) -> list[str]:
    """One random caption per image path (every image must have at least one)."""
    picked = []
    for path in paths:
        options = captions.get(path)
        if not options:
            raise RszError(f"{path}: image has no caption (captions.json)")
        picked.append(options[int(rng.integers(len(options)))])
    return picked
