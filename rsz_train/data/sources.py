"""Data sets as they ship -> (SceneData, [(Split, DataSource)]): what `rsz-train KIND --data ROOT` reads.

`--data ROOT` is one of:
- the rsz layout (ROOT/images/<class>/..., ROOT/classes.txt, ROOT/splits/<name>/; docs/DESIGN.md);
- a plain class-folder data set: ROOT/<class>/*.{jpg,png,tif,jp2,webp,gif,bmp}, also one folder level above
  that (UCM's `Images/`, RSSDIVCS as it unpacks into one named folder);
- with `--captions FILE.json` (Karpathy JSON of RSICD, RSITMD, UCM-captions, Sydney-captions): the folder
  the JSON's filenames are relative to (or its images/, imgs/ or Images/ subfolder).

The class split of a class-folder data set comes from one of (DataOptions):
- `split_file` = DSVA's ann_attr_finetune_*_splits.mat (formats.read_dsva_mat), its 1-based indices into
  `image_list`'s image_files (DSVA's features .mat, res101.mat), else the file's own image_files, else
  the image list (classes, then files, sorted by name: a note says so);
- `split_file` = an MCFA split folder of seen_class_loc_<ratio>_<id>.txt / unseen_class_loc_<ratio>_<id>.txt
  (and test_seen_class_loc_<ratio>_<id>.txt in the GZSL folders): one 0-based image index per line into
  the image list (classes, then files, sorted by name), as masuqiang/MCFA-Pytorch data_loader.py
  indexes its feature rows with them;
- `split_file` = a folder with seen.txt and unseen.txt class lists (val.txt optional);
- `unseen` N with `seed`: a random class split.
`split_id` "N" picks one numbered split of a .mat or MCFA folder, "all" every one (in id order).

Nothing is copied: each Split comes with a DataSource that a run records (root, layout, split source,
split file and its sha256, the image order a .mat's indices follow).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from rsz_infer.classfile import class_name_key, read_class_file
from rsz_infer.errors import RszError
from rsz_train.data import formats
from rsz_train.data.formats import SceneData, Split

MCFA_KINDS = ("seen", "unseen", "test_seen")  # file stems <kind>_class_loc_<ratio>_<id>.txt
SORTED_IMAGE_ORDER = "sorted class folders and file names"  # a DSVA .mat's indices without image_files
# where a caption JSON's filenames may live under --data, first; then any other folder in it (RSICD_images/)
IMAGE_FOLDERS = ("", "images", "imgs", "Images")
VAL_CAPTION_HOLDOUT = 0.1  # of the training images, when a caption data set has no val captions


@dataclass
class DataOptions:
    """How to read a data set (the data options of `rsz-train KIND`)."""

    split: str | None = None  # rsz layout: a folder under DATA/splits
    split_file: str | None = None  # .mat (DSVA), MCFA split folder, or folder of seen.txt/unseen.txt
    split_id: str | None = None  # "N" or "all" (numbered splits of a .mat or MCFA folder)
    image_list: str | None = None  # .mat with the image_files a DSVA .mat's indices follow (res101.mat)
    unseen: int | None = None  # random class split with this many unseen classes
    seed: int = 0  # of the random class split and of every holdout
    classes: str | None = None  # class file with descriptions ("name: description" per line)
    attributes: str | None = None  # attributes.txt-format file ("name<TAB>group<TAB>phrase")
    captions: str | None = None  # Karpathy caption JSON


@dataclass
class DataSource:
    """What a run records about where its data and split came from."""

    root: str  # the folder image paths are relative to
    layout: str  # "rsz" | "class_folders" | "captions"
    split_source: str  # "rsz split" | "dsva mat" | "mcfa folder" | "class lists" | "random" | "captions"
    split_name: str
    split_file: str | None = None
    split_sha256: str | None = None  # of the file (of every split file of the id, for an MCFA folder)
    split_id: str | None = None
    validation: str = "val classes carved from the seen classes"
    image_order: str | None = None  # DSVA .mat: the image list its indices were read into
    image_list_sha256: str | None = None  # of the --image-list file, when one gave that order
    captions: str | None = None  # the --captions JSON the images' captions came from, whatever the split
    captions_sha256: str | None = None
    seed: int | None = None  # --seed: it drew the val classes and the held-out images of every split

    def to_dict(self) -> dict:
        """The record of report.json: its folder and file as absolute paths, so that it names the data
        wherever the run is read from (rsz-export --int8 finds the training tiles by split_file)."""
        record = asdict(self)
        for key in ("root", "split_file", "captions"):
            if record[key] is not None:
                record[key] = os.path.abspath(record[key])
        return record


def sha256_of(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# The images


def is_rsz_layout(data_dir: Path) -> bool:
    return (data_dir / "images").is_dir() and (
        (data_dir / "classes.txt").is_file() or (data_dir / "splits").is_dir()
    )


def _holds_class_folders(folder: Path) -> bool:
    """Some subfolder of `folder` holds image files directly."""
    return any(formats.is_data_folder(sub) and formats._images_in(sub) for sub in folder.iterdir())


def class_folder_root(data_dir: Path) -> Path:
    """ROOT itself when its subfolders hold images, else the one folder level below (Images/, RSSDIVCS/)."""
    if not data_dir.is_dir():
        raise RszError(f"{data_dir}: data folder not found")
    if _holds_class_folders(data_dir):
        return data_dir
    subs = [p for p in data_dir.iterdir() if formats.is_data_folder(p)]
    candidates = [p for p in subs if _holds_class_folders(p)]
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates[:3])
        raise RszError(f"{data_dir}: several folders of class folders ({names}); give one as --data")
    # an archive's folder one level further down (UCMerced_LandUse/Images/ of the folder it unzipped
    # into): named, not guessed, since a folder of downloads may hold several data sets
    deeper = sorted(
        q for p in subs for q in p.iterdir() if formats.is_data_folder(q) and _holds_class_folders(q)
    )
    hint = f"; try --data {deeper[0].parent} (its {deeper[0].name}/ holds class folders)" if deeper else ""
    raise RszError(
        f"{data_dir}: no class folders with images (expected ROOT/<class_name>/<image files>){hint}"
    )


def _apply_classes_file(data: SceneData, path: Path) -> None:
    """Descriptions from a class file; its names match class folders up to case, spaces and '_'."""
    folder_of = {class_name_key(n): n for n in data.class_names}
    for entry in read_class_file(path):
        folder = folder_of.get(class_name_key(entry.name))
        if folder is None and any(
            class_name_key(e) == class_name_key(entry.name) for e in data.empty_folders
        ):
            continue  # an empty class folder, left out: nothing to describe
        if folder is None:
            raise RszError(f"{path}: class {entry.name!r} is not a class folder of {data.root}")
        data.descriptions[folder] = entry.description


def _apply_attributes_file(data: SceneData, path: Path) -> None:
    data.attribute_names, data.attribute_groups, data.attribute_phrases = formats._read_attributes(path)


def load_dataset(data_dir: Path | str, options: DataOptions) -> tuple[SceneData, str]:
    """The images, classes and (optional) descriptions, attributes and captions -> (SceneData, layout)."""
    data_dir = Path(data_dir)
    if data_dir.exists() and not data_dir.is_dir():  # the downloaded archive itself, say
        raise RszError(
            f"{data_dir}: not a folder (--data is the folder of a data set; unpack an archive first)"
        )
    if not data_dir.is_dir():
        raise RszError(f"{data_dir}: data folder not found (make one with rsz-train synth --out {data_dir})")
    if options.captions:
        data, layout = _caption_dataset(data_dir, Path(options.captions)), "captions"
    elif is_rsz_layout(data_dir):
        data, layout = formats.load_benchmark(data_dir), "rsz"
    else:
        data, layout = formats.load_scene_folders(class_folder_root(data_dir)), "class_folders"
    if layout != "rsz":
        from rsz_train.text import class_name_text

        # A folder name is its class's only text until --classes gives one: as words ("mobilehomepark",
        # "MobileHomePark", "mobile_home_park" -> "mobile home park") for the sentence encoder.
        data.descriptions = {c: class_name_text(c) for c in data.class_names}
    if options.classes:
        _apply_classes_file(data, Path(options.classes))
    if options.attributes:
        _apply_attributes_file(data, Path(options.attributes))
    elif layout != "rsz" and (data_dir / "attributes.txt").is_file():
        _apply_attributes_file(data, data_dir / "attributes.txt")
    return data, layout


def _caption_class(filename: str, by_folder: bool) -> str:
    """The class of a caption data set's image: its folder when `by_folder`, or the name before a
    trailing number (RSITMD 'airport_12.tif', RSICD 'denseresidential_3.jpg'), else 'image'."""
    if by_folder and "/" in filename:
        return filename.rsplit("/", 1)[0]
    stem = Path(filename).stem
    match = re.match(r"^(.*?[A-Za-z])[_\-\s]*\d+$", stem)
    return match.group(1) if match else "image"


def _on_disk(root: Path, listed: str, listings: dict[Path, dict[str, str]]) -> str | None:
    """The name on disk of the file a caption JSON names under `root`, else None. Compared under Unicode
    NFC (formats.nfc), part by part: a data set unpacked on macOS names its files in NFD, a JSON written
    elsewhere in NFC, or the other way round. `listings` caches each folder's names."""
    if (root / listed).is_file():
        return listed
    folder, real = root, []
    for part in listed.split("/"):
        names = listings.get(folder)
        if names is None:
            try:
                names = {formats.nfc(n): n for n in os.listdir(folder)}
            except OSError:  # not a folder, or unreadable: nothing of the data set is found in it
                names = {}
            listings[folder] = names
        name = names.get(formats.nfc(part))
        if name is None:
            return None
        folder, real = folder / name, [*real, name]
    return "/".join(real) if folder.is_file() else None


