"""Readers of the scene data sets users bring, into one in-memory form: SceneData (+ Split).

Formats:
- the rsz layout (docs/DESIGN.md, "Embedded benchmark on disk"), written by `rsz-train synth` or by hand:
  `load_benchmark`, `list_splits`, `load_split`;
- plain scene folders root/<class>/*.{jpg,jpeg,png,tif,tiff,jp2,webp,gif,bmp} as UCM, AID, NWPU-RESISC45 and
  RSSDIVCS ship: `load_scene_folders`;
- class lists (one name per line): `read_class_list`;
- DSVA's `ann_attr_finetune_*_splits.mat` (RSSDIVCS splits + attribute matrix): `read_dsva_mat`, with the
  image order of a features .mat (DSVA's res101.mat: `image_files`, `labels`): `read_image_list`;
- Karpathy caption JSON (RSICD, RSITMD, UCM-captions, Sydney-captions): `read_karpathy`.

Every problem with a file raises a one-line RszError that names the file and what is wrong.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
import unicodedata
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rsz_infer.classfile import class_name_key, decode_text, read_class_file
from rsz_infer.errors import RszError
from rsz_infer.images import GDAL_ONLY_SUFFIXES, IMAGE_FILE_SUFFIXES

# What rsz-infer takes from a folder and Pillow reads too (decoded as rsz-infer decodes them, batches.py);
# rsz-export's --tiles / --calibration folders read the same set
IMAGE_SUFFIXES = IMAGE_FILE_SUFFIXES
# rsz-infer's other raster suffixes (GDAL-only formats; a .vrt names other files): not training images, said
# in one note when a class folder holds some
NOT_TRAINED_SUFFIXES = GDAL_ONLY_SUFFIXES
SPLIT_CLASS_FILES = ("seen", "unseen", "val")
SPLIT_IMAGE_FILES = ("train", "val_seen", "val_unseen", "test_seen", "test_unseen")
CAPTION_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


@dataclass
class SceneData:
    root: Path  # folder holding the class folders (DIR/images for the rsz layout)
    class_names: list[str]
    descriptions: dict[str, str]  # class -> description (the class name itself when none is known)
    image_paths: list[str]  # relative to root, e.g. "forest/forest_0001.png"
    labels: np.ndarray  # int64 [N], index into class_names
    attribute_names: list[str]  # [] when unknown
    attribute_groups: list[str]
    attribute_phrases: list[str]
    attribute_matrix: np.ndarray | None  # float32 [C, A]
    captions: dict[str, list[str]]  # image path (relative to root) -> captions; {} when none
    caption_splits: dict[str, str]  # image path -> "train" | "val" | "test"
    # class folders with no images, left out of class_names (class-folder data sets only): a split that
    # names one is refused naming the folder (empty_folder_error), any other split trains without it
    empty_folders: list[str] = field(default_factory=list)


@dataclass
class Split:
    name: str
    seen: list[str]  # class names; a model trains on seen - val
    unseen: list[str]
    val: list[str]  # subset of seen, held out of training for model selection
    train: list[str]  # image paths relative to SceneData.root
    val_seen: list[str]
    val_unseen: list[str]
    test_seen: list[str]
    test_unseen: list[str]
    # The published split this one was carved from, for --protocol paper (every seen class trained, no
    # val, the official test images); None: paper_split() derives it (val classes' images join training,
    # some held out as their test_seen).
    refit: Split | None = None

    @property
    def train_classes(self) -> list[str]:
        return [c for c in self.seen if c not in set(self.val)]


# ---------------------------------------------------------------------------------------------------------
# Plain scene folders


def is_data_folder(path: Path) -> bool:
    """A folder that may hold images of the data set: not hidden, not the __MACOSX folder of resource
    forks that macOS's zip adds beside the archive's folders (its '._x.jpg' files are not images)."""
    return path.is_dir() and not path.name.startswith(".") and path.name != "__MACOSX"


def nfc(name: str) -> str:
    """A file or class name as split files write it: macOS names folders and files in Unicode NFD
    ("cafe" + U+0301), a list typed on Linux or Windows in NFC ("café"); compared and sorted as NFC,
    and read under the name the file system gave."""
    return unicodedata.normalize("NFC", name)


def _class_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise RszError(f"{root}: not a folder of class folders")
    # sorted as NFC: sorted indices (MCFA, DSVA without image_files) must not depend on where it unpacked
    folders = sorted((p for p in root.iterdir() if is_data_folder(p)), key=lambda p: nfc(p.name))
    for folder in folders:
        try:  # a name in another code page (a zip made on Windows, unpacked here) is a class name of no text
            folder.name.encode("utf-8")
        except UnicodeEncodeError:
            name = os.fsencode(folder.name)
            raise RszError(
                f"{root}: class folder {name!r}: name is not valid UTF-8 (rename the folder)"
            ) from None
    return folders


def _images_in(folder: Path) -> list[str]:
    """The image files of a class folder, sorted; hidden files (macOS's '._x.jpg' AppleDouble copies) are
    not images of the data set, and counting them would shift every sorted index of an MCFA or DSVA split."""
    return sorted(
        (
            p.name
            for p in folder.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        ),
        key=nfc,  # as _class_folders
    )


def _not_trained_in(folder: Path) -> list[Path]:
    """Files of a class folder that rsz-infer would take as rasters but training does not read."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in NOT_TRAINED_SUFFIXES
    )


