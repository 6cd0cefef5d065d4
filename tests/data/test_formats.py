"""Readers of the real data-set formats, on small files the tests write, and their one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import loadmat, savemat

from rsz_infer.errors import RszError
from rsz_train.data.formats import (
    load_benchmark,
    load_scene_folders,
    load_split,
    make_split,
    read_class_list,
    read_dsva_mat,
    read_karpathy,
)

CLASSES = ("beach", "dense_residential", "forest", "harbor", "river")


def _write_image(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def _scene_folders(root: Path, per_class: int = 6) -> Path:
    """UCM/NWPU-style folders with mixed formats: .jpg, .PNG, .tif (and a stray non-image file)."""
    suffixes = (".jpg", ".PNG", ".tif")
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            _write_image(root / name / f"{name}{i:02d}{suffixes[i % 3]}", (40 * c, 10 * i, 100))
        (root / name / "Thumbs.db").write_bytes(b"\0")
    return root


def _rsz_layout(root: Path) -> Path:
    """A user's data in the rsz layout: images, classes.txt, attributes, matrix, captions, one split."""
    _scene_folders(root / "images")
    (root / "classes.txt").write_text("".join(f"{n}: scenes of {n.replace('_', ' ')}\n" for n in CLASSES))
    (root / "attributes.txt").write_text("water\tcolour\tblue water\nhouses\tshape\tsmall houses\n")
    rows = [
        "class,water,houses",
        "beach,1,0",
        "dense_residential,0,1",
        "forest,0,0",
        "harbor,1,1",
        "river,1,0",
    ]
    (root / "attribute_matrix.csv").write_text("\n".join(rows) + "\n")
    images = [{"filename": "beach/beach00.jpg", "split": "train", "sentences": [{"raw": "Sand by the sea."}]}]
    (root / "captions.json").write_text(json.dumps({"images": images}))
    split = root / "splits" / "mine"
    split.mkdir(parents=True)
    (split / "seen.txt").write_text("beach\ndense_residential\nforest\n")
    (split / "unseen.txt").write_text("harbor\n# a comment\n\nriver\n")
    (split / "val.txt").write_text("forest\n")
    return root


def test_scene_folders_in_mixed_formats(tmp_path):
    data = load_scene_folders(_scene_folders(tmp_path / "ucm"))
    assert data.class_names == list(CLASSES)
    assert len(data.image_paths) == 30 and data.labels.dtype == np.int64
    assert data.image_paths[:3] == ["beach/beach00.jpg", "beach/beach01.PNG", "beach/beach02.tif"]
    for path, label in zip(data.image_paths, data.labels):
        assert path.startswith(CLASSES[label] + "/") and (data.root / path).is_file()
    assert data.descriptions["forest"] == "forest" and data.attribute_matrix is None and data.captions == {}


def test_scene_folder_errors(tmp_path):
    root = _scene_folders(tmp_path / "d")
    (root / "empty").mkdir()  # left out: a split naming it is refused (tests/train)
    assert load_scene_folders(root).empty_folders == ["empty"]
    with pytest.raises(RszError, match=r"empty-only: no class folders with images"):
        (tmp_path / "empty-only" / "empty").mkdir(parents=True)
        load_scene_folders(tmp_path / "empty-only")
    (tmp_path / "none").mkdir()
    with pytest.raises(RszError, match="none: no class folders"):
        load_scene_folders(tmp_path / "none")
    with pytest.raises(RszError, match="missing: not a folder"):
        load_scene_folders(tmp_path / "missing")


def test_rsz_layout_with_class_lists_only_gets_per_image_lists(tmp_path):
    root = _rsz_layout(tmp_path / "mine")
    data = load_benchmark(root)
    assert data.descriptions["dense_residential"] == "scenes of dense residential"
    assert data.attribute_names == ["water", "houses"] and data.attribute_groups == ["colour", "shape"]
    np.testing.assert_array_equal(data.attribute_matrix[CLASSES.index("harbor")], [1, 1])
    assert data.captions == {"beach/beach00.jpg": ["Sand by the sea."]}
    split = load_split(root, "mine")
    assert split.unseen == ["harbor", "river"] and split.val == ["forest"]
    assert split.train_classes == ["beach", "dense_residential"]
    assert len(split.val_seen) == len(split.test_seen) == 2 and len(split.train) == 8
    assert {p.split("/")[0] for p in split.val_unseen} == {"forest"}
    assert len(split.test_unseen) == 12
    assert not set(split.train) & set(split.val_seen) | set(split.train) & set(split.test_seen)