def _caption_dataset(data_dir: Path, captions_file: Path) -> SceneData:
    listed = formats.read_karpathy(captions_file)
    if not listed:
        raise RszError(f"{captions_file}: no images")
    others = sorted(
        p.name for p in data_dir.iterdir() if formats.is_data_folder(p) and p.name not in IMAGE_FOLDERS
    )
    # The images folder is the one holding most of the JSON's images (the first such in IMAGE_FOLDERS
    # order, then the others): not the first that holds its first image, which one lost file, or a stray
    # copy beside the folder, made the wrong guess or no folder at all.
    best: tuple[int, Path, dict[str, str]] | None = None
    for sub in [*IMAGE_FOLDERS, *others]:
        listings: dict[Path, dict[str, str]] = {}
        found = {f: real for f in listed if (real := _on_disk(data_dir / sub, f, listings)) is not None}
        if best is None or len(found) > best[0]:
            best = (len(found), data_dir / sub, found)
        if len(found) == len(listed):
            break
    count, root, found = best
    missing = [f for f in listed if f not in found]
    if 2 * count <= len(listed):  # most missing: --data is not the data set's folder, or another release
        where = root if count else f"{data_dir} nor in any folder in it"
        raise RszError(
            f"{captions_file}: {len(missing)} of its {len(listed)} images not found under {where} "
            f"(first: {missing[0]!r}; is --data the data set's folder?)"
        )
    if missing:  # how many tells a few lost files from a JSON of another release's names
        more = f" (+{len(missing) - 1} more of its {len(listed)} images)" if len(missing) > 1 else ""
        raise RszError(f"{captions_file}: image {missing[0]!r} not found under {root}{more}")
    seen: dict[str, str] = {}
    for f, real in found.items():  # two names alike under NFC are one file, not two images
        if real in seen:
            raise RszError(f"{captions_file}: images {seen[real]!r} and {f!r} are one file, {root / real}")
        seen[real] = f
    # Each image under the name the file system gave it (the JSON's may be the other Unicode form)
    entries = {found[f]: value for f, value in listed.items()}
    filenames = sorted(entries, key=formats.nfc)  # as class folders' files: the same order on any disk
    # Images in several folders are in class folders; one folder for all (a `filepath` such as
    # 'RSICD_images' on every entry) is no class: every image would be of one class named after it.
    by_folder = len({f.rsplit("/", 1)[0] if "/" in f else "" for f in filenames}) > 1
    class_of = {f: _caption_class(f, by_folder) for f in filenames}
    class_names = sorted(set(class_of.values()))
    index = {c: i for i, c in enumerate(class_names)}
    return SceneData(
        root=root,
        class_names=class_names,
        descriptions={c: c for c in class_names},  # as words in load_dataset
        image_paths=filenames,
        labels=np.array([index[class_of[f]] for f in filenames], dtype=np.int64),
        attribute_names=[],
        attribute_groups=[],
        attribute_phrases=[],
        attribute_matrix=None,
        captions={f: entries[f][1] for f in filenames},
        caption_splits={f: entries[f][0] for f in filenames},
    )