def _note_not_trained(root: Path, files: list[Path]) -> None:
    """One note for the whole data set (not a line per file, nor per rank): the images left out, by suffix."""
    from rsz_train.distributed import current  # (torch: only here)

    if not current().is_main:
        return
    suffixes = sorted({p.suffix.lower() for p in files})
    print(
        f"note: {root}: {len(files)} files in class folders left out of training ({', '.join(suffixes)}: "
        f"read by GDAL only, e.g. {files[0].relative_to(root)}); training reads {', '.join(IMAGE_SUFFIXES)}",
        file=sys.stderr,
    )


def load_scene_folders(root: str | Path) -> SceneData:
    """root/<class_name>/<IMAGE_SUFFIXES files> -> SceneData (classes and files sorted by name)."""
    root = Path(root)
    folders = _class_folders(root)
    if not folders:
        raise RszError(f"{root}: no class folders found (expected root/<class_name>/<image files>)")
    first_of: dict[str, str] = {}
    for folder in folders:  # split files and class lists name a class by its key: two folders would be one
        other = first_of.setdefault(class_name_key(folder.name), folder.name)
        if other != folder.name:
            raise RszError(
                f"{root}: class folders {other!r} and {folder.name!r} name one class (names ignore case, "
                "spaces and punctuation); merge or rename one"
            )
    # a folder with no images (a class emptied for a subset) is no class: left out unless a split names it
    empty = [f.name for f in folders if not _images_in(f)]
    if len(empty) == len(folders):
        raise RszError(f"{root}: no class folders with images (expected root/<class_name>/<image files>)")
    data = _scene_data(root, [f.name for f in folders if f.name not in empty], {})
    data.empty_folders = empty
    return data


def no_images_message(folder: Path) -> str:
    return f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in class folder"


def empty_folder_error(data: SceneData, name: str, where: str) -> None:
    """Raises when `name` (a class named by `where`) is one of the data set's empty class folders."""
    for folder in data.empty_folders:
        if class_name_key(folder) == class_name_key(name):
            raise RszError(f"{no_images_message(data.root / folder)} (class {name!r} of {where})")


def _scene_data(root: Path, class_names: list[str], descriptions: dict[str, str]) -> SceneData:
    paths, labels = [], []
    not_trained: list[Path] = []
    for index, name in enumerate(class_names):
        folder = root / name
        if not folder.is_dir():
            raise RszError(f"{folder}: class folder missing")
        files = _images_in(folder)
        not_trained += _not_trained_in(folder)
        if not files:
            raise RszError(no_images_message(folder))
        paths += [f"{name}/{f}" for f in files]
        labels += [index] * len(files)
    if not_trained:
        _note_not_trained(root, not_trained)
    return SceneData(
        root=root,
        class_names=list(class_names),
        descriptions={n: descriptions.get(n, n) for n in class_names},
        image_paths=paths,
        labels=np.array(labels, dtype=np.int64),
        attribute_names=[],
        attribute_groups=[],
        attribute_phrases=[],
        attribute_matrix=None,
        captions={},
        caption_splits={},
    )


# ---------------------------------------------------------------------------------------------------------
# The rsz layout


def load_benchmark(data_dir: str | Path) -> SceneData:
    """DIR/images/<class>/..., DIR/classes.txt and, when present, attributes, attribute matrix, captions."""
    data_dir = Path(data_dir)
    images = data_dir / "images"
    if not images.is_dir():
        raise RszError(f"{images}: missing (expected the rsz layout: DIR/images/<class_name>/<image files>)")
    folders = [f.name for f in _class_folders(images)]
    classes_file = data_dir / "classes.txt"
    if classes_file.exists():
        entries = read_class_file(classes_file)
        real = {nfc(f): f for f in folders}  # a class is its folder, under the name the folder has
        names = [real.get(nfc(e.name), e.name) for e in entries]
        for folder in folders:
            if folder not in names:
                raise RszError(f"{images / folder}: class folder not listed in {classes_file}")
        for name in names:  # a class is a folder of DIR/images: a name such as '../x' would reach outside
            if "/" in name or "\\" in name or name in (".", ".."):
                raise RszError(f"{classes_file}: class {name!r} is not a folder name (a folder of {images})")
        data = _scene_data(images, names, {n: e.description for n, e in zip(names, entries)})
    else:
        if not folders:
            raise RszError(f"{images}: no class folders found")
        data = _scene_data(images, folders, {})
    attributes_file, matrix_file = data_dir / "attributes.txt", data_dir / "attribute_matrix.csv"
    if attributes_file.exists() != matrix_file.exists():
        present, missing = (
            (attributes_file, matrix_file) if attributes_file.exists() else (matrix_file, attributes_file)
        )
        raise RszError(f"{missing}: missing ({present.name} is present; attributes need both files)")
    if attributes_file.exists():
        data.attribute_names, data.attribute_groups, data.attribute_phrases = _read_attributes(
            attributes_file
        )
        data.attribute_matrix = _read_attribute_matrix(matrix_file, data.class_names, data.attribute_names)
    captions_file = data_dir / "captions.json"
    if captions_file.exists():
        known = {nfc(p): p for p in data.image_paths}  # the JSON's names in NFC, the files' in NFD, or back
        for listed, (split, sentences) in read_karpathy(captions_file).items():
            filename = known.get(nfc(listed))
            if filename is None:
                raise RszError(f"{captions_file}: image {listed!r} is not under {images}")
            data.captions[filename] = sentences
            data.caption_splits[filename] = split
    return data


