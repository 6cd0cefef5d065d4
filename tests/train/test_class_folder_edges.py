"""Class-folder data sets as users copy them around: hidden files, lists spelled another way, resumes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsz_infer.errors import RszError
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


@pytest.mark.parametrize(
    ("seen", "unseen", "message"),
    [
        # one folder named twice, spelled two ways: its images would train (and test) twice
        (["airport", "Airport", "forest", "river"], ["beach"], "seen.txt: class 'Airport' is listed twice"),
        (
            ["Dense Residential", "dense_residential", "forest"],
            ["beach"],
            "class 'dense_residential' is listed",
        ),
        # the lists' own problems name their folder, not just "split <folder name>"
        (
            ["airport", "forest", "river"],
            ["Forest", "beach"],
            "lists: class 'forest' is both seen and unseen",
        ),
        (["airport", "forest", "river"], [], "lists: no unseen classes"),
    ],
)
def test_class_lists_naming_one_folder_twice_are_refused_naming_the_file(tmp_path, seen, unseen, message):
    root = _class_folders(tmp_path / "AID")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "seen.txt").write_text("".join(f"{n}\n" for n in seen))
    (lists / "unseen.txt").write_text("".join(f"{n}\n" for n in unseen))
    with pytest.raises(RszError, match=message) as err:
        _splits(root, split_file=str(lists))
    assert str(lists) in str(err.value) and "\n" not in str(err.value)


def test_resume_on_another_split_or_data_set_is_refused(tiny_benchmark, tmp_path):
    """--resume with other split options, or on a data folder whose images changed, would go on training
    the run's weights on another split (its unseen classes perhaps trained on) and report that split."""
    from rsz_train.train import train

    from .conftest import TINY_OVERRIDES

    data = tmp_path / "data"
    shutil.copytree(tiny_benchmark, data)
    out = tmp_path / "run"
    options = DataOptions(unseen=8, seed=0)
    train("dsva", data, None, out, device="cpu", overrides=TINY_OVERRIDES, stop_after_epoch=1,
          data_options=options)  # fmt: skip
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for other in (DataOptions(unseen=8, seed=1), DataOptions(unseen=7, seed=0)):
        with pytest.raises(RszError, match=r"--resume: .* was trained on another data set, split or") as err:
            train("dsva", data, None, out, device="cpu", resume=True, data_options=other)
        assert "\n" not in str(err.value)
    # another description of a class (--classes): other class semantics
    classes = tmp_path / "classes.txt"
    classes.write_text("airport: a tarmac with a terminal\n")
    with pytest.raises(RszError, match=r"\(descriptions\)"):
        train("dsva", data, None, out, device="cpu", resume=True,
              data_options=DataOptions(unseen=8, seed=0, classes=str(classes)))  # fmt: skip
    # the same classes, one image more: the split's image lists differ
    folder = data / "images" / json.loads((out / "classes.json").read_text())["seen"][0]
    shutil.copy(sorted(folder.iterdir())[0], folder / "zz_added.png")
    with pytest.raises(RszError, match=r"\(split_images_sha256\)"):
        train("dsva", data, None, out, device="cpu", resume=True, data_options=options)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing written