def test_written_per_image_lists_are_read_and_checked(tmp_path):
    root = _rsz_layout(tmp_path / "mine")
    split = load_split(root, "mine")
    folder = root / "splits" / "mine"
    for key in ("train", "val_seen", "val_unseen", "test_seen", "test_unseen"):
        (folder / f"{key}.txt").write_text("".join(f"{p}\n" for p in getattr(split, key)))
    assert load_split(root, "mine") == split
    (folder / "train.txt").write_text("beach/beach00.jpg\nbeach/nothere.png\n")
    with pytest.raises(RszError, match=r"train.txt:2: image 'beach/nothere.png' not found"):
        load_split(root, "mine")
    (folder / "train.txt").write_text("harbor/harbor00.jpg\n")
    with pytest.raises(RszError, match=r"train.txt:1: .*class 'harbor', which does not belong in train"):
        load_split(root, "mine")


def test_make_split_is_deterministic_and_checks_its_classes(tmp_path):
    data = load_scene_folders(_scene_folders(tmp_path / "d", per_class=10))
    one = make_split(data, ["beach", "forest", "river"], ["harbor"], ["river"], seed=3)
    assert one == make_split(data, ["beach", "forest", "river"], ["harbor"], ["river"], seed=3)
    assert one.train != make_split(data, ["beach", "forest", "river"], ["harbor"], ["river"], seed=4).train
    assert (len(one.train), len(one.val_seen), len(one.test_seen)) == (12, 4, 4)
    with pytest.raises(RszError, match="val class 'harbor' is not a seen class"):
        make_split(data, ["beach", "forest"], ["river"], ["harbor"])
    with pytest.raises(RszError, match="'beach' is both seen and unseen"):
        make_split(data, ["beach", "forest"], ["beach"], [])
    with pytest.raises(RszError, match="class 'lava': not in the data set"):
        make_split(data, ["beach", "lava"], ["river"], [])


def test_malformed_rsz_files_name_the_file(tmp_path):
    root = _rsz_layout(tmp_path / "mine")
    (root / "splits" / "mine" / "seen.txt").write_text("beach\nvolcano\n")
    with pytest.raises(RszError, match=r"seen.txt: unknown class 'volcano'"):
        load_split(root, "mine")
    with pytest.raises(RszError, match=r"splits/nope: no such split \(splits in .*: mine\)"):
        load_split(root, "nope")

    def broken(name: str, text: str, pattern: str) -> None:
        original = (root / name).read_text()
        (root / name).write_text(text)
        with pytest.raises(RszError, match=pattern) as err:
            load_benchmark(root)
        assert "\n" not in str(err.value)
        (root / name).write_text(original)

    broken(
        "attribute_matrix.csv",
        "class,water,houses\nbeach,1\n",
        r"attribute_matrix.csv:2: 1 values, expected 2",
    )
    broken(
        "attribute_matrix.csv",
        "class,water,houses\nbeach,1,yes\n",
        r"attribute_matrix.csv:2: values must be numbers",
    )
    broken(
        "attribute_matrix.csv",
        "class,water,houses\nmoon,1,0\n",
        r"attribute_matrix.csv:2: unknown class 'moon'",
    )
    broken(
        "attribute_matrix.csv", "class,water,houses\nbeach,1,0\n", r"attribute_matrix.csv: no row for class"
    )
    broken("attribute_matrix.csv", "class,houses,water\n", r"attribute_matrix.csv:1: attribute columns")
    broken(
        "attributes.txt",
        "water colour blue water\n",
        r"attributes.txt:1: expected 'name<TAB>group<TAB>phrase'",
    )
    broken("captions.json", "{bad json", r"captions.json:1: not valid JSON")
    broken(
        "captions.json",
        json.dumps(
            {"images": [{"filename": "beach/gone.jpg", "split": "test", "sentences": [{"raw": "x"}]}]}
        ),
        r"captions.json: image 'beach/gone.jpg' is not under",
    )
    broken(
        "classes.txt",
        "beach\nforest\n",
        r"images/dense_residential: class folder not listed in .*classes.txt",
    )
    broken(
        "classes.txt",
        "".join(f"{n}\n" for n in CLASSES) + "volcano\n",
        r"images/volcano: class folder missing",
    )
    (root / "attributes.txt").unlink()
    with pytest.raises(RszError, match=r"attributes.txt: missing \(attribute_matrix.csv is present"):
        load_benchmark(root)
    shutil.rmtree(root / "images")
    with pytest.raises(RszError, match=r"images: missing"):
        load_benchmark(root)