def _read_text(path: Path) -> str:
    """A text file as class files are read (rsz_infer.classfile.decode_text: UTF-8, or UTF-16 with a BOM)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RszError(f"{path}: file not found") from None
    except OSError as err:
        raise RszError(f"{path}: cannot read ({err.strerror})") from None
    return decode_text(data, path)


def inside_folder(rel: str) -> bool:
    """A path a data file names stays inside its data folder: relative, no '..' part, no drive. A caption
    JSON or a split list could otherwise make training read (and test on) any file on the machine."""
    text = rel.replace("\\", "/")
    return (
        bool(text)
        and not text.startswith("/")
        and ".." not in text.split("/")
        and not re.match(r"^[A-Za-z]:", text)
    )


_ARRAY_KINDS = {"O": "a cell array", "U": "text (a char array)", "S": "text", "c": "complex numbers"}


def attribute_matrix(value, where: str) -> np.ndarray:
    """A class-attribute matrix -> float32, or a one-line error naming `where` (file and field): it must be
    a 2-D array of finite numbers. Unchecked, a cell array of strings is a numpy traceback, and a NaN or
    inf only shows epochs later as a NaN loss blamed on the learning rate."""
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        kind = _ARRAY_KINDS.get(array.dtype.kind, f"dtype {array.dtype}")
        raise RszError(f"{where}: must be a numeric matrix, got {kind}")
    if array.ndim != 2 or 0 in array.shape:
        raise RszError(f"{where}: must be a 2-D matrix, got shape {array.shape}")
    matrix = array.astype(np.float32)
    bad = np.argwhere(~np.isfinite(matrix))
    if len(bad):
        row, col = (int(v) for v in bad[0])
        raise RszError(
            f"{where}: value {float(array[row, col])} at row {row + 1}, column {col + 1} "
            "is not a finite number" + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else "")
        )
    return matrix


def _read_attributes(path: Path) -> tuple[list[str], list[str], list[str]]:
    names, groups, phrases = [], [], []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 3 or not all(f.strip() for f in fields):
            raise RszError(f"{path}:{number}: expected 'name<TAB>group<TAB>phrase', got {line[:80]!r}")
        name, group, phrase = (f.strip() for f in fields)
        if name in names:
            raise RszError(f"{path}:{number}: duplicate attribute {name!r}")
        names.append(name)
        groups.append(group)
        phrases.append(phrase)
    if not names:
        raise RszError(f"{path}: no attributes")
    return names, groups, phrases


def _read_attribute_matrix(path: Path, class_names: list[str], attribute_names: list[str]) -> np.ndarray:
    rows = list(csv.reader(_read_text(path).splitlines()))
    rows = [r for r in rows if r]
    if not rows or rows[0][0].strip() != "class":
        raise RszError(f"{path}:1: header must be 'class,<attribute>,...'")
    header = [h.strip() for h in rows[0][1:]]
    if header != attribute_names:
        raise RszError(f"{path}:1: attribute columns do not match attributes.txt (same names, same order)")
    matrix = np.full((len(class_names), len(header)), np.nan, dtype=np.float32)
    index = {n: i for i, n in enumerate(class_names)}
    for number, row in enumerate(rows[1:], start=2):
        name = row[0].strip()
        if name not in index:
            raise RszError(f"{path}:{number}: unknown class {name!r}")
        if len(row) != len(header) + 1:
            raise RszError(f"{path}:{number}: {len(row) - 1} values, expected {len(header)}")
        try:
            values = [float(v) for v in row[1:]]
        except ValueError:
            raise RszError(
                f"{path}:{number}: values must be numbers, got {','.join(row[1:])[:60]!r}"
            ) from None
        if not all(math.isfinite(v) for v in values):  # float() takes "nan" and "inf": a NaN loss later
            raise RszError(f"{path}:{number}: values must be finite numbers, got {','.join(row[1:])[:60]!r}")
        matrix[index[name]] = values
    missing = [n for n in class_names if np.isnan(matrix[index[n]]).any()]
    if missing:
        raise RszError(
            f"{path}: no row for class {missing[0]!r}"
            + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    return matrix


# ---------------------------------------------------------------------------------------------------------
# Splits


def read_class_list(path: str | Path) -> list[str]:
    """One class name per line (blank lines and '#' comments skipped); duplicates are an error."""
    path = Path(path)
    names: list[str] = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if name in names:
            raise RszError(f"{path}:{number}: duplicate class {name!r}")
        names.append(name)
    return names


def list_splits(data_dir: str | Path) -> list[str]:
    """Names of the splits under DIR/splits (folders holding seen.txt), sorted."""
    folder = Path(data_dir) / "splits"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / "seen.txt").is_file())


def load_split(data_dir: str | Path, name: str) -> Split:
    """DIR/splits/<name>/: class lists, and per-image lists (made by make_split when absent)."""
    data_dir = Path(data_dir)
    folder = data_dir / "splits" / name
    if not (folder / "seen.txt").is_file():
        have = ", ".join(list_splits(data_dir)) or "none"
        raise RszError(f"{folder}: no such split (splits in {data_dir / 'splits'}: {have})")
    lists = {key: read_class_list(folder / f"{key}.txt") for key in ("seen", "unseen")}
    lists["val"] = read_class_list(folder / "val.txt") if (folder / "val.txt").exists() else []
    known = _known_classes(data_dir)
    real = {nfc(c): c for c in known}  # listed in NFC, folders named in NFD (macOS), or the other way
    lists = {key: [real.get(nfc(c), c) for c in names] for key, names in lists.items()}
    for key, names in lists.items():
        for c in names:
            if c not in known:
                raise RszError(
                    f"{folder / (key + '.txt')}: unknown class {c!r} (not a folder in {data_dir / 'images'})"
                )
    _check_class_lists(folder, lists["seen"], lists["unseen"], lists["val"])
    present = [key for key in SPLIT_IMAGE_FILES if (folder / f"{key}.txt").exists()]
    if not present:
        return make_split(load_benchmark(data_dir), lists["seen"], lists["unseen"], lists["val"], name=name)
    if len(present) != len(SPLIT_IMAGE_FILES):
        missing = next(k for k in SPLIT_IMAGE_FILES if k not in present)
        raise RszError(f"{folder / (missing + '.txt')}: missing (the split has other per-image lists)")
    images = data_dir / "images"
    train_classes = set(lists["seen"]) - set(lists["val"])
    allowed = {
        "train": train_classes,
        "val_seen": train_classes,
        "test_seen": train_classes,
        "val_unseen": set(lists["val"]),
        "test_unseen": set(lists["unseen"]),
    }
    per_image: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    file_names: dict[str, dict[str, str]] = {}
    for key in SPLIT_IMAGE_FILES:
        path = folder / f"{key}.txt"
        entries = []
        for number, line in enumerate(_read_text(path).splitlines(), start=1):
            rel = line.strip()
            if not rel:
                continue
            if not inside_folder(rel):
                raise RszError(f"{path}:{number}: image {rel!r} is not a path inside {images}")
            rel = _real_path(images, rel, real, file_names)
            cls = rel.split("/", 1)[0]
            if cls not in allowed[key]:
                raise RszError(
                    f"{path}:{number}: image {rel!r} is of class {cls!r}, which does not belong in {key}"
                )
            if rel in owner:
                raise RszError(f"{path}:{number}: image {rel!r} is already listed in {owner[rel]}.txt")
            if not (images / rel).is_file():
                raise RszError(f"{path}:{number}: image {rel!r} not found under {images}")
            owner[rel] = key
            entries.append(rel)
        per_image[key] = entries
    return Split(name=name, seen=lists["seen"], unseen=lists["unseen"], val=lists["val"], **per_image)


def _real_path(images: Path, rel: str, real: dict[str, str], file_names: dict[str, dict[str, str]]) -> str:
    """`rel` of a per-image list ("class/file") under the names its folder and file have on disk, matched
    as NFC (nfc); unchanged when it names no image (the caller says so). file_names: a cache by folder."""
    if "/" not in rel or (images / rel).is_file():
        return rel
    cls, name = rel.split("/", 1)
    cls = real.get(nfc(cls), cls)
    folder = images / cls
    if cls not in file_names:
        file_names[cls] = {nfc(p.name): p.name for p in folder.iterdir()} if folder.is_dir() else {}
    return f"{cls}/{file_names[cls].get(nfc(name), name)}"


def _known_classes(data_dir: Path) -> set[str]:
    return {f.name for f in _class_folders(data_dir / "images")} if (data_dir / "images").is_dir() else set()


def _check_class_lists(where: Path | str, seen: list[str], unseen: list[str], val: list[str]) -> None:
    overlap = set(seen) & set(unseen)
    if overlap:
        raise RszError(f"{where}: class {sorted(overlap)[0]!r} is both seen and unseen")
    outside = [c for c in val if c not in set(seen)]
    if outside:
        raise RszError(
            f"{where}: val class {outside[0]!r} is not a seen class (val classes come from the seen side)"
        )
    if not set(seen) - set(val):
        raise RszError(f"{where}: no training classes (every seen class is a val class)")
    if not unseen:
        raise RszError(f"{where}: no unseen classes")


def _class_rng(seed: int, name: str) -> np.random.Generator:
    """A generator per (seed, class name): a class's draw does not change when other classes do."""
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