# ---------------------------------------------------------------------------------------------------------
# The splits


def resolve_splits(
    data_dir: Path | str, data: SceneData, layout: str, options: DataOptions
) -> list[tuple[Split, DataSource]]:
    """Every split the options name (several only with split_id "all")."""
    splits = _resolve_splits(Path(data_dir), data, layout, options)
    if data.empty_folders:  # none of them named by the split (that is refused): said, not silently dropped
        from rsz_train.distributed import current  # (torch: only here)

        if current().is_main:
            names = ", ".join(data.empty_folders[:3]) + (" ..." if len(data.empty_folders) > 3 else "")
            print(
                f"note: {data.root}: {len(data.empty_folders)} class folder"
                f"{'s' if len(data.empty_folders) > 1 else ''} with no images left out ({names})",
                file=sys.stderr,
            )
    for _split, source in splits:
        source.seed = options.seed
    if options.captions:  # trained on, under any split (--unseen, --split-file): recorded as a split file is
        digest = sha256_of([Path(options.captions)])
        for _split, source in splits:
            source.captions, source.captions_sha256 = options.captions, digest
    return splits


def _resolve_splits(
    data_dir: Path, data: SceneData, layout: str, options: DataOptions
) -> list[tuple[Split, DataSource]]:
    root = str(data.root)
    chosen = [options.split, options.split_file, options.unseen]
    if sum(v is not None for v in chosen) > 1:
        raise RszError("--split, --split-file and --unseen: give only one of them")
    if options.split_id is not None and options.split_file is None:
        raise RszError(f"--split-id {options.split_id}: needs --split-file (a .mat or an MCFA split folder)")
    if options.image_list is not None and (
        options.split_file is None or Path(options.split_file).suffix.lower() != ".mat"
    ):
        raise RszError(
            f"--image-list {options.image_list}: needs --split-file FILE.mat (a DSVA splits .mat, whose "
            "indices it orders)"
        )
    if layout == "captions" and options.split_file is None and options.unseen is None:
        split, validation = caption_split(data, options.seed)
        return [(split, DataSource(root, layout, "captions", split.name, options.captions,
                                   sha256_of([Path(options.captions)]), validation=validation))]  # fmt: skip
    if options.split_file is not None:
        return _split_file(Path(options.split_file), data, layout, options)
    if options.unseen is not None:
        split = random_class_split(data, options.unseen, options.seed)
        return [(split, DataSource(root, layout, "random", split.name))]
    if layout == "rsz":
        name = options.split or _default_split()
        split = formats.load_split(data_dir, name)
        folder = data_dir / "splits" / name
        digest = sha256_of(sorted(folder.glob("*.txt")))  # its class lists and per-image lists, by name
        return [(split, DataSource(root, layout, "rsz split", name, str(folder), digest))]
    raise RszError(
        f"{data_dir}: a class-folder data set needs a class split: --split-file "
        "(a DSVA .mat, an MCFA split folder or a folder with seen.txt/unseen.txt) or --unseen N"
    )


