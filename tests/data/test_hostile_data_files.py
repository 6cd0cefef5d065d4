"""Data files that would otherwise train on garbage, test on trained images, or read outside --data: each
is a one-line RszError naming the file and the field (small real files, the real readers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.io import loadmat, savemat

from rsz_infer.errors import RszError
from rsz_train.data.formats import load_benchmark, load_scene_folders, load_split, read_dsva_mat
from rsz_train.data.sources import DataOptions, load_dataset, resolve_splits

from .test_formats import _dsva_mat, _rsz_layout, _scene_folders


@pytest.fixture
def folders(tmp_path):
    """5 classes x 6 images; DSVA's file: seen beach, dense_residential, forest, river; unseen harbor."""
    root = _scene_folders(tmp_path / "rssdivcs")
    return root, load_scene_folders(root)


def _mat(path: Path, data, **changes) -> Path:
    """_dsva_mat's file (one unnumbered split) with some fields replaced (None: removed)."""
    _dsva_mat(path, data, suffixes=("",))
    content = {k: v for k, v in loadmat(str(path)).items() if not k.startswith("__")}
    for key, value in changes.items():
        if value is None:
            content.pop(key)
        else:
            content[key] = value
    savemat(str(path), content)
    return path


def _loc(values: list[int]) -> np.ndarray:
    return np.array(values)[:, None]


def _first(data, name: str) -> int:
    """1-based .mat index of class `name`'s first image (the file's test_seen image of a seen class)."""
    return 1 + next(i for i, p in enumerate(data.image_paths) if p.startswith(name + "/"))


# --- att must be a finite numeric 2-D matrix -----------------------------------------------------


@pytest.mark.parametrize(
    ("att", "message"),
    [
        (np.array([["a"] * 5] * 3, dtype=object), r"x.mat: att: must be a numeric matrix, got a cell array"),
        (np.full((3, 5), np.nan), r"x.mat: att: value nan at row 1, column 1 is not a finite number"),
        (np.array([[1.0, 2, 3, np.inf, 5]] * 3), r"x.mat: att: value inf at row 1, column 4 is not a finite"),
        (np.zeros((0, 0)), r"x.mat: att: must be a 2-D matrix, got shape \(0, 0\)"),
    ],
)
def test_dsva_att_must_be_finite_numbers(folders, tmp_path, att, message):
    _, data = folders
    with pytest.raises(RszError, match=message):
        read_dsva_mat(_mat(tmp_path / "x.mat", data, att=att), data)


def test_attribute_matrix_csv_refuses_nan_and_inf(tmp_path):
    root = _rsz_layout(tmp_path / "mine")
    load_benchmark(root)  # the layout as written reads
    csv = root / "attribute_matrix.csv"
    for bad in ("nan", "inf", "-Infinity"):
        csv.write_text(csv.read_text().replace("forest,0,0", f"forest,0,{bad}"))
        with pytest.raises(RszError, match=r"attribute_matrix.csv:4: values must be finite numbers"):
            load_benchmark(root)
        csv.write_text(csv.read_text().replace(f"forest,0,{bad}", "forest,0,0"))


# --- no image both trained on and tested on, no unseen image in test_seen ---------------------------


def test_dsva_split_contamination_is_refused(folders, tmp_path):
    _, data = folders
    gzsl = loadmat(str(_mat(tmp_path / "ok.mat", data)))["train_gzsl_loc"].ravel().tolist()
    seen_first = [_first(data, c) for c in ("beach", "dense_residential", "forest", "river")]
    harbor = [i + 1 for i, p in enumerate(data.image_paths) if p.startswith("harbor/")]
    cases = [
        # a training image also in test_seen (train_zsl_loc dropped: train_gzsl_loc is what trains)
        (
            {"train_gzsl_loc": _loc(gzsl + [seen_first[0]]), "train_zsl_loc": None},
            r"a.mat: image 'beach/beach00.jpg' is in both train_gzsl_loc and test_seen_loc",
        ),
        # an unseen image also in test_seen: it would be scored in test_seen and test_unseen
        (
            {"test_seen_loc": _loc(seen_first + [harbor[0]])},
            r"a.mat: image 'harbor/harbor00.jpg' is in both test_seen_loc and test_unseen_loc",
        ),
        # an unseen class's image in test_seen, not in test_unseen
        (
            {"test_seen_loc": _loc(seen_first + [harbor[0]]), "test_unseen_loc": _loc(harbor[1:])},
            r"a.mat: test_seen_loc lists image 'harbor/harbor00.jpg' of 'harbor', an unseen class",
        ),
        # a training image also in test_unseen
        (
            {"train_gzsl_loc": _loc(gzsl + [harbor[0]])},
            r"a.mat: image 'harbor/harbor00.jpg' is in both train_gzsl_loc and test_unseen_loc",
        ),
        (
            {"train_gzsl_loc": None, "train_zsl_loc": _loc(sorted(gzsl + seen_first) + [harbor[0]])},
            r"a.mat: image 'harbor/harbor00.jpg' is in both train_zsl_loc and test_unseen_loc",
        ),
    ]
    for changes, message in cases:
        with pytest.raises(RszError, match=message):
            read_dsva_mat(_mat(tmp_path / "a.mat", data, **changes), data)


def test_dsva_train_zsl_loc_overlaps_test_seen_by_design(folders, tmp_path):
    """train_zsl_loc is every seen image (train_gzsl + test_seen): accepted, test_seen held out of it."""
    _, data = folders
    split, _ = read_dsva_mat(_mat(tmp_path / "zsl.mat", data, train_gzsl_loc=None), data)
    assert split.test_seen and not set(split.refit.train) & set(split.test_seen)
    assert not (set(split.train) | set(split.val_seen)) & set(split.test_seen)