def test_out_of_memory_is_one_line_naming_the_settings(tiny_benchmark, tmp_path):
    """train.image_size 1000000 (a typo), like a batch too large for the GPU, fails to allocate: one line
    that names the settings to lower, not torch's traceback."""
    from click.testing import CliRunner

    from rsz_train.cli import main

    config = tmp_path / "huge.yaml"
    config.write_text("train: {image_size: 1000000, epochs: 1}\n")
    args = ["dsva", "--data", str(tiny_benchmark), "--out", str(tmp_path / "run"), "--config", str(config)]
    result = CliRunner().invoke(main, [*args, "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: out of memory (") and "train.image_size" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_run_files_share_one_mode(tiny_run):
    """model.safetensors was owner-only (0600: safetensors' save_file) beside the run's 0644 files."""
    modes = {p.name: p.stat().st_mode & 0o777 for p in tiny_run.iterdir() if p.is_file()}
    assert modes["model.safetensors"] == modes["config.yaml"] == modes["report.json"], modes


def test_report_records_the_data_and_split_file_as_absolute_paths(tmp_path, monkeypatch):
    """`--data NWPU --split-file lists` from one folder recorded 'NWPU' and 'lists': read from anywhere
    else (rsz-export --int8 looks for the training tiles by split_file) they named other folders or none."""
    _class_folders(tmp_path / "NWPU")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "seen.txt").write_text("airport\nforest\nriver\ndense_residential\n")
    (tmp_path / "lists" / "unseen.txt").write_text("beach\n")
    monkeypatch.chdir(tmp_path)
    [(_split, source)] = _splits(Path("NWPU"), split_file="lists")
    record = source.to_dict()
    assert (record["root"], record["split_file"]) == (str(tmp_path / "NWPU"), str(tmp_path / "lists"))
    assert record["split_sha256"] is not None


def test_the_split_seed_is_recorded(tmp_path):
    """--seed draws the val classes and held-out images of a split file's split too, but only a random
    split's name carried it: a run on a .mat, MCFA folder or class lists could not be reproduced."""
    root = _class_folders(tmp_path / "NWPU")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "seen.txt").write_text("airport\nforest\nriver\ndense_residential\n")
    (tmp_path / "lists" / "unseen.txt").write_text("beach\n")
    [(_split, source)] = _splits(root, split_file=str(tmp_path / "lists"), seed=7)
    assert source.to_dict()["seed"] == 7