def _default_split() -> str:
    from rsz_train.data.synth import DEFAULT_SPLIT

    return DEFAULT_SPLIT


def _split_file(
    path: Path, data: SceneData, layout: str, options: DataOptions
) -> list[tuple[Split, DataSource]]:
    root = str(data.root)
    if path.suffix.lower() == ".mat":
        return _dsva_splits(path, data, layout, options)
    if path.is_file() and path.name in ("seen.txt", "unseen.txt"):
        path = path.parent
    mcfa_file = _MCFA_NAME.match(path.name) if path.is_file() else None
    if mcfa_file:  # one file of an MCFA split: that split of its folder
        if options.split_id not in (None, mcfa_file.group(3)):
            raise RszError(
                f"{path}: a file of split {mcfa_file.group(3)}, not of --split-id {options.split_id}: "
                f"pass its folder, --split-file {path.parent}"
            )
        path, options = path.parent, replace(options, split_id=mcfa_file.group(3))
    if path.is_file():
        raise RszError(f"{path}: not a split file (a .mat, an MCFA split folder, or seen.txt/unseen.txt)")
    if not path.is_dir():
        raise RszError(f"{path}: split file not found (a .mat, an MCFA split folder, or seen.txt/unseen.txt)")
    if list(path.glob("seen_class_loc_*.txt")):
        out = []
        for split_id, files in mcfa_split_files(path, options.split_id):
            split = read_mcfa_split(files, data, f"{path.name}_{split_id}", options.seed)
            source = DataSource(
                root, layout, "mcfa folder", split.name, str(path), sha256_of(list(files.values())), split_id
            )
            out.append((split, source))
        return out
    if (path / "seen.txt").is_file():
        if options.split_id is not None:
            raise RszError(f"--split-id {options.split_id}: {path} holds one split (seen.txt/unseen.txt)")
        split = class_list_split(path, data, options.seed)
        files = [path / f"{k}.txt" for k in ("seen", "unseen", "val") if (path / f"{k}.txt").is_file()]
        return [(split, DataSource(root, layout, "class lists", split.name, str(path), sha256_of(files)))]
    raise RszError(f"{path}: no split files (seen_class_loc_*.txt, or seen.txt and unseen.txt)")