def hold_out(
    members: list[str], holdout: float, seed: int, name: str, parts: int = 1
) -> tuple[list[list[str]], list[str]] | None:
    """The holdout step of every split: class `name`'s members shuffled by its own generator, then `parts`
    groups of `holdout` of them (at least one each; none for holdout 0) and the rest, each sorted.
    None when fewer than one member would be left (the caller says why that is a problem)."""
    n_hold = max(1, round(holdout * len(members))) if holdout > 0 else 0
    if len(members) - parts * n_hold < 1:
        return None
    shuffled = [members[i] for i in _class_rng(seed, name).permutation(len(members))]
    held = [sorted(shuffled[k * n_hold : (k + 1) * n_hold]) for k in range(parts)]
    return held, sorted(shuffled[parts * n_hold :])


def make_split(
    data: SceneData,
    seen: list[str],
    unseen: list[str],
    val: list[str],
    seed: int = 0,
    holdout: float = 0.2,
    name: str = "custom",
) -> Split:
    """Per-image lists from class lists.

    Each training class (seen - val) gives `holdout` of its images to val_seen and as many again to
    test_seen (at least one each), the rest to train; val classes' images all go to val_unseen, unseen
    classes' images to test_unseen. Deterministic for a seed; a class's draw depends only on its name.
    """
    known = set(data.class_names)
    for c in [*seen, *unseen, *val]:
        if c not in known:
            raise RszError(f"class {c!r}: not in the data set at {data.root}")
    _check_class_lists(f"split {name}", seen, unseen, val)
    if not 0 <= holdout < 0.5:
        raise RszError(f"holdout {holdout}: must be in [0, 0.5)")
    by_class: dict[str, list[str]] = {c: [] for c in data.class_names}
    for path, label in zip(data.image_paths, data.labels):
        by_class[data.class_names[label]].append(path)
    lists: dict[str, list[str]] = {k: [] for k in SPLIT_IMAGE_FILES}
    for c in seen:
        if c in val:
            lists["val_unseen"] += by_class[c]
            continue
        images = by_class[c]
        parts = hold_out(images, holdout, seed, c, parts=2)
        if parts is None:
            raise RszError(f"class {c!r}: {len(images)} images, too few to hold out val and test images")
        (val_seen, test_seen), train = parts
        lists["val_seen"] += val_seen
        lists["test_seen"] += test_seen
        lists["train"] += train
    for c in unseen:
        lists["test_unseen"] += by_class[c]
    return Split(name=name, seen=list(seen), unseen=list(unseen), val=list(val), **lists)