@pytest.mark.parametrize("resume", [[], ["--resume"]])
def test_out_naming_a_file_is_one_line_naming_it(tiny_benchmark, tmp_path, resume):
    from click.testing import CliRunner

    from rsz_train.cli import main

    out = tmp_path / "notes.txt"
    out.write_text("mine\n")
    args = ["dsva", "--data", str(tiny_benchmark), "--out", str(out), *resume, "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and result.output == f"error: --out {out}: is a file, not a run folder\n"
    assert out.read_text() == "mine\n"


def test_split_files_listing_an_image_twice_are_refused(tmp_path):
    """An index twice in MCFA's seen_class_loc (or a DSVA .mat's train_gzsl_loc) trained the image twice
    and could hold one copy out for validation while the other trained."""
    from scipy.io import savemat

    root = _class_folders(tmp_path / "RSSDIVCS")
    data = load_scene_folders(root)
    unseen = {"beach", "river"}
    seen = [i for i, label in enumerate(data.labels) if data.class_names[label] not in unseen]
    test_unseen = [i for i, label in enumerate(data.labels) if data.class_names[label] in unseen]
    folder = tmp_path / "zsl"
    folder.mkdir()
    (folder / "seen_class_loc_4_1.txt").write_text("".join(f"{v}\n" for v in [*seen, seen[2]]))
    (folder / "unseen_class_loc_4_1.txt").write_text("".join(f"{v}\n" for v in test_unseen))
    line = len(seen) + 1
    with pytest.raises(
        RszError, match=f"seen_class_loc_4_1.txt:{line}: image index {seen[2]} is already on line 3"
    ):
        _splits(root, split_file=str(folder))
    mat = tmp_path / "ann_attr_finetune_4_splits.mat"
    savemat(str(mat), {
        "att": np.ones((3, len(CLASSES))),
        "allclasses_names": np.array([[n] for n in CLASSES], dtype=object),
        "train_gzsl_loc": np.array([v + 1 for v in [*seen[1:], seen[1]]])[:, None],
        "test_seen_loc": np.array([seen[0] + 1])[:, None],
        "test_unseen_loc": np.array([v + 1 for v in test_unseen])[:, None],
    })  # fmt: skip
    with pytest.raises(RszError, match=f"train_gzsl_loc lists image index {seen[1] + 1} twice"):
        _splits(root, split_file=str(mat))


def test_a_caption_file_is_recorded_under_any_split(tmp_path):
    """--captions with --unseen N trains on the JSON's captions, but the record named no caption file
    (split_file None): the run could not say which captions, nor their sha256."""
    root = _class_folders(tmp_path / "RSICD" / "images")
    entries = [
        {"filename": f"{name}_{i}.jpg", "split": "train", "sentences": [{"raw": f"a {name} tile"}]}
        for name in CLASSES
        for i in range(5)
    ]
    for name in CLASSES:
        for i, path in enumerate(sorted((root / name).iterdir())):
            path.rename(root / f"{name}_{i}.jpg")
        (root / name).rmdir()
    captions = tmp_path / "RSICD" / "dataset_rsicd.json"
    captions.write_text(json.dumps({"images": entries}))
    digest = hashlib.sha256(captions.read_bytes()).hexdigest()
    for options in ({}, {"unseen": 2}):
        [(_split, source)] = _splits(tmp_path / "RSICD", captions=str(captions), **options)
        record = source.to_dict()
        assert (record["captions"], record["captions_sha256"]) == (str(captions), digest), options


def test_resume_of_a_split_all_folder_as_one_split_and_back_is_refused(tiny_benchmark, tmp_path):
    """--resume --split-id 1 on a --split-id all folder trained split 1 into the parent (its report.json,
    the mean over the splits, overwritten); --split-id all on one split's run trained sub-runs into it and
    replaced its report.json with their summary."""
    from rsz_train.train import train

    from .conftest import TINY_OVERRIDES

    data, _layout = load_dataset(tiny_benchmark, DataOptions())
    folder = tmp_path / "gzsl"
    folder.mkdir()
    _write_two_mcfa_splits(data, folder)

    def run(out: Path, split_id: str, **kw) -> None:
        options = DataOptions(split_file=str(folder), split_id=split_id)
        train("dsva", tiny_benchmark, None, out, device="cpu", data_options=options, **kw)

    run(tmp_path / "all", "all", overrides=TINY_OVERRIDES, stop_after_epoch=0)
    with pytest.raises(RszError, match=r"holds one run per split \(gzsl_1\): resume it with --split-id all"):
        run(tmp_path / "all", "1", resume=True)
    assert not (tmp_path / "all" / "classes.json").exists()
    run(tmp_path / "one", "2", overrides=TINY_OVERRIDES, stop_after_epoch=0)
    with pytest.raises(RszError, match="is the run of one split, not of --split-id all"):
        run(tmp_path / "one", "all", resume=True)
    assert not (tmp_path / "one" / "gzsl_1").exists()


def _write_two_mcfa_splits(data, folder: Path) -> None:
    """MCFA-style split files 1 and 2 of `data` in `folder` (seen / unseen image indices, 0-based)."""
    for split_id in (1, 2):
        unseen = set(data.class_names[2 * split_id : 2 * split_id + 2])
        rows = {"seen": [], "unseen": []}
        for i, label in enumerate(data.labels):
            rows["unseen" if data.class_names[label] in unseen else "seen"].append(i)
        for kind, values in rows.items():
            (folder / f"{kind}_class_loc_40_{split_id}.txt").write_text("".join(f"{v}\n" for v in values))


def _all_splits_trainer(tiny_benchmark: Path, tmp_path: Path, out: Path):
    """train(..., split_id "all") of DSVA on two MCFA-style splits of the tiny benchmark into `out`."""
    from rsz_train.train import train

    data, _layout = load_dataset(tiny_benchmark, DataOptions())
    folder = tmp_path / "splits"
    folder.mkdir()
    _write_two_mcfa_splits(data, folder)
    options = DataOptions(split_file=str(folder), split_id="all")

    def run(**kw) -> None:
        train("dsva", tiny_benchmark, None, out, device="cpu", data_options=options, **kw)

    return run


def test_resume_of_all_splits_with_other_epochs_keeps_them_for_the_next_resume(tiny_benchmark, tmp_path):
    """`--split-id all --resume --epochs 3` of a 2-epoch run: OUT/config.yaml (which a resume of all splits
    reads) says 3 too, so the next --resume trains every split to 3, not back to 2."""
    from rsz_train import runs

    from .conftest import TINY_OVERRIDES

    out = tmp_path / "all"
    run = _all_splits_trainer(tiny_benchmark, tmp_path, out)
    run(overrides=TINY_OVERRIDES, stop_after_epoch=1)
    run(epochs=3, resume=True, stop_after_epoch=2)
    assert runs.read_config(out, "dsva").train.epochs == 3
    run(resume=True)
    for split in ("splits_1", "splits_2"):
        report = json.loads((out / split / "report.json").read_text())
        assert report["epochs"] == 3 and len((out / split / "metrics.jsonl").read_text().splitlines()) == 3


def test_resume_of_all_splits_with_more_epochs_extends_finished_splits(tiny_benchmark, tmp_path):
    """`--split-id all --resume --epochs 2` of a finished 1-epoch run trains each split on to 2, as
    `--resume --epochs 2` of one split's finished run does (the finished splits were kept at 1, silently)."""
    from rsz_train import runs

    from .conftest import TINY_OVERRIDES

    out = tmp_path / "all"
    run = _all_splits_trainer(tiny_benchmark, tmp_path, out)
    run(overrides={**TINY_OVERRIDES, "train.epochs": 1})
    assert (out / "report.json").is_file()
    run(epochs=2, resume=True)
    for split in ("splits_1", "splits_2"):
        report = json.loads((out / split / "report.json").read_text())
        assert report["epochs"] == 2 and len((out / split / "metrics.jsonl").read_text().splitlines()) == 2
    assert runs.read_config(out, "dsva").train.epochs == 2  # the next --resume keeps 2


def test_resume_with_the_other_protocol_is_refused(tiny_run, tiny_benchmark, default_split, tmp_path):
    """--protocol paper on an rsz run trained a selection run, then took the rsz run's last.pt as the refit's
    (past its epochs: nothing refit) and reported it as the paper protocol's; rsz on a paper run likewise."""
    from rsz_train.train import train

    from .conftest import TINY_OVERRIDES

    done = tmp_path / "rsz"
    shutil.copytree(tiny_run, done)
    with pytest.raises(RszError, match="was trained with --protocol rsz, not paper"):
        train("dsva", tiny_benchmark, default_split, done, device="cpu", resume=True, protocol="paper")
    assert not (done / "selection").exists()
    paper = tmp_path / "paper"
    train("dsva", tiny_benchmark, default_split, paper, device="cpu", overrides=TINY_OVERRIDES,
          protocol="paper", stop_after_epoch=0)  # fmt: skip
    with pytest.raises(RszError, match="was trained with --protocol paper, not rsz"):
        train("dsva", tiny_benchmark, default_split, paper, device="cpu", resume=True)


def test_out_inside_the_class_folders_is_refused_before_anything_is_made(tmp_path):
    """`--data NWPU --out NWPU/run1` trained, and then NWPU/run1 was a class folder without images: the
    run could not be resumed nor the data set trained on again. (`--out UCM/runs/r1`, beside UCM's
    Images/, is fine.)"""
    from click.testing import CliRunner

    from rsz_train.cli import main

    root = _class_folders(tmp_path / "NWPU")
    attributes = tmp_path / "attributes.txt"
    attributes.write_text("water\tcolour\tblue water\ntrees\tcolour\tgreen trees\nroofs\tshape\tred roofs\n")
    config = tmp_path / "tiny.yaml"
    config.write_text("train: {image_size: 16, epochs: 1, batch_size: 8}\n")
    for out in (root / "run1", root / "runs" / "r1", root / "airport" / "r1"):
        args = ["dsva", "--data", str(root), "--unseen", "2", "--attributes", str(attributes)]
        args += ["--config", str(config), "--out", str(out), "--device", "cpu"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert result.output == (
            f"error: --out {out}: inside the image folder {root}, where it would be read as a class "
            "folder; choose an --out outside it\n"
        )
    assert sorted(p.name for p in root.iterdir()) == CLASSES  # no folder, no lock file left


def test_two_class_folders_naming_one_class_are_refused(tmp_path):
    """Split files and class lists name a class by its key (case, spaces and punctuation ignored):
    'Dense_Residential' beside 'denseresidential' would be one class to them, and one folder's images
    silently the other's. Names of other scripts keep their letters: two of them are two classes."""
    root = _class_folders(tmp_path / "AID")
    shutil.copytree(root / "dense_residential", root / "Dense-Residential")
    with pytest.raises(RszError, match=r"class folders 'Dense-Residential' and 'dense_residential' name one"):
        load_scene_folders(root)
    shutil.rmtree(root / "Dense-Residential")
    for name in ("机场", "港口"):  # airport, harbour
        shutil.copytree(root / "airport", root / name)
    assert {"机场", "港口"} <= set(load_scene_folders(root).class_names)


def test_a_class_folder_named_in_another_code_page_is_one_line(tmp_path):
    """A zip made on Chinese Windows names its folders in GBK; unpacked here such a name is no UTF-8 text,
    and training stopped with a UnicodeEncodeError traceback (at the split's seeded draw)."""
    from click.testing import CliRunner

    from rsz_train.cli import main

    root = _class_folders(tmp_path / "RSSCN")
    os.rename(root / "airport", os.fsencode(root) + b"/" + "机场".encode("gbk"))
    result = CliRunner().invoke(
        main,
        ["dsva", "--data", str(root), "--unseen", "2", "--out", str(tmp_path / "run"), "--device", "cpu"],
    )
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: {root}: class folder b'\\xbb\\xfa\\xb3\\xa1': name is not valid UTF-8 (rename the folder)"
    ]


def _accented_tree(root: Path, form: str) -> Path:
    """Class folders and files named in Unicode `form`: macOS unpacks 'pré' as 'pre' + U+0301 (NFD). In
    NFD 'pré' sorts before 'prison', in NFC after it: sorted image indices differ unless sorted as NFC."""
    rng = np.random.default_rng(0)
    for name in ACCENTED:
        folder = root / unicodedata.normalize(form, name)
        folder.mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / unicodedata.normalize(form, f"{name}_é{i}.png"))
    return root