def test_class_list(tmp_path):
    path = tmp_path / "seen.txt"
    path.write_text("\ufeffbeach\n\n# skipped\nforest  \n")
    assert read_class_list(path) == ["beach", "forest"]
    path.write_text("beach\nbeach\n")
    with pytest.raises(RszError, match=r"seen.txt:2: duplicate class 'beach'"):
        read_class_list(path)
    with pytest.raises(RszError, match=r"nope.txt: file not found"):
        read_class_list(tmp_path / "nope.txt")


def _dsva_mat(path: Path, data, suffixes=("_1", "_2"), drop: str | None = None) -> Path:
    """A DSVA-style splits file: att is attributes x classes, names spelled differently, 1-based locs."""
    # The file's class order differs from the folders' and its names use spaces and capitals.
    mat_classes = ["River", "Harbor", "Beach", "Forest", "Dense Residential"]
    att = np.array([[c_index * 10 + a for c_index in range(5)] for a in range(3)], dtype=np.float64)
    content = {"att": att, "allclasses_names": np.array([[n] for n in mat_classes], dtype=object)}
    by_class = {
        c: [i + 1 for i, lab in enumerate(data.labels) if data.class_names[lab] == c] for c in CLASSES
    }
    seen = ["beach", "dense_residential", "forest", "river"]
    for suffix in suffixes:
        test_seen = [by_class[c][0] for c in seen]
        train_gzsl = [i for c in seen for i in by_class[c][1:]]
        content.update(
            {
                f"train_gzsl_loc{suffix}": np.array(train_gzsl)[:, None],
                f"train_zsl_loc{suffix}": np.array(sorted(train_gzsl + test_seen))[:, None],
                f"test_seen_loc{suffix}": np.array(test_seen)[:, None],
                f"test_unseen_loc{suffix}": np.array(by_class["harbor"])[:, None],
            }
        )
    if drop:
        del content[drop]
    savemat(str(path), content)
    return path


def test_dsva_mat_split_and_attributes(tmp_path):
    data = load_scene_folders(_scene_folders(tmp_path / "rssdivcs"))
    split, att = read_dsva_mat(_dsva_mat(tmp_path / "ann_attr_finetune_4_splits.mat", data), data)
    assert split.name == "ann_attr_finetune_4_splits_1"
    assert split.seen == ["beach", "dense_residential", "forest", "river"] and split.unseen == ["harbor"]
    assert len(split.val) == 1 and split.val[0] in split.seen
    assert att.shape == (5, 3)
    # att column of "Beach" (file index 2) lands on the row of "beach" (folder index 0), and so on.
    np.testing.assert_array_equal(att[CLASSES.index("beach")], [20, 21, 22])
    np.testing.assert_array_equal(att[CLASSES.index("dense_residential")], [40, 41, 42])
    assert split.test_unseen == [p for p in data.image_paths if p.startswith("harbor/")]
    val_class = split.val[0]
    assert sorted(split.val_unseen) == [p for p in data.image_paths if p.startswith(val_class + "/")]
    train_classes = {p.split("/")[0] for p in split.train}
    assert train_classes == set(split.seen) - {val_class}
    assert {p.split("/")[0] for p in split.test_seen} == train_classes
    assert not set(split.train) & (set(split.val_seen) | set(split.test_seen))
    assert len(split.val_seen) == len(train_classes)  # one held-out image of five per training class