def carve_val_classes(seen: list[str], seed: int = 0, fraction: float = 1 / 6) -> list[str]:
    """Deterministically pick about `fraction` of the seen classes (at least one) as val classes."""
    count = max(1, round(len(seen) * fraction))
    if count >= len(seen):
        raise RszError(f"{len(seen)} seen classes: too few to carve validation classes from")
    order = np.random.default_rng(seed).permutation(len(seen))
    return sorted(seen[i] for i in order[:count])


def split_from_official(
    data: SceneData,
    name: str,
    seen: list[str],
    unseen: list[str],
    train_all: list[str],
    test_seen: list[str],
    test_unseen: list[str],
    seed: int = 0,
    holdout: float = 0.1,
    where: Path | str | None = None,
) -> Split:
    """A published split (training images of every seen class, test_seen, test_unseen) -> Split.

    Validation is carved from it: val classes from the seen classes (carve_val_classes: all their
    images, training and test_seen, become val_unseen), and `holdout` of each training class's training
    images become val_seen. `refit` keeps the published split itself for --protocol paper.
    """
    where = where or f"split {name}"
    val = carve_val_classes(seen, seed)
    _check_class_lists(where, seen, unseen, val)
    class_of = {p: data.class_names[label] for p, label in zip(data.image_paths, data.labels)}
    by_class: dict[str, list[str]] = {}
    for p in train_all:
        by_class.setdefault(class_of[p], []).append(p)
    train, val_seen, val_unseen = [], [], []
    for c in seen:
        members = sorted(by_class.get(c, []))
        if c in val:
            val_unseen += members
            continue
        parts = hold_out(members, holdout, seed, c)
        if parts is None:
            raise RszError(
                f"{where}: class {c!r} has {len(members)} training images, too few to hold some out"
            )
        (held,), rest = parts
        val_seen += held
        train += rest
    val_set = set(val)
    val_unseen += [p for p in test_seen if class_of[p] in val_set]
    official = Split(
        name=name,
        seen=list(seen),
        unseen=list(unseen),
        val=[],
        train=sorted(train_all),
        val_seen=[],
        val_unseen=[],
        test_seen=list(test_seen),
        test_unseen=list(test_unseen),
    )
    return Split(
        name=name,
        seen=list(seen),
        unseen=list(unseen),
        val=val,
        train=train,
        val_seen=val_seen,
        val_unseen=val_unseen,
        test_seen=[p for p in test_seen if class_of[p] not in val_set],
        test_unseen=list(test_unseen),
        refit=official,
    )


def paper_split(split: Split, data: SceneData, holdout: float = 0.2, seed: int = 0) -> Split:
    """The split --protocol paper refits on: every seen class trained, no val classes, test untouched.

    `split.refit` when the split was published (DSVA .mat, MCFA folder); otherwise the training classes
    keep their test_seen and train on train + val_seen, and each val class gives `holdout` of its images
    (seeded per class, at least one) to test_seen and the rest to training, so that GZSL at test covers
    every seen class.
    """
    if split.refit is not None:
        return split.refit
    class_of = {p: data.class_names[label] for p, label in zip(data.image_paths, data.labels)}
    train, test_seen = list(split.train) + list(split.val_seen), list(split.test_seen)
    by_class: dict[str, list[str]] = {}
    for p in split.val_unseen:
        by_class.setdefault(class_of[p], []).append(p)
    for c in split.val:
        members = sorted(by_class.get(c, []))
        parts = hold_out(members, holdout, seed, c)
        if parts is None:
            raise RszError(f"split {split.name}: val class {c!r} has {len(members)} images, too few to refit")
        (held,), rest = parts
        test_seen += held
        train += rest
    return Split(
        name=split.name,
        seen=list(split.seen),
        unseen=list(split.unseen),
        val=[],
        train=sorted(train),
        val_seen=[],
        val_unseen=[],
        test_seen=test_seen,
        test_unseen=list(split.test_unseen),
    )


# ---------------------------------------------------------------------------------------------------------
# DSVA .mat splits


def _strings(value) -> list[str]:
    """MATLAB cell array / char array (as scipy.io gives it) -> list of str."""
    out = []
    for item in np.asarray(value, dtype=object).ravel():
        while isinstance(item, np.ndarray) and item.dtype == object and item.size == 1:
            item = item.ravel()[0]
        if isinstance(item, np.ndarray):
            item = "".join(item.ravel().tolist()) if item.dtype.kind == "U" else str(item.ravel()[0])
        out.append(str(item).strip())
    return out