ACCENTED = ["airport", "beach", "forest", "pré", "prison", "river", "zoo"]


@pytest.mark.parametrize(("disk", "listed"), [("NFD", "NFC"), ("NFC", "NFD")])
def test_accented_class_names_match_split_files_written_the_other_way(tmp_path, disk, listed):
    """Folders in one normal form, split files, class files and the authors' sorted indices in the other:
    'class has no folder' (or another class's images) before; now matched as NFC, read under the
    folder's own name."""
    from scipy.io import savemat

    from rsz_train.data.formats import load_benchmark, load_split

    root = _accented_tree(tmp_path / "data", disk)
    ref = load_scene_folders(_accented_tree(tmp_path / "authors", listed))  # the tree the indices follow
    pre = unicodedata.normalize(disk, "pré")  # the folder's own name

    def text(*lines: str) -> str:
        return "".join(unicodedata.normalize(listed, f"{line}\n") for line in lines)

    def nfc(paths: list[str]) -> list[str]:
        return sorted(unicodedata.normalize("NFC", p) for p in paths)

    label = [unicodedata.normalize("NFC", c) for c in ref.class_names].index("pré")
    expected = nfc([p for p, i in zip(ref.image_paths, ref.labels) if i == label])
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "seen.txt").write_text(text("airport", "beach", "forest", "prison", "river", "zoo"))
    (lists / "unseen.txt").write_text(text("pré"))
    [(split, _)] = _splits(root, split_file=str(lists))
    assert split.unseen == [pre] and nfc(split.test_unseen) == expected
    assert all((root / p).is_file() for p in split.test_unseen)
    (tmp_path / "classes.txt").write_text(text("pré: a meadow"))
    data, _ = load_dataset(root, DataOptions(classes=str(tmp_path / "classes.txt")))
    assert data.descriptions[pre] == "a meadow"

    # MCFA: 0-based indices into the authors' sorted images
    assert [unicodedata.normalize("NFC", p) for p in load_scene_folders(root).image_paths] == [
        unicodedata.normalize("NFC", p) for p in ref.image_paths
    ]
    unseen = [i for i, of in enumerate(ref.labels) if of == label]
    seen = [i for i in range(len(ref.labels)) if i not in unseen]
    mcfa = tmp_path / "zsl"
    mcfa.mkdir()
    (mcfa / "seen_class_loc_6_1.txt").write_text("".join(f"{v}\n" for v in seen))
    (mcfa / "unseen_class_loc_6_1.txt").write_text("".join(f"{v}\n" for v in unseen))
    [(split, _)] = _splits(root, split_file=str(mcfa))
    assert split.unseen == [pre] and nfc(split.test_unseen) == expected

    # DSVA: allclasses_names and image_files in the other form
    mat = tmp_path / "ann_attr_finetune_6_splits.mat"
    savemat(str(mat), {
        "att": np.ones((2, len(ACCENTED))),
        "allclasses_names": np.array([[unicodedata.normalize(listed, n)] for n in ACCENTED], dtype=object),
        "image_files": np.array([[p] for p in ref.image_paths], dtype=object),
        "train_gzsl_loc": np.array([v + 1 for v in seen if v % 3])[:, None],
        "test_seen_loc": np.array([v + 1 for v in seen if v % 3 == 0])[:, None],
        "test_unseen_loc": np.array([v + 1 for v in unseen])[:, None],
    })  # fmt: skip
    [(split, _)] = _splits(root, split_file=str(mat))
    assert split.unseen == [pre] and nfc(split.test_unseen) == expected

    # the rsz layout: classes.txt, a split's class lists and per-image lists
    bench = tmp_path / "bench"
    shutil.copytree(root, bench / "images")
    (bench / "classes.txt").write_text(text(*ACCENTED))
    folder = bench / "splits" / "mine"
    folder.mkdir(parents=True)
    for name in ("seen", "unseen"):
        shutil.copy(lists / f"{name}.txt", folder)
    assert load_split(bench, "mine").unseen == [pre]
    assert load_benchmark(bench).class_names[3] == pre
    images = {"train": [], "val_seen": [], "val_unseen": [], "test_seen": [], "test_unseen": expected}
    images["train"] = [p for p in nfc(ref.image_paths) if p not in expected]
    for name, paths in images.items():
        (folder / f"{name}.txt").write_text(text(*paths) if paths else "")
    split = load_split(bench, "mine")
    assert split.unseen == [pre] and all((bench / "images" / p).is_file() for p in split.test_unseen)
    entry = {
        "filename": unicodedata.normalize(listed, expected[0]),
        "split": "train",
        "sentences": [{"raw": "a"}],
    }
    (bench / "captions.json").write_text(json.dumps({"images": [entry]}, ensure_ascii=False))
    assert list(load_benchmark(bench).captions) == [p for p in split.test_unseen if nfc([p]) == expected[:1]]