def _dsva_splits(
    path: Path, data: SceneData, layout: str, options: DataOptions
) -> list[tuple[Split, DataSource]]:
    image_list = None if options.image_list is None else formats.read_image_list(options.image_list)
    out = []
    for split_id in dsva_split_ids(path, options.split_id):
        split, att = formats.read_dsva_mat(path, data, split_id, seed=options.seed, image_list=image_list)
        _attach_matrix(data, att, path)
        source = DataSource(
            str(data.root), layout, "dsva mat", split.name, str(path), sha256_of([path]), split_id
        )
        out.append((split, source))
    # read_dsva_mat has read the file: whosmat cannot fail on it now
    if image_list is not None:
        order, digest = f"image_files of {image_list.path}", sha256_of([image_list.path])
    elif formats.has_image_files(path):
        order, digest = f"image_files of {path}", None
    else:
        # The authors' splits files have no image_files: their indices follow the features .mat's list,
        # which this order need not match; a wrong guess trains on a wrong split, so say which was used.
        order, digest = SORTED_IMAGE_ORDER, None
        from rsz_train.distributed import current  # (torch: only here)

        if current().is_main:  # once per job, not once per rank
            print(
                f"note: {path} has no image_files: its indices are taken to follow the class folders and "
                "file names in sorted order; the authors' indices follow their features .mat's "
                "image_files: pass it with --image-list",
                file=sys.stderr,
            )
    for _split, source in out:
        source.image_order, source.image_list_sha256 = order, digest
    return out


def _attach_matrix(data: SceneData, att: np.ndarray, path: Path) -> None:
    """The .mat's attribute matrix becomes the ground truth (train.semantics: matrix); names come from an
    attributes file with as many rows, else att_1..att_A (and no phrases)."""
    att = formats.attribute_matrix(att, f"{path}: att")  # finite numbers: a NaN would train to a NaN loss
    if att.shape[0] != len(data.class_names):
        raise RszError(
            f"{path}: att has {att.shape[0]} class rows, the data set {len(data.class_names)} classes"
        )
    if data.attribute_names and len(data.attribute_names) != att.shape[1]:
        raise RszError(
            f"{path}: att has {att.shape[1]} attributes, the attributes file {len(data.attribute_names)}"
        )
    if not data.attribute_names:
        data.attribute_names = [f"att_{i + 1}" for i in range(att.shape[1])]
        data.attribute_groups = ["att"] * att.shape[1]
    data.attribute_matrix = att


def dsva_split_ids(path: Path, split_id: str | None) -> list[str | None]:
    if split_id != "all":
        return [split_id]
    keys = formats.load_mat(path).keys()
    ids = sorted(
        (k[len("test_unseen_loc_") :] for k in keys if k.startswith("test_unseen_loc_")), key=_id_key
    )
    if not ids:
        raise RszError(f"{path}: --split-id all, but the file has no numbered splits (test_unseen_loc_<id>)")
    return list(ids)


def _id_key(split_id: str) -> tuple:
    return (not split_id.isdigit(), int(split_id) if split_id.isdigit() else 0, split_id)


_MCFA_NAME = re.compile(r"^(seen|unseen|test_seen)_class_loc_(.+)_([^_]+)\.txt$")