def load_mat(path: Path, variable_names: list[str] | None = None) -> dict:
    """A MATLAB .mat file's variables (scipy.io.loadmat), or a one-line error naming the file."""
    from scipy.io import loadmat  # training-side dependency

    try:
        # scipy (< 1.18) names a MATLAB object variable (a string array, say) 'None': asked for too, so
        # that one of the wanted names saved as a string array is refused below, not "missing"
        wanted = None if variable_names is None else [*variable_names, "None"]
        mat = loadmat(str(path), variable_names=wanted)
    except FileNotFoundError:
        raise RszError(f"{path}: file not found") from None
    except NotImplementedError:
        # scipy's only NotImplementedError here: MATLAB's -v7.3 format (HDF5), which scipy cannot read and
        # MATLAB needs for variables over 2 GB; its own message suggests h5py, which rsz does not read with
        if variable_names is None:
            command = f"S = load('{path.name}'); save('{path.name}', '-struct', 'S', '-v7')"
        else:  # only these into a new file: the rest (a features matrix) may be too large for -v7
            names = ", ".join(f"'{n}'" for n in variable_names)
            new_name = f"{path.stem}_v7.mat"
            command = (
                f"S = load('{path.name}', {names}); save('{new_name}', '-struct', 'S', '-v7'), "
                f"and pass {new_name}"
            )
        raise RszError(
            f"{path}: a MATLAB v7.3 (HDF5) .mat file, which rsz cannot read; re-save it in MATLAB with "
            + command
        ) from None
    except Exception as err:  # noqa: BLE001 (scipy raises several types for a file that is not a .mat)
        raise RszError(f"{path}: cannot read as a MATLAB .mat file ({type(err).__name__}: {err})") from None
    _refuse_matlab_objects(path, mat, variable_names)
    return mat


def _refuse_matlab_objects(path: Path, mat: dict, variable_names: list[str] | None) -> None:
    """A variable saved as a MATLAB object (a `string` array, as names typed in double quotes are, or a
    categorical) comes back as scipy's MatlabOpaque, whose contents scipy cannot decode: refused in one
    line saying how to re-save it as the cell array of char vectors DSVA's own files hold."""
    from scipy.io.matlab import MatlabOpaque

    for key, value in list(mat.items()):
        if not isinstance(value, MatlabOpaque):
            continue
        fields = value.dtype.names or ()
        first = value.ravel()[0] if value.size else None
        # scipy < 1.18: key 'None', fields s0 (the name), s1 ('MCOS'), s2 (the class); later: the real
        # key and fields _TypeSystem, _Class, _ObjectMetadata
        name_field = first["s0"] if first is not None and "s0" in fields else key
        class_field = first["s2"] if first is not None and "s2" in fields else None
        if first is not None and "_Class" in fields:
            class_field = first["_Class"]
        name = name_field.decode("latin1") if isinstance(name_field, bytes) else str(name_field)
        kind = class_field.decode("latin1") if isinstance(class_field, bytes) else str(class_field or "")
        if variable_names is not None and name not in variable_names:
            del mat[key]  # only asked for to see whether it was one of these
            continue
        if kind in ("string", "categorical"):
            raise RszError(
                f"{path}: {name} is a MATLAB {kind} array, which rsz cannot read; re-save it in MATLAB as a "
                f"cell array of char vectors: load('{path.name}', '{name}'); {name} = cellstr({name}); "
                f"save('{path.name}', '{name}', '-append')"
            )
        raise RszError(
            f"{path}: {name} is a MATLAB {kind or 'class'} object, which rsz cannot read; re-save it in "
            "MATLAB as a numeric matrix or a cell array of char vectors"
        )


@dataclass
class ImageList:
    """The image order a DSVA splits .mat indexes: `image_files` (and 1-based `labels`, into the splits
    file's allclasses_names) of a features .mat, as DSVA's read_matdataset reads them from res101.mat."""

    path: Path
    files: list[str]
    labels: list[int] | None


def read_image_list(path: str | Path) -> ImageList:
    """`image_files` and, when present, `labels` of a .mat (only those variables are read: a features
    .mat also holds a large `features` matrix the split does not need)."""
    path = Path(path)
    if not path.is_file():
        raise RszError(
            f"{path}: file not found (--image-list: a .mat with image_files, like DSVA's res101.mat)"
        )
    mat = load_mat(path, ["image_files", "labels"])
    if "image_files" not in mat:
        raise RszError(
            f"{path}: missing key 'image_files' (--image-list: the features .mat, like res101.mat)"
        )
    files = _strings(mat["image_files"])
    if "labels" not in mat:
        return ImageList(path, files, None)
    labels = np.asarray(mat["labels"]).ravel()
    if labels.dtype.kind not in "iuf" or not np.all(np.mod(labels, 1) == 0):
        raise RszError(f"{path}: labels must be whole numbers (1-based class indices)")
    if len(labels) != len(files):
        raise RszError(f"{path}: {len(labels)} labels for {len(files)} image_files")
    return ImageList(path, files, [int(v) for v in labels])


def has_image_files(path: str | Path) -> bool:
    """Whether a readable .mat holds `image_files` (its variable names only; nothing is loaded)."""
    from scipy.io import whosmat

    return any(name == "image_files" for name, _shape, _kind in whosmat(str(path)))


