"""Class-folder data sets as users copy them around: hidden files, lists spelled another way, resumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from rsz_train.data.formats import load_scene_folders
from rsz_train.data.sources import DataOptions, load_dataset, resolve_splits

CLASSES = ["airport", "beach", "dense_residential", "forest", "river", "storage_tanks"]


def _class_folders(root: Path, per_class: int = 5) -> Path:
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{i + 1:03d}.jpg")
    return root


def _splits(root: Path, **options) -> list:
    options = DataOptions(**options)
    data, layout = load_dataset(root, options)
    return resolve_splits(root, data, layout, options)


def test_hidden_files_in_class_folders_are_not_images_and_do_not_shift_split_indices(tmp_path):
    """A data set copied through macOS has '._name.jpg' AppleDouble files beside the images: counted as
    images they shift every 0-based index of an MCFA split (and a DSVA .mat's), so the split names other
    images than the authors' (a misleading error, or silently wrong classes)."""
    root = _class_folders(tmp_path / "NWPU")
    clean = load_scene_folders(root)
    unseen = {"beach", "river"}
    folder = tmp_path / "zsl"
    folder.mkdir()
    rows = {"seen": [], "unseen": []}
    for i, label in enumerate(clean.labels):
        rows["unseen" if clean.class_names[label] in unseen else "seen"].append(i)
    for kind, values in rows.items():
        (folder / f"{kind}_class_loc_4_1.txt").write_text("".join(f"{v}\n" for v in values))
    for name in CLASSES:  # AppleDouble resource forks: a few bytes of junk named like an image
        (root / name / f"._{name}_001.jpg").write_bytes(b"\x00\x05\x16\x07junk")
    (root / "airport" / ".hidden.png").write_bytes((root / "airport" / "airport_001.jpg").read_bytes())

    data = load_scene_folders(root)
    assert data.image_paths == clean.image_paths
    [(split, source)] = _splits(root, split_file=str(folder))
    assert split.unseen == sorted(unseen) and source.split_source == "mcfa folder"
    assert sorted(split.test_unseen) == [p for p, i in zip(clean.image_paths, clean.labels)
                                         if clean.class_names[i] in unseen]  # fmt: skip