def mcfa_split_files(folder: Path, split_id: str | None) -> list[tuple[str, dict[str, Path]]]:
    """(id, {"seen": path, "unseen": path[, "test_seen": path]}) of the chosen ids of an MCFA folder."""
    by_id: dict[str, dict[str, Path]] = {}
    unmatched = []
    for path in sorted(folder.glob("*_class_loc_*.txt")):
        match = _MCFA_NAME.match(path.name)
        if match:
            by_id.setdefault(match.group(3), {})[match.group(1)] = path
        else:
            unmatched.append(path.name)
    if not by_id:
        seen = f" ({unmatched[0]} does not match)" if unmatched else ""
        raise RszError(
            f"{folder}: no MCFA split files{seen}; expected seen_class_loc_<ratio>_<id>.txt and "
            "unseen_class_loc_<ratio>_<id>.txt (test_seen_class_loc_<ratio>_<id>.txt optional)"
        )
    ids = sorted(by_id, key=_id_key)
    if split_id is None:
        if len(ids) > 1:
            raise RszError(
                f"{folder}: {len(ids)} splits ({', '.join(ids)}); choose one with --split-id N or all"
            )
        chosen = ids
    elif split_id == "all":
        chosen = ids
    elif split_id in by_id:
        chosen = [split_id]
    else:
        raise RszError(f"{folder}: no split id {split_id!r} (ids: {', '.join(ids)})")
    # Only the chosen ids must be whole: a file missing from another split does not stop this one.
    for sid in chosen:
        for kind in ("seen", "unseen"):
            if kind not in by_id[sid]:
                raise RszError(f"{folder}: split id {sid!r} has no {kind}_class_loc_*_{sid}.txt")
    return [(sid, by_id[sid]) for sid in chosen]


def _read_indices(path: Path, count: int) -> list[int]:
    """One 0-based image index per line (blank lines skipped), each once: an image listed twice would be
    trained twice, and could be held out for validation while its other copy trains."""
    out = []
    line_of: dict[int, int] = {}
    for number, line in enumerate(formats._read_text(path).splitlines(), start=1):
        text = line.strip()
        if not text:
            continue
        value = _whole_number(text)  # "12", "12.0", or np.savetxt's default "1.200000000000000000e+01"
        if value is None or not 0 <= value < count:
            # one past the last image: the file counts from 1 and every index would name the next image
            hint = " (the file may be 1-based, as DSVA's .mat indices are)" if value == count else ""
            if value is None and re.search(r"[^\W\d]", text):  # letters: a class name or a file name
                hint = " (a split by class names is a folder of seen.txt and unseen.txt)"
            raise RszError(
                f"{path}:{number}: expected a 0-based image index in 0..{count - 1}, got {text[:40]!r}{hint}"
            )
        if value in line_of:
            raise RszError(f"{path}:{number}: image index {value} is already on line {line_of[value]}")
        line_of[value] = number
        out.append(value)
    if not out:
        raise RszError(f"{path}: no image indices")
    return out


def _whole_number(text: str) -> int | None:
    if not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text):
        return None
    value = float(text)
    return int(value) if math.isfinite(value) and value == int(value) else None


def read_mcfa_split(files: dict[str, Path], data: SceneData, name: str, seed: int = 0) -> Split:
    """An MCFA split: seen (training images of the seen classes), unseen, optional test_seen."""
    paths = data.image_paths
    index = {k: _read_indices(p, len(paths)) for k, p in files.items()}
    train_all = [paths[i] for i in index["seen"]]
    test_seen = [paths[i] for i in index.get("test_seen", [])]
    test_unseen = [paths[i] for i in index["unseen"]]
    overlap = set(train_all) & set(test_seen)
    if overlap:
        raise RszError(f"{files['test_seen']}: image {sorted(overlap)[0]!r} is also in {files['seen'].name}")
    overlap = set(test_seen) & set(test_unseen)
    if overlap:
        raise RszError(
            f"{files['test_seen']}: image {sorted(overlap)[0]!r} is also in {files['unseen'].name}"
        )
    classes_of = {p: data.class_names[label] for p, label in zip(paths, data.labels)}
    seen = sorted({classes_of[p] for p in train_all})
    unseen = sorted({classes_of[p] for p in test_unseen})
    both = set(seen) & set(unseen)
    if both:
        raise RszError(f"{files['unseen']}: class {sorted(both)[0]!r} has images in {files['seen'].name} too")
    for p in test_seen:  # held-out images of the seen classes only: an unseen one would be scored twice
        if classes_of[p] not in seen:
            why = (
                "an unseen class"
                if classes_of[p] in unseen
                else f"a class with no images in {files['seen'].name}"
            )
            raise RszError(
                f"{files['test_seen']}: image {p!r} is of {classes_of[p]!r}, {why} "
                "(test_seen holds held-out images of the seen classes)"
            )
    return formats.split_from_official(data, name, seen, unseen, train_all, test_seen, test_unseen, seed)