def _mcfa(folder: Path, data, unseen: set[str], extra_test_seen: list[int] = (), drop_unseen=()) -> Path:
    """An MCFA GZSL folder (0-based indices), with extra test_seen lines and unseen lines left out."""
    rows = {"seen": [], "test_seen": [], "unseen": []}
    for i, label in enumerate(data.labels):
        if data.class_names[label] in unseen:
            if i not in drop_unseen:
                rows["unseen"].append(i)
        else:
            rows["test_seen" if i % 6 == 5 else "seen"].append(i)
    rows["test_seen"] += list(extra_test_seen)
    folder.mkdir(parents=True, exist_ok=True)
    for kind, values in rows.items():
        (folder / f"{kind}_class_loc_0.2_1.txt").write_text("".join(f"{v}\n" for v in values))
    return folder


def test_mcfa_unseen_image_in_test_seen_is_refused(folders, tmp_path):
    root, data = folders
    harbor0 = data.image_paths.index("harbor/harbor00.jpg")
    cases = [
        (
            _mcfa(tmp_path / "both", data, {"harbor"}, [harbor0]),
            r"both/test_seen_class_loc_0.2_1.txt: image 'harbor/harbor00.jpg' is also in "
            r"unseen_class_loc_0.2_1.txt",
        ),
        (
            _mcfa(tmp_path / "only", data, {"harbor"}, [harbor0], drop_unseen=[harbor0]),
            r"only/test_seen_class_loc_0.2_1.txt: image 'harbor/harbor00.jpg' is of 'harbor', "
            r"an unseen class",
        ),
    ]
    for folder, message in cases:
        options = DataOptions(split_file=str(folder))
        loaded, layout = load_dataset(root, options)
        with pytest.raises(RszError, match=message):
            resolve_splits(root, loaded, layout, options)
    options = DataOptions(split_file=str(_mcfa(tmp_path / "ok", data, {"harbor"})))
    [(split, _)] = resolve_splits(root, *load_dataset(root, options), options)
    assert split.unseen == ["harbor"] and len(split.test_seen) == 3  # 4 seen, one carved as val


# --- every path a data file names stays inside its folder -----------------------------------------


def _captions(folder: Path, filenames: list[str], filepath: str | None = None) -> Path:
    images = [{"filename": f, "split": "train", "sentences": [{"raw": f"tile {f}"}]} for f in filenames]
    if filepath is not None:
        images[0]["filepath"] = filepath
    path = folder / "dataset.json"
    path.write_text(json.dumps({"images": images}))
    return path


def test_caption_paths_outside_the_data_folder_are_refused(tmp_path):
    outside = _scene_folders(tmp_path / "elsewhere")  # real images, reachable by '..'
    data_dir = tmp_path / "rsicd"
    _scene_folders(data_dir / "images")
    inside = ["beach/beach00.jpg", "beach/beach01.PNG"]
    load_dataset(data_dir, DataOptions(captions=str(_captions(data_dir, inside))))  # reads
    escapes = [
        ["../../elsewhere/beach/beach00.jpg", *inside],
        [str(outside / "beach" / "beach00.jpg"), *inside],
    ]
    for filenames in escapes:
        captions = _captions(data_dir, filenames)
        with pytest.raises(
            RszError, match=r"dataset.json: images\[0\] has filename .*, not a path inside the image folder"
        ):
            load_dataset(data_dir, DataOptions(captions=str(captions)))
    captions = _captions(data_dir, ["beach00.jpg", *inside], filepath="../../elsewhere/beach")
    with pytest.raises(RszError, match=r"dataset.json: images\[0\] has filename '\.\./\.\./elsewhere/beach/"):
        load_dataset(data_dir, DataOptions(captions=str(captions)))
    # the rsz layout's own captions.json too
    root = _rsz_layout(tmp_path / "mine")
    (root / "captions.json").write_text(
        json.dumps(
            {
                "images": [
                    {"filename": "../images/beach/beach00.jpg", "split": "train", "sentences": [{"raw": "x"}]}
                ]
            }
        )  # fmt: skip
    )
    with pytest.raises(RszError, match=r"captions.json: images\[0\] has filename '\.\./images/beach"):
        load_benchmark(root)


def test_split_lists_and_class_files_cannot_reach_outside(tmp_path):
    _scene_folders(tmp_path / "elsewhere")
    root = _rsz_layout(tmp_path / "mine")
    split = root / "splits" / "mine"
    written = {
        "train": ["beach/beach01.PNG", "dense_residential/dense_residential01.PNG"],
        "val_seen": ["beach/beach02.tif"],
        "val_unseen": ["forest/forest00.jpg"],
        "test_seen": ["beach/beach03.jpg"],
        "test_unseen": ["harbor/harbor00.jpg"],
    }
    for key, lines in written.items():
        (split / f"{key}.txt").write_text("".join(line + "\n" for line in lines))
    load_split(root, "mine")  # reads
    # the class folder is a training class, so only the path check stops it
    (split / "train.txt").write_text("beach/../../../elsewhere/beach/beach00.jpg\n")
    with pytest.raises(
        RszError, match=r"train.txt:1: image 'beach/\.\./\.\./\.\./elsewhere/.*' is not a path"
    ):
        load_split(root, "mine")
    (root / "classes.txt").write_text((root / "classes.txt").read_text() + "../../elsewhere/beach: a beach\n")
    with pytest.raises(
        RszError, match=r"classes.txt: class '\.\./\.\./elsewhere/beach' is not a folder name"
    ):
        load_benchmark(root)
