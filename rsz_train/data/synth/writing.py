"""Writing the benchmark folder (docs/DESIGN.md layout), atomically, from per-tile seeds."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from rsz_infer.errors import RszError
from rsz_train.data.synth.captions import captions_for
from rsz_train.data.synth.catalogue import (
    ATTRIBUTES,
    CLASS_NAMES,
    GENERATOR_VERSION,
    attribute_matrix,
    class_description,
    class_splits,
)
from rsz_train.data.synth.rendering import render_tile


def _render_job(job: tuple[str, int, int, int, str]) -> tuple[str, str, list[str]]:
    class_name, seed, index, size, root = job
    rgb, record = render_tile(class_name, seed, index, size)
    rng = np.random.default_rng([seed, CLASS_NAMES.index(class_name), index, 1])
    relpath = f"{class_name}/{class_name}_{index + 1:04d}.png"
    Image.fromarray(rgb).save(Path(root) / "images" / relpath)
    return class_name, relpath, captions_for(record, size, rng)


def _meta(seed: int, size: int, per_class: int) -> dict:
    return {
        "generator": "rsz synth",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "per_class": per_class,
    }


def write_benchmark(
    out: Path, seed: int = 0, size: int = 64, per_class: int = 60, workers: int | None = None
) -> Path:
    """Render the benchmark into `out` (written atomically); returns `out`.

    An existing empty `out` is filled; an existing benchmark of the same seed, size and per_class is
    kept as it is; anything else already in `out` is refused with an RszError.
    """
    from rsz_train.data.formats import SceneData, make_split  # formats imports nothing from here

    out = Path(out)
    if not 16 <= size <= 1024:
        raise RszError(f"--size {size}: must be between 16 and 1024 pixels")
    if per_class < 5:
        raise RszError(f"--per-class {per_class}: need at least 5 images per class for the split lists")
    meta = _meta(seed, size, per_class)
    if out.exists():
        if not out.is_dir():
            raise RszError(f"{out}: exists and is not a folder")
        if any(out.iterdir()):
            try:
                same = json.loads((out / "synth.json").read_text()) == meta
            except (OSError, ValueError):
                same = False
            if same:
                return out
            raise RszError(f"{out}: folder is not empty (and is not this benchmark); choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for name in CLASS_NAMES:
            (tmp / "images" / name).mkdir(parents=True)
        jobs = [(name, seed, i, size, str(tmp)) for name in CLASS_NAMES for i in range(per_class)]
        if workers is None:  # a pool costs about a second to start: worth it from a few hundred tiles
            workers = min(os.cpu_count() or 1, max(1, len(jobs) // 300))
        if workers > 1:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                results = pool.map(_render_job, jobs, chunksize=max(1, len(jobs) // (workers * 8)))
        else:
            results = [_render_job(job) for job in jobs]
        _write_metadata(tmp, seed, results)
        data = SceneData(
            root=tmp / "images",
            class_names=list(CLASS_NAMES),
            descriptions={n: class_description(n) for n in CLASS_NAMES},
            image_paths=[r[1] for r in results],
            labels=np.array([CLASS_NAMES.index(r[0]) for r in results], dtype=np.int64),
            attribute_names=[a.name for a in ATTRIBUTES],
            attribute_groups=[a.group for a in ATTRIBUTES],
            attribute_phrases=[a.phrase for a in ATTRIBUTES],
            attribute_matrix=attribute_matrix(),
            captions={},
            caption_splits={},
        )
        for split_name, (seen, unseen, val) in class_splits().items():
            split = make_split(data, seen, unseen, val, seed=seed)
            folder = tmp / "splits" / split_name
            folder.mkdir(parents=True)
            for key in (
                "seen",
                "unseen",
                "val",
                "train",
                "val_seen",
                "val_unseen",
                "test_seen",
                "test_unseen",
            ):
                (folder / f"{key}.txt").write_text("".join(f"{line}\n" for line in getattr(split, key)))
        (tmp / "synth.json").write_text(json.dumps(meta, indent=1) + "\n")
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_metadata(root: Path, seed: int, results: list[tuple[str, str, list[str]]]) -> None:
    (root / "classes.txt").write_text("".join(f"{n}: {class_description(n)}\n" for n in CLASS_NAMES))
    (root / "attributes.txt").write_text("".join(f"{a.name}\t{a.group}\t{a.phrase}\n" for a in ATTRIBUTES))
    matrix = attribute_matrix()
    lines = ["class," + ",".join(a.name for a in ATTRIBUTES)]
    lines += [name + "," + ",".join(str(int(v)) for v in row) for name, row in zip(CLASS_NAMES, matrix)]
    (root / "attribute_matrix.csv").write_text("\n".join(lines) + "\n")
    # Caption splits (retrieval): 80/10/10 of each class's images, drawn from the seed.
    images, sentence_id = [], 0
    by_class: dict[str, list[int]] = {}
    for k, (name, *_rest) in enumerate(results):
        by_class.setdefault(name, []).append(k)
    split_of = {}
    for c, members in enumerate(by_class.values()):
        order = np.random.default_rng([seed, c, 2]).permutation(len(members))
        n_val = n_test = max(1, round(len(members) * 0.1))
        for rank, j in enumerate(order):
            split_of[members[j]] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    for k, (_name, relpath, sentences) in enumerate(results):
        ids = list(range(sentence_id, sentence_id + len(sentences)))
        sentence_id += len(sentences)
        images.append(
            {
                "filename": relpath,
                "imgid": k,
                "split": split_of[k],
                "sentids": ids,
                "sentences": [
                    {
                        "raw": s,
                        "tokens": s.lower().rstrip(".").replace(",", "").replace(":", "").split(),
                        "imgid": k,
                        "sentid": i,
                    }
                    for s, i in zip(sentences, ids)
                ],
            }
        )
    (root / "captions.json").write_text(json.dumps({"dataset": "rsz-synth", "images": images}) + "\n")