def read_dsva_mat(
    path: str | Path,
    data: SceneData,
    split_id: int | str | None = None,
    holdout: float = 0.1,
    seed: int = 0,
    image_list: ImageList | None = None,
) -> tuple[Split, np.ndarray]:
    """DSVA's ann_attr_finetune_*_splits.mat -> (Split, att [C, A] in data.class_names order).

    The file holds `att` (attributes x classes; classes x attributes is taken too, unless square),
    `allclasses_names` and 1-based index lists into an image list: `image_list` (the features .mat's
    image_files, as DSVA indexes them), else the file's own `image_files`, both matched to the images by
    "<class>/<file>", else `data.image_paths` (class folders, then file names, sorted): train_zsl_loc (all
    seen images), train_gzsl_loc (seen images minus test_seen), test_seen_loc, test_unseen_loc, each
    optionally suffixed `_<id>` (the random split id; the smallest is used unless `split_id` says).
    Validation is carved by split_from_official.

    Refused (a split must never test on an image it trains on): an image in both the training list and a
    test list, in both test lists, or an image of a non-seen class in test_seen_loc. train_zsl_loc and
    test_seen_loc overlap by design (train_zsl = train_gzsl + test_seen); test_seen is then held out.
    """
    path = Path(path)
    mat = load_mat(path)
    suffix = _dsva_suffix(path, mat, split_id)
    for key in ("att", "allclasses_names"):
        if key not in mat:
            raise RszError(f"{path}: missing key {key!r}")
    locs = {}
    for key in ("train_gzsl_loc", "test_seen_loc", "test_unseen_loc", "train_zsl_loc"):
        if key + suffix in mat:
            locs[key] = mat[key + suffix]
    for key in ("test_seen_loc", "test_unseen_loc"):
        if key not in locs:
            raise RszError(f"{path}: missing key {key + suffix!r}")
    if "train_gzsl_loc" not in locs and "train_zsl_loc" not in locs:
        raise RszError(f"{path}: missing key {'train_gzsl_loc' + suffix!r} (or train_zsl_loc)")

    mat_names = _strings(mat["allclasses_names"])
    att = attribute_matrix(mat["att"], f"{path}: att")
    if att.shape[1] != len(mat_names) and att.shape[0] == len(mat_names):
        # classes x attributes, as a matrix re-saved from Python (one row per class) often is; a square
        # matrix cannot tell and is read as DSVA's own files are, attributes x classes
        att = att.T
    if att.shape[1] != len(mat_names):
        raise RszError(
            f"{path}: att has shape {att.shape}, expected attributes x {len(mat_names)} classes "
            "(the classes of allclasses_names)"
        )
    column = {class_name_key(n): i for i, n in enumerate(mat_names)}
    order = []
    for c in data.class_names:
        if class_name_key(c) not in column:
            raise RszError(f"{path}: class {c!r} of {data.root} is not in allclasses_names")
        order.append(column[class_name_key(c)])
    att_by_class = att[:, order].T.copy()

    image_list = _dsva_image_list(path, mat, data, image_list, mat_names)
    n = len(image_list)

    def indices(key: str) -> list[int]:
        values = np.asarray(locs[key]).ravel()
        bad = np.flatnonzero((np.mod(values, 1) != 0) | (values < 1) | (values > n))
        if bad.size:
            at = int(bad[0])
            hint = (
                " (0 is not an index: these may be 0-based, as MCFA's split files are)"
                if values[at] == 0
                else ""
            )
            raise RszError(
                f"{path}: {key + suffix} must hold 1-based image indices in 1..{n}, "
                f"its entry {at + 1} is {values[at]:g}{hint}"
            )
        unique, counts = np.unique(values, return_counts=True)
        if (counts > 1).any():  # trained twice, or held out for validation while its copy trains
            raise RszError(f"{path}: {key + suffix} lists image index {unique[counts > 1][0]:g} twice")
        return [int(v) - 1 for v in values]

    def classes_of(idx: list[int]) -> list[str]:
        return sorted({data.class_names[data.labels[image_list[i]]] for i in idx})

    test_seen = indices("test_seen_loc")
    test_unseen = indices("test_unseen_loc")
    if "train_gzsl_loc" in locs:
        train_key, train_listed = "train_gzsl_loc", indices("train_gzsl_loc")
        train_all = train_listed
    else:
        # train_zsl_loc holds every seen image, test_seen's too, by design: those are not trained on
        train_key, train_listed = "train_zsl_loc", indices("train_zsl_loc")
        held = set(test_seen)
        train_all = [i for i in train_listed if i not in held]
    paths = data.image_paths
    path_of = {i: paths[image_list[i]] for i in [*train_listed, *test_seen, *test_unseen]}

    def refuse_shared(a: list[int], key_a: str, b: list[int], key_b: str) -> None:
        """No image may be both trained on (or tested as seen) and tested on: compared by image, as two
        indices of an image_files list may name one image."""
        shared = {path_of[i] for i in a} & {path_of[i] for i in b}
        if shared:
            raise RszError(f"{path}: image {min(shared)!r} is in both {key_a + suffix} and {key_b + suffix}")

    if train_key == "train_gzsl_loc":  # (train_zsl_loc overlaps test_seen_loc by design)
        refuse_shared(train_listed, train_key, test_seen, "test_seen_loc")
    refuse_shared(train_listed, train_key, test_unseen, "test_unseen_loc")
    refuse_shared(test_seen, "test_seen_loc", test_unseen, "test_unseen_loc")
    seen = classes_of(train_all)
    unseen = classes_of(test_unseen)
    for i in test_seen:  # test_seen holds held-out images of the seen classes, nothing else
        c = data.class_names[data.labels[image_list[i]]]
        if c not in seen:
            why = "an unseen class" if c in unseen else f"a class with no images in {train_key + suffix}"
            raise RszError(
                f"{path}: test_seen_loc{suffix} lists image {path_of[i]!r} of {c!r}, {why} "
                "(test_seen holds held-out images of the seen classes)"
            )
    if set(seen) & set(unseen):
        raise RszError(
            f"{path}: class {sorted(set(seen) & set(unseen))[0]!r} has training and unseen test images"
        )
    split = split_from_official(
        data,
        path.stem + suffix,
        seen,
        unseen,
        [paths[image_list[i]] for i in train_all],
        [paths[image_list[i]] for i in test_seen],
        [paths[image_list[i]] for i in test_unseen],
        seed,
        holdout,
        where=path,
    )
    return split, att_by_class