def test_bmp_gif_webp_and_jp2_images_are_trained_on_and_gdal_only_rasters_said(tmp_path, capsys):
    """rsz-infer labels .bmp, .gif, .webp and .jp2 tiles of a folder; training skipped them without a word
    (a class of .bmp files was 'no images'). Those are read now, as rsz-infer decodes them; rasters only
    GDAL reads (an ERDAS .img) are left out in one note naming the count and the suffix."""
    import rasterio

    from rsz_train.data.batches import load_images

    root = _class_folders(tmp_path / "mixed", per_class=2)
    rng = np.random.default_rng(1)
    for suffix in (".bmp", ".gif", ".webp", ".jp2"):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "beach" / f"b{suffix}")
    for name in ("airport", "forest"):
        pixels = rng.integers(0, 255, (3, 16, 16), dtype=np.uint8)
        profile = {"driver": "HFA", "width": 16, "height": 16, "count": 3, "dtype": "uint8"}
        with rasterio.open(root / name / "scan.img", "w", **profile) as ds:
            ds.write(pixels)
    data = load_scene_folders(root)
    listed = [p for p in data.image_paths if p.startswith("beach/")]
    assert listed == ["beach/b.bmp", "beach/b.gif", "beach/b.jp2", "beach/b.webp", *listed[4:]]
    assert load_images(root, listed[:4], 16).shape == (4, 16, 16, 3)
    notes = [line for line in capsys.readouterr().err.splitlines() if "left out of training" in line]
    assert len(notes) == 1 and "2 files in class folders left out of training (.img:" in notes[0]
    assert "airport/scan.img" in notes[0] and not any(".img" in p for p in data.image_paths)