def class_list_split(folder: Path, data: SceneData, seed: int = 0) -> Split:
    """seen.txt / unseen.txt (/ val.txt) class lists next to a class-folder data set."""
    folder_of = {class_name_key(n): n for n in data.class_names}
    lists = {}
    for key in ("seen", "unseen", "val"):
        path = folder / f"{key}.txt"
        if key == "val" and not path.is_file():
            continue
        names: list[str] = []
        for name in formats.read_class_list(path):
            folder_name = folder_of.get(class_name_key(name))
            if folder_name is None:
                formats.empty_folder_error(data, name, str(path))
                hint = (
                    "; a split by image indices is MCFA's seen_class_loc_<ratio>_<id>.txt"
                    if re.fullmatch(r"\d+", name)
                    else ""
                )
                raise RszError(f"{path}: unknown class {name!r} (not a class folder of {data.root}{hint})")
            if folder_name in names:  # 'Airplane' and 'airplane' name one folder: its images twice
                raise RszError(f"{path}: class {name!r} is listed twice (class folder {folder_name!r})")
            names.append(folder_name)
        lists[key] = names
    # the files' own problems name their folder (make_split would say "split <name>")
    formats._check_class_lists(folder, lists["seen"], lists["unseen"], lists.get("val", []))
    val = lists.get("val") or formats.carve_val_classes(lists["seen"], seed)
    return formats.make_split(data, lists["seen"], lists["unseen"], val, seed=seed, name=folder.name)


def random_class_split(data: SceneData, unseen: int, seed: int) -> Split:
    """`unseen` classes drawn at random (seeded), the rest seen; val classes carved from the seen."""
    count = len(data.class_names)
    if not 1 <= unseen <= count - 2:
        raise RszError(f"--unseen {unseen}: must be in 1..{count - 2} ({count} classes, 2 seen at least)")
    order = np.random.default_rng(seed).permutation(count)
    unseen_names = sorted(data.class_names[i] for i in order[:unseen])
    seen = sorted(data.class_names[i] for i in order[unseen:])
    val = formats.carve_val_classes(seen, seed)
    return formats.make_split(
        data, seen, unseen_names, val, seed=seed, name=f"random_{count - unseen}_{unseen}_s{seed}"
    )


def caption_split(data: SceneData, seed: int = 0) -> tuple[Split, str]:
    """A caption data set's own train/val/test images (no classes held out: retrieval needs none).

    When the JSON has no val images (RSITMD), VAL_CAPTION_HOLDOUT of the training images (seeded) hold
    their captions out for selection; the returned text says which."""
    by_split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for p in data.image_paths:
        by_split[data.caption_splits[p]].append(p)
    if not by_split["train"]:
        raise RszError("caption data set: no training images (split 'train' or 'restval')")
    validation = "val captions of the caption file"
    if not by_split["val"]:
        train = by_split["train"]
        n_hold = max(1, round(VAL_CAPTION_HOLDOUT * len(train)))
        if len(train) - n_hold < 2:
            raise RszError(f"caption data set: {len(train)} training images, too few to hold some out")
        order = np.random.default_rng(seed).permutation(len(train))
        held = sorted(train[i] for i in order[:n_hold])
        for p in held:
            data.caption_splits[p] = "val"
        by_split["val"] = held
        held_set = set(held)
        by_split["train"] = [p for p in train if p not in held_set]
        validation = (
            f"held-out training captions ({n_hold} of {len(train)} training images; the file has no val)"
        )
    classes = sorted({data.class_names[i] for i in data.labels})
    split = Split(
        name="captions",
        seen=classes,
        unseen=[],
        val=[],
        train=by_split["train"],
        val_seen=by_split["val"],
        val_unseen=[],
        test_seen=by_split["test"],
        test_unseen=[],
    )
    return split, validation
