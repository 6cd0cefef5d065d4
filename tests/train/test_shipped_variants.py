"""Public data sets in the variants users get them: zips unpacked on macOS, MATLAB v7.3 files, Windows text
files, caption JSONs beside their image folder. Each reads, or fails with one line naming the file."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy.io import savemat

from rsz_infer.errors import RszError
from rsz_train.cli import main
from rsz_train.data.sources import DataOptions, load_dataset, resolve_splits

AID_CLASSES = ["Airport", "BareLand", "BaseballField", "Beach", "Bridge", "Center"]
TINY_YAML = (
    "train:\n  image_size: 32\n  epochs: 1\n  batch_size: 32\n  eval_batch_size: 128\n  warmup_epochs: 1\n"
)
APPLEDOUBLE = b"\x00\x05\x16\x07" + b"\x00" * 60  # the header of a macOS '._x.jpg' resource-fork file


def _image(path: Path, rng: np.random.Generator, size: tuple[int, int] = (32, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _aid_unzipped_on_a_mac(root: Path) -> Path:
    """AID's class folders (capitalised names, .jpg) with what a macOS zip and Windows add: __MACOSX/ of
    '._' files beside them, Thumbs.db and desktop.ini inside, a readme.txt at the root; one tile 31 px high
    (as some of UCM's are 247 x 256)."""
    rng = np.random.default_rng(0)
    for name in AID_CLASSES:
        for i in range(5):
            _image(root / name / f"{name.lower()}_{i + 1}.jpg", rng, (32, 31) if i == 2 else (32, 32))
            (root / "__MACOSX" / name).mkdir(parents=True, exist_ok=True)
            (root / "__MACOSX" / name / f"._{name.lower()}_{i + 1}.jpg").write_bytes(APPLEDOUBLE)
        (root / name / "Thumbs.db").write_bytes(b"\x00" * 16)
        (root / name / "desktop.ini").write_text("[.ShellClassInfo]\r\n")
    (root / "readme.txt").write_text("AID: Aerial Image Dataset\r\n")
    return root


def test_a_zip_unpacked_on_a_mac_trains_on_its_class_folders_only(tmp_path):
    """__MACOSX/ beside AID's class folders was taken for a class folder: "no images in class folder"."""
    root = _aid_unzipped_on_a_mac(tmp_path / "AID")
    data, _ = load_dataset(root, DataOptions())
    assert data.class_names == sorted(AID_CLASSES) and len(data.image_paths) == 5 * len(AID_CLASSES)
    # also one level up, where the archive unpacked into its own folder next to __MACOSX/
    (tmp_path / "unpacked" / "__MACOSX" / "AID").mkdir(parents=True)
    (tmp_path / "unpacked" / "__MACOSX" / "AID" / "._readme.txt").write_bytes(APPLEDOUBLE)
    root.rename(tmp_path / "unpacked" / "AID")
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_YAML + "model:\n  semantic_source: sentence\n")
    result = CliRunner().invoke(
        main,
        ["mcfa", "--data", str(tmp_path / "unpacked"), "--unseen", "2", "--config", str(config),
         "--out", str(tmp_path / "run"), "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["data"]["root"] == str(tmp_path / "unpacked" / "AID")


def _matlab_v73_file(path: Path) -> Path:
    """What MATLAB's save -v7.3 writes: a 512-byte MAT header (version 0x0200, 'IM') before an HDF5 file."""
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Wed Dec  2 10:00:00 2026 HDF5 schema 1.00 ."
    header = text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    path.write_bytes(header.ljust(512, b"\x00") + b"\x89HDF\r\n\x1a\n" + b"\x00" * 504)
    return path


def test_a_matlab_v73_file_is_one_line_saying_to_resave_it_as_v7(tmp_path):
    """scipy cannot read v7.3 (HDF5) files, and its message suggested h5py, which rsz does not use."""
    root = _aid_unzipped_on_a_mac(tmp_path / "AID")
    splits = _matlab_v73_file(tmp_path / "ann_attr_finetune_4_splits.mat")
    features = _matlab_v73_file(tmp_path / "res101.mat")
    for extra in ([], ["--split-id", "all"], ["--image-list", str(features)]):
        mat = features if extra[:1] == ["--image-list"] else splits
        result = CliRunner().invoke(
            main,
            ["dsva", "--data", str(root), "--split-file", str(splits), *extra, "--out", str(tmp_path / "r")],
        )
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
        assert f"{mat}: a MATLAB v7.3 (HDF5) .mat file" in result.output
        assert "h5py" not in result.output
        if mat == splits:
            assert result.output.rstrip().endswith(
                f"S = load('{mat.name}'); save('{mat.name}', '-struct', 'S', '-v7')"
            )
        else:  # only what --image-list reads, into a new file: a features matrix over 2 GB cannot be -v7
            assert result.output.rstrip().endswith(
                "S = load('res101.mat', 'image_files', 'labels'); "
                "save('res101_v7.mat', '-struct', 'S', '-v7'), and pass res101_v7.mat"
            )


def _rsicd(root: Path) -> Path:
    """RSICD as it ships: dataset_rsicd.json beside RSICD_images/ ('airport_1.jpg', and numbered '00010.jpg'
    ones); sentences with raw and tokens, some repeated five times as in the real file."""
    rng = np.random.default_rng(1)
    images = []
    names = [f"{c}_{i}.jpg" for c in ("airport", "bareland", "beach") for i in range(1, 9)] + ["00010.jpg"]
    for k, name in enumerate(names):
        _image(root / "RSICD_images" / name, rng)
        raw = f"many buildings are near tile {k} ."
        sentence = {"tokens": raw.split()[:-1], "raw": raw, "imgid": k, "sentid": 5 * k}
        split = "test" if k % 5 == 0 else "val" if k % 5 == 1 else "train"
        images.append({"filename": name, "imgid": k, "split": split, "sentences": [sentence] * 5})
    captions = root / "dataset_rsicd.json"
    captions.write_text(json.dumps({"images": images, "dataset": "rsicd"}))
    return captions


def test_rsicd_trains_from_its_rsicd_images_folder(tmp_path):
    """RSICD's images are in RSICD_images/, which was not looked in: "image 'airport_1.jpg' not found"."""
    captions = _rsicd(tmp_path / "RSICD")
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_YAML)
    result = CliRunner().invoke(
        main,
        ["msa", "--data", str(tmp_path / "RSICD"), "--captions", str(captions), "--config", str(config),
         "--out", str(tmp_path / "run"), "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["data"]["root"] == str(tmp_path / "RSICD" / "RSICD_images")
    assert report["data"]["validation"] == "val captions of the caption file"


def test_a_dsva_att_saved_classes_by_attributes_is_read_as_the_same_matrix(tmp_path):
    """att as classes x attributes (one row per class, as numpy code saves it) was refused as a bad shape;
    it is the same matrix as DSVA's attributes x classes. allclasses_names as a char matrix (MATLAB's
    char(...), padded with spaces) names the same classes as a cell array."""
    root = _aid_unzipped_on_a_mac(tmp_path / "AID")
    data, _ = load_dataset(root, DataOptions())
    att = np.random.default_rng(2).random((4, len(AID_CLASSES)))  # 4 attributes x 6 classes
    unseen = {"Beach", "Center"}
    locs = {"train_gzsl_loc": [], "test_seen_loc": [], "test_unseen_loc": []}
    for i, label in enumerate(data.labels):
        key = (
            "test_unseen_loc"
            if data.class_names[label] in unseen
            else ("test_seen_loc" if i % 5 == 0 else "train_gzsl_loc")
        )
        locs[key].append([i + 1])
    matrices = []
    for name, matrix, names in [
        ("cell.mat", att, np.array([[n] for n in data.class_names], dtype=object)),
        ("rows.mat", att.T, np.array(data.class_names)),  # char matrix
    ]:
        savemat(str(tmp_path / name), {"att": matrix, "allclasses_names": names, **locs})
        options = DataOptions(split_file=str(tmp_path / name))
        data, layout = load_dataset(root, options)
        [(split, _)] = resolve_splits(root, data, layout, options)
        assert split.unseen == sorted(unseen)
        matrices.append(data.attribute_matrix)
    np.testing.assert_allclose(matrices[0], att.T.astype(np.float32))
    np.testing.assert_array_equal(matrices[0], matrices[1])


def test_split_lists_written_by_windows_powershell_are_read(tmp_path):
    """PowerShell's `>` writes UTF-16 with a BOM and CRLF (as a class file may be): seen.txt/unseen.txt,
    MCFA's index files and attributes.txt so written were "not valid UTF-8"."""
    root = _aid_unzipped_on_a_mac(tmp_path / "AID")

    def powershell(path: Path, lines: list[str]) -> None:
        path.write_bytes(("\r\n".join(lines) + "\r\n\r\n").encode("utf-16"))  # BOM, then UTF-16 LE

    lists = tmp_path / "lists"
    lists.mkdir()
    powershell(lists / "seen.txt", AID_CLASSES[:4])
    powershell(lists / "unseen.txt", AID_CLASSES[4:])
    attributes = tmp_path / "attributes.txt"
    powershell(attributes, ["runway\tshape\thas a runway", "sand\tcolour\thas sand"])
    options = DataOptions(split_file=str(lists), attributes=str(attributes))
    data, layout = load_dataset(root, options)
    [(split, _)] = resolve_splits(root, data, layout, options)
    assert split.unseen == sorted(AID_CLASSES[4:]) and data.attribute_names == ["runway", "sand"]
    mcfa = tmp_path / "gzsl_4_1split"
    mcfa.mkdir()
    index = {p: i for i, p in enumerate(data.image_paths)}
    for kind, classes in (("seen", AID_CLASSES[:4]), ("unseen", AID_CLASSES[4:])):
        rows = [str(i) for p, i in index.items() if p.split("/")[0] in classes]
        powershell(mcfa / f"{kind}_class_loc_4_1.txt", rows)
    [(split, _)] = resolve_splits(root, data, layout, DataOptions(split_file=str(mcfa)))
    assert split.unseen == sorted(AID_CLASSES[4:])


def test_caption_images_missing_on_disk_are_counted_in_the_one_line(tmp_path):
    """A JSON whose names do not all match the images (RSICD's have been renamed in some copies) named the
    first missing image only: one lost file and a JSON of other names read alike."""
    captions = _rsicd(tmp_path / "RSICD")
    for name in ("airport_3.jpg", "beach_8.jpg", "00010.jpg"):
        (tmp_path / "RSICD" / "RSICD_images" / name).unlink()
    result = CliRunner().invoke(
        main,
        ["msa", "--data", str(tmp_path / "RSICD"), "--captions", str(captions), "--out", str(tmp_path / "r")],
    )
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "image 'airport_3.jpg' not found under" in result.output
    assert result.output.rstrip().endswith("RSICD_images (+2 more of its 25 images)")


@pytest.mark.parametrize("disk, listed", [("NFD", "NFC"), ("NFC", "NFD")])
def test_caption_file_names_match_the_disk_under_nfc(tmp_path, disk, listed):
    """RSICD unpacked on macOS names 'prés_1.jpg' in NFD, a JSON written elsewhere in NFC (or the other way
    round): "image not found". Names now match under NFC; each image is read by its name on disk."""
    import unicodedata

    captions = _rsicd(tmp_path / "RSICD")
    doc = json.loads(captions.read_text())
    folder = tmp_path / "RSICD" / "RSICD_images"
    for entry in doc["images"]:
        name = entry["filename"].replace("bareland", "prés")
        (folder / entry["filename"]).rename(folder / unicodedata.normalize(disk, name))
        entry["filename"] = unicodedata.normalize(listed, name)
    captions.write_text(json.dumps(doc), encoding="utf-8")
    data, _ = load_dataset(tmp_path / "RSICD", DataOptions(captions=str(captions)))
    assert data.root == folder and len(data.image_paths) == 25
    assert set(data.image_paths) == {p.name for p in folder.iterdir()}  # the names on disk
    pres = unicodedata.normalize(disk, "prés_2.jpg")
    assert data.captions[pres] == ["many buildings are near tile 9 ."] * 5
    classes = [unicodedata.normalize("NFC", c) for c in data.class_names]
    assert classes == ["airport", "beach", "image", "prés"]


def test_caption_images_folder_is_where_most_images_are_not_where_the_first_is(tmp_path):
    """The images folder was the first holding the JSON's first image: that one file lost made the whole set
    "not found under RSICD nor in any folder in it", and a stray copy of it beside the folder made every
    other image missing. Now the folder holding most images is taken; most missing is one line naming the
    JSON and the folder."""
    captions = _rsicd(tmp_path / "RSICD")
    folder = tmp_path / "RSICD" / "RSICD_images"
    first = folder / "airport_1.jpg"  # the JSON's first image
    first.rename(tmp_path / "airport_1.jpg")
    with pytest.raises(RszError, match=r"json: image 'airport_1.jpg' not found under \S*RSICD_images$"):
        load_dataset(tmp_path / "RSICD", DataOptions(captions=str(captions)))
    (tmp_path / "airport_1.jpg").rename(first)
    (tmp_path / "RSICD" / "airport_1.jpg").write_bytes(first.read_bytes())  # a stray copy beside the folder
    data, _ = load_dataset(tmp_path / "RSICD", DataOptions(captions=str(captions)))
    assert data.root == folder and len(data.image_paths) == 25
    for name in sorted(p.name for p in folder.iterdir())[:20]:
        (folder / name).unlink()
    result = CliRunner().invoke(
        main,
        ["msa", "--data", str(tmp_path / "RSICD"), "--captions", str(captions), "--out", str(tmp_path / "r")],
    )
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert f"dataset_rsicd.json: 20 of its 25 images not found under {folder} (first: " in result.output


def test_mcfa_index_files_written_by_numpy_savetxt_are_read(tmp_path):
    """np.savetxt's default format writes index 12 as '1.200000000000000000e+01': refused as not an index."""
    root = _aid_unzipped_on_a_mac(tmp_path / "AID")
    data, layout = load_dataset(root, DataOptions())
    folder = tmp_path / "gzsl_4_1split"
    folder.mkdir()
    unseen = {"Bridge", "Center"}
    rows = {"seen": [], "test_seen": [], "unseen": []}
    for i, label in enumerate(data.labels):
        kind = "unseen" if data.class_names[label] in unseen else ("test_seen" if i % 5 == 4 else "seen")
        rows[kind].append(i)
    for kind, values in rows.items():
        np.savetxt(folder / f"{kind}_class_loc_4_1.txt", np.array(values, dtype=float))
    [(split, _)] = resolve_splits(root, data, layout, DataOptions(split_file=str(folder)))
    assert split.unseen == sorted(unseen) and len(split.test_unseen) == len(rows["unseen"])
    (folder / "seen_class_loc_4_1.txt").write_text("1.5e+00\n")
    with pytest.raises(
        RszError, match=r"seen_class_loc_4_1.txt:1: expected a 0-based image index .* '1.5e\+00'"
    ):
        resolve_splits(root, data, layout, DataOptions(split_file=str(folder)))


def test_a_one_based_mcfa_index_file_is_named_as_such(tmp_path):
    """Indices counted from 1 reach one past the last image: "expected 0..29, got '30'" did not say why."""
    root = _aid_unzipped_on_a_mac(tmp_path / "AID")
    data, layout = load_dataset(root, DataOptions())
    folder = tmp_path / "zsl_4_1split"
    folder.mkdir()
    for kind, classes in (("seen", AID_CLASSES[:4]), ("unseen", AID_CLASSES[4:])):
        rows = [i + 1 for i, p in enumerate(data.image_paths) if p.split("/")[0] in classes]
        (folder / f"{kind}_class_loc_4_1.txt").write_text("".join(f"{v}\r\n" for v in rows))
    with pytest.raises(RszError, match=r"unseen_class_loc_4_1.txt:10: .* got '30' \(the file may be 1-based"):
        resolve_splits(root, data, layout, DataOptions(split_file=str(folder)))


def test_class_names_and_image_indices_in_the_other_split_format_say_which_format_fits(tmp_path):
    """Class names in MCFA's index files, or image indices in seen.txt: each error said only "expected an
    index" or "unknown class '0'", not that the other split format holds what the file does."""
    root = _aid_unzipped_on_a_mac(tmp_path / "AID")
    data, layout = load_dataset(root, DataOptions())
    mcfa = tmp_path / "zsl_4_1split"
    mcfa.mkdir()
    (mcfa / "seen_class_loc_4_1.txt").write_text("\ufeffAirport\r\nBareLand\r\n")
    (mcfa / "unseen_class_loc_4_1.txt").write_text("Center\r\n")
    with pytest.raises(
        RszError, match=r"got 'Airport' \(a split by class names is a folder of seen.txt and un"
    ):
        resolve_splits(root, data, layout, DataOptions(split_file=str(mcfa)))
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "seen.txt").write_text("0\n1\n2\n")
    (lists / "unseen.txt").write_text("5\n")
    with pytest.raises(RszError, match=r"seen.txt: unknown class '0' .*; a split by image indices is MCFA's"):
        resolve_splits(root, data, layout, DataOptions(split_file=str(lists)))


def test_caption_sentences_with_tokens_and_no_raw_text_are_read_from_their_tokens(tmp_path):
    """A Karpathy JSON that keeps only `tokens` (or an empty `raw`) stopped training at its first sentence."""
    captions = _rsicd(tmp_path / "RSICD")
    doc = json.loads(captions.read_text())
    for entry in doc["images"]:
        entry["sentences"] = [{"tokens": s["tokens"], "imgid": s["imgid"]} for s in entry["sentences"]]
    doc["images"][3]["sentences"][0]["raw"] = ""
    captions.write_text(json.dumps(doc))
    data, _ = load_dataset(tmp_path / "RSICD", DataOptions(captions=str(captions)))
    assert data.captions["airport_1.jpg"][0] == "many buildings are near tile 0"
    doc["images"][3]["sentences"][0]["tokens"] = []
    captions.write_text(json.dumps(doc))
    with pytest.raises(
        RszError, match=r"images\[3\] \(airport_4.jpg\) has a sentence without 'raw' text or 'tok"
    ):
        load_dataset(tmp_path / "RSICD", DataOptions(captions=str(captions)))


def test_a_caption_filepath_shared_by_every_image_is_no_class(tmp_path):
    """Every entry's `filepath` 'RSICD_images' made all images one class 'RSICD_images' (so --unseen N
    failed, and classes.json named no class of the data set); images in several folders keep them."""
    captions = _rsicd(tmp_path / "RSICD")
    doc = json.loads(captions.read_text())
    for entry in doc["images"]:
        entry["filepath"] = "RSICD_images"
    captions.write_text(json.dumps(doc))
    data, _ = load_dataset(tmp_path / "RSICD", DataOptions(captions=str(captions)))
    assert data.class_names == ["airport", "bareland", "beach", "image"]
    assert data.class_names[data.labels[data.image_paths.index("RSICD_images/beach_2.jpg")]] == "beach"
    for entry in doc["images"]:  # class folders: the folder is the class, whatever the file's name
        name = entry["filename"]
        entry["filepath"] = "tiles/" + (name.split("_")[0] if "_" in name else "airport")
        (tmp_path / "RSICD" / entry["filepath"]).mkdir(parents=True, exist_ok=True)
        (tmp_path / "RSICD" / "RSICD_images" / name).rename(tmp_path / "RSICD" / entry["filepath"] / name)
    captions.write_text(json.dumps(doc))
    data, _ = load_dataset(tmp_path / "RSICD", DataOptions(captions=str(captions)))
    assert data.class_names == ["tiles/airport", "tiles/bareland", "tiles/beach"]
    assert data.class_names[data.labels[data.image_paths.index("tiles/airport/00010.jpg")]] == "tiles/airport"


def test_the_folder_ucm_unzipped_into_names_the_data_folder_inside_it(tmp_path):
    """--data on the folder UCMerced_LandUse.zip unpacked into (UCMerced_LandUse/Images/<class>/ and
    __MACOSX/ two levels down) said only "no class folders", not which folder to give."""
    rng = np.random.default_rng(3)
    for name in ("agricultural", "airplane", "beach"):
        _image(tmp_path / "unzipped" / "UCMerced_LandUse" / "Images" / name / f"{name}00.tif", rng)
        (tmp_path / "unzipped" / "__MACOSX" / "UCMerced_LandUse" / "Images" / name).mkdir(parents=True)
    with pytest.raises(RszError) as error:
        load_dataset(tmp_path / "unzipped", DataOptions())
    assert str(error.value).endswith(
        f"; try --data {tmp_path / 'unzipped' / 'UCMerced_LandUse'} (its Images/ holds class folders)"
    )
    data, _ = load_dataset(tmp_path / "unzipped" / "UCMerced_LandUse", DataOptions())
    assert data.class_names == ["agricultural", "airplane", "beach"]


def _mat_element(data_type: int, data: bytes) -> bytes:
    """One MAT v5 data element: type, byte count, data padded to 8 bytes."""
    return struct.pack("<II", data_type, len(data)) + data + b"\x00" * (-len(data) % 8)


def _with_matlab_string_array(path: Path, name: str) -> Path:
    """Appends a variable as MATLAB R2016b+ saves a string array (["a" "b"]) in a -v7 file: an
    mxOPAQUE_CLASS element (array flags, name, type system 'MCOS', class 'string', then a uint32 reference
    [0xDD000000 2 1 1 1 1] into the file's subsystem). The subsystem itself, where MATLAB keeps the
    characters, is left out: scipy does not decode it, so what it returns is the same."""
    text = lambda s: _mat_element(1, s.encode())  # noqa: E731 (miINT8)
    reference = _mat_element(
        14,  # miMATRIX: a 6 x 1 uint32 (mxUINT32_CLASS = 13) array with an empty name
        _mat_element(6, struct.pack("<II", 13, 0))
        + _mat_element(5, struct.pack("<ii", 6, 1))
        + text("")
        + _mat_element(6, np.array([0xDD000000, 2, 1, 1, 1, 1], "<u4").tobytes()),
    )
    flags = _mat_element(6, struct.pack("<II", 17, 0))  # mxOPAQUE_CLASS
    with path.open("ab") as f:
        f.write(_mat_element(14, flags + text(name) + text("MCOS") + text("string") + reference))
    return path


def test_names_saved_as_a_matlab_string_array_are_one_line_saying_to_cellstr_them(tmp_path):
    """scipy gives a MATLAB string array as an undecodable MatlabOpaque (named 'None' before scipy 1.18):
    allclasses_names was "missing", image_files of --image-list too."""
    root = _aid_unzipped_on_a_mac(tmp_path / "AID")
    splits = tmp_path / "ann_attr_finetune_4_splits.mat"
    savemat(
        splits,
        {"att": np.eye(6), "train_gzsl_loc": np.arange(1.0, 11), "test_seen_loc": np.arange(11.0, 16),
         "test_unseen_loc": np.arange(16.0, 31)},
        do_compression=False,
    )  # fmt: skip
    _with_matlab_string_array(splits, "allclasses_names")
    features = tmp_path / "res101.mat"
    savemat(features, {"features": np.zeros((2, 30)), "labels": np.ones(30)}, do_compression=False)
    _with_matlab_string_array(features, "image_files")
    image_list = ["--image-list", str(features)]
    for mat, name, extra in ((splits, "allclasses_names", []), (features, "image_files", image_list)):
        result = CliRunner().invoke(
            main,
            ["dsva", "--data", str(root), "--split-file", str(splits), *extra, "--out", str(tmp_path / "r")],
        )
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
        assert result.output.rstrip().endswith(
            f"{mat}: {name} is a MATLAB string array, which rsz cannot read; re-save it in MATLAB as a cell "
            f"array of char vectors: load('{mat.name}', '{name}'); {name} = cellstr({name}); "
            f"save('{mat.name}', '{name}', '-append')"
        ), result.output