def test_dsva_mat_errors(tmp_path):
    data = load_scene_folders(_scene_folders(tmp_path / "rssdivcs"))
    path = _dsva_mat(tmp_path / "a.mat", data, suffixes=("",), drop="test_seen_loc")
    with pytest.raises(RszError, match=r"a.mat: missing key 'test_seen_loc'"):
        read_dsva_mat(path, data)
    path = _dsva_mat(tmp_path / "b.mat", data, drop="att")
    with pytest.raises(RszError, match=r"b.mat: missing key 'att'"):
        read_dsva_mat(path, data)
    with pytest.raises(RszError, match=r"b.mat: no split id 7"):
        read_dsva_mat(_dsva_mat(tmp_path / "b.mat", data), data, split_id=7)
    (tmp_path / "c.mat").write_text("not a mat file")
    with pytest.raises(RszError, match=r"c.mat: cannot read as a MATLAB .mat file"):
        read_dsva_mat(tmp_path / "c.mat", data)
    # an index past the image list, a fraction, a 0 (0-based lists): the entry and its value are named
    n = len(data.image_paths)

    def past_the_end(v):
        return np.vstack([v, [[n + 1]]])

    def fraction(v):
        return np.vstack([[[1.5]], v])

    def zero(v):
        return np.vstack([[[0]], v])

    for name, edit, where in [
        ("d.mat", past_the_end, None),  # (its entry is the last: set below)
        ("e.mat", fraction, "its entry 1 is 1.5$"),
        ("f.mat", zero, r"its entry 1 is 0 \(0 is not an index: these may be 0-based"),
    ]:
        path = _dsva_mat(tmp_path / name, data, suffixes=("",))
        content = {k: v for k, v in loadmat(str(path)).items() if not k.startswith("__")}
        content["test_unseen_loc"] = edit(content["test_unseen_loc"].astype(float))
        savemat(str(path), content)
        if name == "d.mat":
            where = f"its entry {len(content['test_unseen_loc'])} is {n + 1}$"
        with pytest.raises(
            RszError, match=rf"{name}: test_unseen_loc must hold 1-based image indices in 1\.\.{n}, {where}"
        ):
            read_dsva_mat(path, data)


def test_dsva_mat_naming_a_class_with_no_folder_is_refused_without_an_image_list(tmp_path):
    """Sorted-order indices count every class's images: with 'Airport' (sorted first) missing on disk, the
    authors' indices each name another image, and the split trained on other classes without a word."""
    data = load_scene_folders(_scene_folders(tmp_path / "rssdivcs"))
    path = _dsva_mat(tmp_path / "a.mat", data)
    content = {k: v for k, v in loadmat(str(path)).items() if not k.startswith("__")}
    names = ["Airport", *(str(n[0][0]) for n in content["allclasses_names"])]
    content["allclasses_names"] = np.array([[n] for n in names], dtype=object)
    content["att"] = np.hstack([np.zeros((3, 1)), content["att"]])
    savemat(str(path), content)
    with pytest.raises(
        RszError, match=r"a.mat: allclasses_names has class 'Airport' with no class folder under .*rssdivcs; "
    ):
        read_dsva_mat(path, data)


def test_karpathy_captions_with_any_number_of_sentences(tmp_path):
    doc = {
        "dataset": "rsicd",
        "images": [
            {
                "filename": "a.jpg",
                "split": "train",
                "sentences": [{"raw": "one"}, {"raw": "two"}, {"raw": "three"}],
            },
            {
                "filename": "b.jpg",
                "filepath": "val2",
                "split": "restval",
                "sentences": [{"raw": f"s{i}"} for i in range(6)],
            },
            {"filename": "c.jpg", "split": "test", "sentences": [{"raw": " only one "}]},
        ],
    }
    path = tmp_path / "dataset_rsicd.json"
    path.write_text(json.dumps(doc))
    out = read_karpathy(path)
    assert out["a.jpg"] == ("train", ["one", "two", "three"])
    assert out["val2/b.jpg"] == ("train", [f"s{i}" for i in range(6)])
    assert out["c.jpg"] == ("test", ["only one"])
    doc["images"][2]["sentences"] = []
    path.write_text(json.dumps(doc))
    with pytest.raises(RszError, match=r"dataset_rsicd.json: images\[2\] \(c.jpg\) has no sentences"):
        read_karpathy(path)
    doc["images"][2].update(sentences=[{"raw": "x"}], split="holdout")
    path.write_text(json.dumps(doc))
    with pytest.raises(RszError, match=r"dataset_rsicd.json: .*split 'holdout'"):
        read_karpathy(path)
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(RszError, match=r"dataset_rsicd.json: expected an object with an 'images' list"):
        read_karpathy(path)