def _dsva_suffix(path: Path, mat: dict, split_id: int | str | None) -> str:
    if split_id is not None:
        suffix = f"_{split_id}"
        if "test_unseen_loc" + suffix not in mat:
            raise RszError(f"{path}: no split id {split_id!r} (missing key 'test_unseen_loc{suffix}')")
        return suffix
    if "test_unseen_loc" in mat:
        return ""
    ids = sorted(k[len("test_unseen_loc_") :] for k in mat if k.startswith("test_unseen_loc_"))
    if not ids:
        raise RszError(f"{path}: missing key 'test_unseen_loc' (not a DSVA splits file)")
    ids.sort(key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    return f"_{ids[0]}"


def _dsva_image_list(
    path: Path, mat: dict, data: SceneData, image_list: ImageList | None, mat_names: list[str]
) -> list[int]:
    """For each image the .mat indexes: its position in data.image_paths."""
    if image_list is not None:
        if "image_files" in mat and _strings(mat["image_files"]) != image_list.files:
            raise RszError(
                f"{path}: its own image_files differ from those of --image-list {image_list.path}; "
                "drop --image-list (the file's own order is the one its indices follow)"
            )
        where, files = image_list.path, image_list.files
    elif "image_files" in mat:
        where, files = path, _strings(mat["image_files"])
    else:
        # The sorted list of every class's images: a class of the file with no folder here takes its
        # images out of it and every later index names another image (wrong classes, no error).
        folders = {class_name_key(c) for c in data.class_names}
        missing = [n for n in mat_names if class_name_key(n) not in folders]
        for name in missing:  # its folder is there, empty: its images would be missing all the same
            empty_folder_error(data, name, f"{path}, whose indices follow the sorted images of every class")
        if missing:
            more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
            raise RszError(
                f"{path}: allclasses_names has class {missing[0]!r}{more} with no class folder under "
                f"{data.root}; the indices of a file without image_files follow the sorted images of every "
                "class: pass the features .mat with --image-list"
            )
        return list(range(len(data.image_paths)))
    # only the features .mat's labels are checked: a splits file's own "labels" could mean anything
    labels = image_list.labels if image_list is not None else None
    position = {nfc("/".join(Path(p).parts[-2:])): i for i, p in enumerate(data.image_paths)}
    out = []
    for k, f in enumerate(files):
        parts = Path(f.replace("\\", "/")).parts
        key = nfc("/".join(parts[-2:]))
        if key not in position:
            if len(parts) > 1:
                empty_folder_error(data, parts[-2], f"image_files entry {f!r} of {where}")
            raise RszError(f"{where}: image_files entry {f!r} not found under {data.root}")
        if labels is not None:
            _check_label(where, f, parts[-2], labels[k], mat_names, path)
        out.append(position[key])
    return out


def _check_label(
    where: Path, entry: str, folder: str, label: int, mat_names: list[str], splits: Path
) -> None:
    """An image_files entry in another class folder than its label's class: the list is not the one
    the labels (and so, likely, the split's indices) were made with."""
    if not 1 <= label <= len(mat_names):
        raise RszError(
            f"{where}: label {label} of image_files entry {entry!r} is not in 1..{len(mat_names)} "
            f"(the classes of allclasses_names in {splits})"
        )
    if class_name_key(folder) != class_name_key(mat_names[label - 1]):
        raise RszError(
            f"{where}: image_files entry {entry!r} is in class folder {folder!r}, but its label {label} "
            f"is class {mat_names[label - 1]!r} (allclasses_names of {splits}, 1-based)"
        )


# ---------------------------------------------------------------------------------------------------------
# Karpathy captions


def read_karpathy(path: str | Path) -> dict[str, tuple[str, list[str]]]:
    """Karpathy caption JSON -> filename -> (split, raw sentences).

    Filenames are joined to `filepath` when an entry has one. Splits: train, val, test ("restval" counts
    as train). An image may have any number (>= 1) of sentences; one without `raw` text is its `tokens`.
    """
    path = Path(path)
    try:
        doc = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise RszError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    images = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(images, list):
        raise RszError(f"{path}: expected an object with an 'images' list (Karpathy caption format)")
    out: dict[str, tuple[str, list[str]]] = {}
    for k, entry in enumerate(images):
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            raise RszError(f"{path}: images[{k}] has no 'filename'")
        filename = entry["filename"]
        if isinstance(entry.get("filepath"), str) and entry["filepath"]:
            filename = f"{entry['filepath']}/{filename}"
        if not inside_folder(filename):
            raise RszError(
                f"{path}: images[{k}] has filename {filename!r}, not a path inside the image folder "
                "(absolute, or with '..')"
            )
        split = CAPTION_SPLITS.get(str(entry.get("split", "")))
        if split is None:
            raise RszError(
                f"{path}: images[{k}] ({filename}) has split {entry.get('split')!r}, "
                "expected train, val, test or restval"
            )
        sentences = entry.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            raise RszError(f"{path}: images[{k}] ({filename}) has no sentences")
        raws = []
        for s in sentences:
            raw = s.get("raw") if isinstance(s, dict) else None
            tokens = s.get("tokens") if isinstance(s, dict) else None
            if (not isinstance(raw, str) or not raw.strip()) and isinstance(tokens, list) and tokens:
                # Karpathy's tokens are the raw text lower-cased, split, punctuation dropped: files that
                # keep only them (or an empty raw) still caption the image
                raw = " ".join(str(t) for t in tokens)
            if not isinstance(raw, str) or not raw.strip():
                raise RszError(
                    f"{path}: images[{k}] ({filename}) has a sentence without 'raw' text or 'tokens'"
                )
            raws.append(raw.strip())
        if filename in out:
            raise RszError(f"{path}: image {filename!r} is listed twice")
        out[filename] = (split, raws)
    return out