def test_an_empty_class_folder_is_left_out_unless_the_split_names_it(tmp_path, capsys):
    """An empty class folder (a class emptied for a subset) stopped training under any split: it is left
    out with a note, and only a split that names it is refused, naming the folder."""
    from scipy.io import savemat

    from rsz_train.data.formats import IMAGE_SUFFIXES, _images_in

    root = _class_folders(tmp_path / "d")
    (root / "golf_course").mkdir()
    (root / "golf_course" / "Thumbs.db").write_bytes(b"\x00" * 16)
    data, layout = load_dataset(root, DataOptions())
    assert "golf_course" not in data.class_names and data.empty_folders == ["golf_course"]
    capsys.readouterr()
    ((split, _source),) = resolve_splits(root, data, layout, DataOptions(unseen=2))
    assert "golf_course" not in split.seen + split.unseen
    assert (
        capsys.readouterr().err.strip()
        == f"note: {root}: 1 class folder with no images left out (golf_course)"
    )
    # class lists: one that does not name it trains, one that names it is refused
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "seen.txt").write_text("airport\nbeach\ndense_residential\nforest\n")
    (lists / "unseen.txt").write_text("river\nstorage_tanks\n")
    assert _splits(root, split_file=str(lists))[0][0].unseen == ["river", "storage_tanks"]
    (lists / "unseen.txt").write_text("river\ngolf course\n")
    with pytest.raises(RszError) as err:
        _splits(root, split_file=str(lists))
    assert str(err.value) == (
        f"{root / 'golf_course'}: no images ({', '.join(IMAGE_SUFFIXES)}) in class folder "
        f"(class 'golf course' of {lists / 'unseen.txt'})"
    )
    # a DSVA .mat without image_files: its indices follow the sorted images of every class it names
    names = sorted([*CLASSES, "golf_course"])
    mat = tmp_path / "ann_attr_finetune_splits.mat"
    savemat(mat, {"att": np.eye(7), "allclasses_names": np.array(names, dtype=object).reshape(-1, 1),
                  "train_gzsl_loc": np.arange(1.0, 11), "test_seen_loc": np.arange(11.0, 16),
                  "test_unseen_loc": np.arange(16.0, 26)})  # fmt: skip
    with pytest.raises(
        RszError, match=r"golf_course: no images .* in class folder \(class 'golf_course' of "
    ):
        _splits(root, split_file=str(mat))
    assert not _images_in(root / "golf_course")
