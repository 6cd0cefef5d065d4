"""Data sets as they ship (class folders, DSVA .mat, MCFA split folders, class lists, Karpathy JSON without
val), each trained one epoch by one rsz-train command; --protocol paper; malformed split files."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file
from scipy.io import loadmat, savemat

from rsz_export.cli import main as export_main
from rsz_infer.errors import RszError
from rsz_train.cli import main
from rsz_train.data.formats import load_benchmark, load_scene_folders
from rsz_train.data.sources import DataOptions, load_dataset, resolve_splits
from rsz_train.runs import load_run

CLASSES = 8  # of the tiny benchmark's 42: 6 seen (1 carved as val) + 2 unseen
TINY_YAML = (
    "train:\n  image_size: 32\n  epochs: 1\n  batch_size: 32\n  eval_batch_size: 128\n  warmup_epochs: 1\n"
)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def shipped(tiny_benchmark, tmp_path_factory):
    """UCM-like: ROOT/Images/<class>/ with TIFF and JPEG tiles (as it unpacks), plus the benchmark's
    attribute phrases and a class file with descriptions beside it."""
    bench = load_benchmark(tiny_benchmark)
    root = tmp_path_factory.mktemp("ucm") / "UCMerced_LandUse"
    names = bench.class_names[:CLASSES]
    for path, label in zip(bench.image_paths, bench.labels):
        name = bench.class_names[label]
        if name not in names:
            continue
        stem = Path(path).stem
        target = root / "Images" / name / (stem + (".tif" if int(stem[-1]) % 2 else ".jpg"))
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(bench.root / path).convert("RGB").save(target)
    (root / "classes.txt").write_text("".join(f"{n}: {bench.descriptions[n]}\n" for n in names))
    matrix = np.asarray(bench.attribute_matrix)[:CLASSES]
    return {"root": root, "names": names, "attributes": tiny_benchmark / "attributes.txt", "matrix": matrix}


def _tiny_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML + extra)
    return path


def _dsva_mat(path: Path, root: Path, names: list[str], matrix: np.ndarray, ids=(1, 2)) -> Path:
    """The DSVA format: att (attributes x classes), allclasses_names (a cell array, other spelling), and
    1-based *_loc_<id> indices into the image list (classes, then files, sorted)."""
    data = load_scene_folders(root / "Images")
    content = {
        "att": matrix.T.astype(float),
        "allclasses_names": np.array([[n.replace("_", " ").title()] for n in names], dtype=object),
    }
    for split_id in ids:
        unseen = {names[split_id], names[split_id + 3]}
        train, test_seen, test_unseen = [], [], []
        for i, label in enumerate(data.labels):
            name = data.class_names[label]
            if name in unseen:
                test_unseen.append(i + 1)
            elif i % 5 == 0:
                test_seen.append(i + 1)
            else:
                train.append(i + 1)
        content[f"train_gzsl_loc_{split_id}"] = np.array(train)[:, None]
        content[f"test_seen_loc_{split_id}"] = np.array(test_seen)[:, None]
        content[f"test_unseen_loc_{split_id}"] = np.array(test_unseen)[:, None]
    savemat(str(path), content)
    return path


def _mcfa_folder(folder: Path, root: Path, ids=(1, 2)) -> Path:
    """masuqiang/MCFA-Pytorch's GZSL folder: seen/test_seen/unseen_class_loc_<ratio>_<id>.txt, one 0-based
    image index per line (data_loader.py indexes its feature rows with them directly)."""
    data = load_scene_folders(root / "Images")
    folder.mkdir(parents=True)
    for split_id in ids:
        unseen = {data.class_names[split_id - 1], data.class_names[split_id + 5]}
        rows = {"seen": [], "test_seen": [], "unseen": []}
        for i, label in enumerate(data.labels):
            kind = "unseen" if data.class_names[label] in unseen else ("test_seen" if i % 5 == 4 else "seen")
            rows[kind].append(i)
        for kind, values in rows.items():
            (folder / f"{kind}_class_loc_6_{split_id}.txt").write_text("".join(f"{v}\n" for v in values))
    return folder


def _run(args: list[str]) -> dict:
    return _run_printed(args)[0]


def _run_printed(args: list[str]) -> tuple[dict, str]:
    """The run's report.json and the summary line rsz-train printed last."""
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / "report.json").read_text()), result.stdout.strip().splitlines()[-1]


def test_ucm_folders_with_a_dsva_mat_train_dsva_in_one_command(shipped, tmp_path):
    mat = _dsva_mat(
        tmp_path / "ann_attr_finetune_6_splits.mat", shipped["root"], shipped["names"], shipped["matrix"]
    )
    report = _run(
        ["dsva", "--data", str(shipped["root"]), "--split-file", str(mat), "--split-id", "2",
         "--attributes", str(shipped["attributes"]), "--classes", str(shipped["root"] / "classes.txt"),
         "--config", str(_tiny_config(tmp_path)), "--out", str(tmp_path / "run"), "--device", "cpu"]
    )  # fmt: skip
    data = report["data"]
    assert data["root"] == str(shipped["root"] / "Images") and data["layout"] == "class_folders"
    assert (data["split_source"], data["split_id"]) == ("dsva mat", "2")
    assert data["split_sha256"] == _sha(mat) and report["split"] == "ann_attr_finetune_6_splits_2"
    assert report["protocol"] == "rsz" and {"zsl", "gzsl"} <= set(report["test"])
    classes = json.loads((tmp_path / "run" / "classes.json").read_text())
    names = shipped["names"]
    assert sorted(classes["unseen"]) == sorted([names[2], names[5]])
    # descriptions from --classes, not the bare class names
    assert classes["descriptions"][0] != classes["class_names"][0]


# --- DSVA's indices follow the image_files of a features .mat (--image-list) ----------------------------


def _authors_files(shipped, tmp_path: Path, in_file: bool) -> tuple[Path, Path, list[str]]:
    """The authors' layout: res101.mat (features, 1-based labels into allclasses_names, image_files as
    absolute paths in THEIR order) and a splits .mat whose 1-based *_loc index that order; with `in_file`
    the splits .mat carries the same image_files itself. Returns (splits, features, image_files)."""
    tmp_path.mkdir(exist_ok=True)
    sorted_mat = _dsva_mat(tmp_path / "sorted.mat", shipped["root"], shipped["names"], shipped["matrix"])
    data = load_scene_folders(shipped["root"] / "Images")
    perm = np.random.default_rng(3).permutation(len(data.image_paths))  # their j-th image: our perm[j]
    where = np.argsort(perm)  # our i-th image (sorted order): their where[i]
    files = [f"/home/x/RSSDIVCS/{data.image_paths[i]}" for i in perm]
    content = {k: v for k, v in loadmat(str(sorted_mat)).items() if not k.startswith("__")}
    for key in [k for k in content if "_loc_" in k]:
        content[key] = (where[content[key].ravel() - 1] + 1)[:, None]
    if in_file:
        content["image_files"] = np.array([[f] for f in files], dtype=object)
    splits = tmp_path / ("in_file.mat" if in_file else "ann_attr_finetune_6_splits.mat")
    savemat(str(splits), content)
    labels = [1 + shipped["names"].index(data.class_names[data.labels[i]]) for i in perm]
    features = tmp_path / "res101.mat"
    savemat(
        str(features),
        {"features": np.zeros((4, len(files))), "labels": np.array(labels)[:, None],
         "image_files": np.array([[f] for f in files], dtype=object)},
    )  # fmt: skip
    return splits, features, files


def _splits(shipped, **options) -> list:
    options = DataOptions(**{"split_id": "all", **options})
    data, layout = load_dataset(shipped["root"], options)
    return resolve_splits(shipped["root"], data, layout, options)


def test_image_list_of_a_features_mat_orders_the_indices_as_in_file_image_files_do(shipped, tmp_path, capsys):
    in_file, _, _ = _authors_files(shipped, tmp_path / "a", in_file=True)
    splits, features, _ = _authors_files(shipped, tmp_path / "b", in_file=False)
    by_file = _splits(shipped, split_file=str(in_file))
    by_list = _splits(shipped, split_file=str(splits), image_list=str(features))
    assert "note:" not in capsys.readouterr().err  # (the order is known)
    unshuffled = _splits(shipped, split_file=str(tmp_path / "a" / "sorted.mat"))  # same images, sorted
    assert len(by_list) == 2
    for (a, source_a), (b, source_b), (c, _) in zip(by_file, by_list, unshuffled):
        assert (a.seen, a.unseen, a.train, a.test_seen, a.test_unseen) == (
            b.seen, b.unseen, b.train, b.test_seen, b.test_unseen
        )  # fmt: skip
        assert (b.train, b.test_seen, b.test_unseen) == (c.train, c.test_seen, c.test_unseen)
        assert source_a.image_order == f"image_files of {in_file}" and source_a.image_list_sha256 is None
        assert source_b.image_order == f"image_files of {features}"
        assert source_b.image_list_sha256 == _sha(features)


def test_a_dsva_mat_without_image_files_says_which_order_it_assumed(shipped, tmp_path, capsys):
    mat = _dsva_mat(tmp_path / "plain.mat", shipped["root"], shipped["names"], shipped["matrix"])
    sources = [source for _, source in _splits(shipped, split_file=str(mat))]
    assert [s.image_order for s in sources] == ["sorted class folders and file names"] * 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"note: {mat} has no image_files: its indices are taken to follow the class folders and file names "
        "in sorted order; the authors' indices follow their features .mat's image_files: pass it with "
        "--image-list"
    ]  # once, for both split ids


def test_image_list_is_recorded_in_the_report(shipped, tmp_path):
    splits, features, _ = _authors_files(shipped, tmp_path, in_file=False)
    report = _run(
        ["dsva", "--data", str(shipped["root"]), "--split-file", str(splits), "--split-id", "1",
         "--image-list", str(features), "--attributes", str(shipped["attributes"]),
         "--config", str(_tiny_config(tmp_path)),
         "--out", str(tmp_path / "run"), "--device", "cpu"]
    )  # fmt: skip
    assert report["data"]["image_order"] == f"image_files of {features}"
    assert report["data"]["image_list_sha256"] == _sha(features)


def test_image_list_errors_are_one_line(shipped, tmp_path):
    splits, features, files = _authors_files(shipped, tmp_path, in_file=False)
    content = loadmat(str(features))
    labels = content["labels"].ravel()
    k = next(j for j in range(len(labels)) if labels[j] != labels[0])  # give entry 0 entry k's label
    labels[0] = labels[k]
    savemat(
        str(tmp_path / "mislabelled.mat"), {"labels": labels[:, None], "image_files": content["image_files"]}
    )
    folder, their = files[0].split("/")[-2], shipped["names"][int(labels[0]) - 1].replace("_", " ").title()
    mcfa = _mcfa_folder(tmp_path / "zsl", shipped["root"], ids=(1,))
    in_file, _, _ = _authors_files(shipped, tmp_path / "a", in_file=True)
    savemat(str(tmp_path / "reversed.mat"), {"image_files": content["image_files"][::-1]})
    cases = [
        (
            ["--split-file", str(in_file), "--image-list", str(tmp_path / "reversed.mat")],
            f"error: {in_file}: its own image_files differ from those of --image-list "
            f"{tmp_path / 'reversed.mat'}; drop --image-list",
        ),
        (
            ["--split-file", str(splits), "--image-list", str(tmp_path / "mislabelled.mat")],
            f"error: {tmp_path / 'mislabelled.mat'}: image_files entry {files[0]!r} is in class folder "
            f"{folder!r}, but its label {int(labels[0])} is class {their!r} (allclasses_names of {splits}, "
            "1-based)",
        ),
        (
            ["--split-file", str(splits), "--image-list", str(tmp_path / "res152.mat")],
            f"error: {tmp_path / 'res152.mat'}: file not found (--image-list: a .mat with image_files, "
            "like DSVA's res101.mat)",
        ),
        (
            ["--split-file", str(mcfa), "--image-list", str(features)],
            f"error: --image-list {features}: needs --split-file FILE.mat (a DSVA splits .mat, whose indices "
            "it orders)",
        ),
        (
            ["--unseen", "2", "--image-list", str(features)],
            f"error: --image-list {features}: needs --split-file FILE.mat",
        ),
    ]
    for extra, message in cases:
        args = ["dsva", "--data", str(shipped["root"]), "--out", str(tmp_path / "o"), "--device", "cpu"]
        result = CliRunner().invoke(main, [*args, *extra])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), (message, result.output)
        assert not (tmp_path / "o").exists()


def test_mcfa_folder_all_splits_paper_protocol_reports_mean_and_std(shipped, tmp_path):
    folder = _mcfa_folder(tmp_path / "gzsl_6_5split", shipped["root"])
    out = tmp_path / "runs"
    report, printed = _run_printed(
        ["mcfa", "--data", str(shipped["root"]), "--split-file", str(folder), "--split-id", "all",
         "--protocol", "paper", "--attributes", str(shipped["attributes"]),
         "--config", str(_tiny_config(tmp_path)), "--out", str(out), "--device", "cpu"]
    )  # fmt: skip
    assert report["splits"] == ["gzsl_6_5split_1", "gzsl_6_5split_2"]
    assert (report["data"]["split_id"], report["data"]["split_sha256"]) == ("all", None)
    assert [f["split_id"] for f in report["split_files"]] == ["1", "2"]
    assert report["note"].startswith("mean and standard deviation over the 2 splits (population std, ddof=0")
    # the printed line: the protocol, how many splits, which std, and the report's own figures
    assert printed.startswith(f"run written to {out} (--protocol paper, ")
    assert "; test over 2 splits, mean +- std (ddof=0), each scored once: zsl " in printed
    zsl = report["test"]["zsl"]
    assert f"zsl {100 * zsl['mean']:.1f} +- {100 * zsl['std']:.1f}%" in printed
    zsl = report["test"]["zsl"]
    assert zsl["mean"] == pytest.approx(np.mean(zsl["values"])) and zsl["std"] == pytest.approx(
        np.std(zsl["values"])
    )
    for split_id in (1, 2):
        sub = json.loads((out / f"gzsl_6_5split_{split_id}" / "report.json").read_text())
        assert sub["protocol"] == "paper" and "refit on all 6 seen classes" in sub["selection"]
        assert (
            sub["data"]["split_sha256"]
            == hashlib.sha256(
                b"".join(
                    (folder / f"{k}_class_loc_6_{split_id}.txt").read_bytes()
                    for k in ("seen", "test_seen", "unseen")
                )
            ).hexdigest()
        )
        assert zsl["values"][split_id - 1] == sub["test"]["zsl"]
        # what each split selected on its own validation, beside the mean and std
        assert report["selected"][split_id - 1] == {
            "split": f"gzsl_6_5split_{split_id}",
            "best_epoch": sub["best_epoch"],
            "seen_calibration": sub["seen_calibration"],
        }
        assert report["split_files"][split_id - 1]["split_sha256"] == sub["data"]["split_sha256"]
        # the refit trained on every seen class (the val class included) and GZSL covers all of them
        classes = json.loads((out / f"gzsl_6_5split_{split_id}" / "classes.json").read_text())
        assert len(classes["seen"]) == 6 and classes["val"] == []
        selection = json.loads((out / f"gzsl_6_5split_{split_id}" / "selection" / "classes.json").read_text())
        assert len(selection["val"]) == 1 and selection["val"][0] in classes["seen"]
    # OUT itself holds no model (the user trial's rsz-export --run runs/mcfa5a): say which folders do
    result = CliRunner().invoke(
        export_main, ["--model", "mcfa", "--run", str(out), "--out", str(tmp_path / "bundle")]
    )
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        f"error: {out} holds one run per split (gzsl_6_5split_1, ..., gzsl_6_5split_2): pass one of them, "
        f"e.g. --run {out / 'gzsl_6_5split_1'}"
    ], result.output
    assert not (tmp_path / "bundle").exists()
    first = json.loads((out / "gzsl_6_5split_1" / "classes.json").read_text())
    assert load_run(out / "gzsl_6_5split_1", kind="mcfa")[1].seen == first["seen"]
    # --resume --epochs M of the finished splits: their selection would be kept; one line, nothing rewritten
    before = (out / "report.json").read_bytes()
    result = CliRunner().invoke(
        main,
        ["mcfa", "--data", str(shipped["root"]), "--split-file", str(folder), "--split-id", "all",
         "--protocol", "paper", "--attributes", str(shipped["attributes"]), "--out", str(out),
         "--device", "cpu", "--resume", "--epochs", "2"],
    )  # fmt: skip
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        f"error: --resume --epochs 2: {out / 'gzsl_6_5split_1'} is a --protocol paper run whose selection "
        f"run (selection/) finished at 1 epoch and chose epoch 1 on validation, which is not chosen again: "
        "resume it with --epochs 1, or start a new run with --epochs 2"
    ], result.output
    assert (out / "report.json").read_bytes() == before


def test_all_splits_killed_in_the_first_epoch_resume_from_epoch_0(shipped, tmp_path):
    """--split-id all killed in the first split's first epoch (OUT/config.yaml, the split's config.yaml,
    no last.pt anywhere): --resume trains every split instead of a dead end."""
    from rsz_train.data.sources import DataOptions
    from rsz_train.train import train

    folder = _mcfa_folder(tmp_path / "gzsl_6_5split", shipped["root"])
    out = tmp_path / "runs"
    options = DataOptions(split_file=str(folder), split_id="all", attributes=str(shipped["attributes"]))
    config = _tiny_config(tmp_path)
    train("mcfa", shipped["root"], None, out, config_path=config, device="cpu", data_options=options,
          stop_after_epoch=0)  # fmt: skip
    assert not any(out.glob("**/last.pt")) and (out / "gzsl_6_5split_1" / "config.yaml").is_file()
    train("mcfa", shipped["root"], None, out, device="cpu", data_options=options, resume=True)
    report = json.loads((out / "report.json").read_text())
    assert report["splits"] == ["gzsl_6_5split_1", "gzsl_6_5split_2"]


def test_all_splits_input_error_writes_nothing(shipped, tmp_path):
    """--split-id all with an input error (DSVA without attributes): one line, and no OUT/config.yaml that
    would refuse the corrected rerun as "not empty"."""
    folder = _mcfa_folder(tmp_path / "gzsl_6_5split", shipped["root"])
    out = tmp_path / "runs"
    args = ["dsva", "--data", str(shipped["root"]), "--split-file", str(folder), "--split-id", "all",
            "--config", str(_tiny_config(tmp_path)), "--out", str(out), "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "DSVA needs attributes" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def test_mcfa_without_attribute_phrases_says_what_to_pass(shipped, tmp_path):
    """The user trial's command without --attributes: one line saying what to do, nothing written; and the
    alternative it names (model.semantic_source: sentence) trains."""
    folder = _mcfa_folder(tmp_path / "gzsl_6_5split", shipped["root"])
    data = ["mcfa", "--data", str(shipped["root"]), "--split-file", str(folder), "--device", "cpu"]
    out = tmp_path / "runs"
    result = CliRunner().invoke(
        main,
        [*data, "--split-id", "all", "--protocol", "paper", "--config", str(_tiny_config(tmp_path)),
         "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        "error: MCFA needs attribute phrases (model.semantic_source 'phrases', the default), the data has 0: "
        "pass --attributes FILE ('name<TAB>group<TAB>phrase' per line), or set model.semantic_source: "
        "sentence in a --config YAML (the description embedding itself, no phrases)"
    ]
    assert not out.exists() or not any(out.iterdir())
    config = _tiny_config(tmp_path, "model:\n  semantic_source: sentence\n")
    report = _run([*data, "--split-id", "1", "--config", str(config), "--out", str(tmp_path / "run")])
    assert "zsl" in report["test"]


def test_caption_json_without_val_trains_msa_and_selects_on_held_out_training_captions(shipped, tmp_path):
    """RSITMD-like: a flat folder of images, a Karpathy JSON with train and test only."""
    images = tmp_path / "rsitmd" / "images"
    images.mkdir(parents=True)
    entries = []
    for k, path in enumerate(sorted((shipped["root"] / "Images").glob("*/*"))[:30]):
        name = f"{path.parent.name}_{k}.tif"
        Image.open(path).save(images / name)
        entries.append(
            {"filename": name, "split": "test" if k % 5 == 0 else "train",
             "sentences": [{"raw": f"a tile of {path.parent.name.replace('_', ' ')}"}, {"raw": f"scene {k}"}]}
        )  # fmt: skip
    captions = tmp_path / "rsitmd" / "dataset_rsitmd.json"
    captions.write_text(json.dumps({"dataset": "rsitmd", "images": entries}))
    report = _run(
        ["msa", "--data", str(tmp_path / "rsitmd"), "--captions", str(captions),
         "--config", str(_tiny_config(tmp_path)), "--out", str(tmp_path / "run"), "--device", "cpu"]
    )  # fmt: skip
    assert report["data"]["layout"] == "captions" and report["data"]["split_sha256"] == _sha(captions)
    assert report["selection"].startswith("retrieval mR on held-out training captions (2 of 24")
    assert "retrieval" in report["test"] and "zsl" not in report["test"]
    # --protocol paper: the refit trains on every training image, the held-out ones included; a caption
    # set holds out no classes and has no lambda to choose, and its report says neither
    paper, printed = _run_printed(
        ["msa", "--data", str(tmp_path / "rsitmd"), "--captions", str(captions), "--protocol", "paper",
         "--config", str(_tiny_config(tmp_path)), "--out", str(tmp_path / "paper"), "--device", "cpu"]
    )  # fmt: skip
    assert paper["selection"] == (
        "retrieval mR on held-out training captions (2 of 24 training images; the file has no val) of the "
        "selection run (selection/: 1 epoch), then a refit on the 24 training and validation images with "
        "their captions for the chosen 1 epoch (no lambda: validation had no GZSL)"
    )
    assert paper["seen_calibration"] == 0.0 and paper["val_classes"] == []
    assert printed == (
        f"run written to {tmp_path / 'paper'} (--protocol paper, {paper['seconds']} s); test, scored once: "
        f"retrieval mR {paper['test']['retrieval']['mR']:.1f}"
    )
    assert paper["calibration"] == "none (lambda 0): validation has no GZSL (no val classes)"


def test_class_lists_and_random_splits(shipped, tmp_path):
    names = shipped["names"]
    lists = tmp_path / "split"
    lists.mkdir()
    (lists / "seen.txt").write_text("".join(n.replace("_", " ") + "\n" for n in names[:6]))
    (lists / "unseen.txt").write_text("".join(n + "\n" for n in names[6:]))
    options = DataOptions(split_file=str(lists))
    data, layout = load_dataset(shipped["root"], options)
    [(split, source)] = resolve_splits(shipped["root"], data, layout, options)
    assert (split.seen, split.unseen) == (names[:6], names[6:])
    assert source.split_source == "class lists" and len(split.val) == 1
    options = DataOptions(unseen=3, seed=4)
    [(first, source)] = resolve_splits(shipped["root"], data, layout, options)
    [(again, _)] = resolve_splits(shipped["root"], data, layout, options)
    assert first == again and len(first.unseen) == 3 and source.split_source == "random"
    [(other, _)] = resolve_splits(shipped["root"], data, layout, DataOptions(unseen=3, seed=5))
    assert other.unseen != first.unseen


def test_folder_names_become_the_descriptions_as_words(shipped, tmp_path):
    """UCM's "mobilehomepark", AID's "StorageTanks": without --classes a class's text is its folder
    name as words (MiniLM reads "mobilehomepark" as word pieces); a class file's descriptions win."""
    images = sorted((shipped["root"] / "Images").glob("*/*"))
    for folder, image in zip(["mobilehomepark", "StorageTanks", "golf_course"], images):
        (tmp_path / "data" / folder).mkdir(parents=True)
        shutil.copy(image, tmp_path / "data" / folder / image.name)
    data, _ = load_dataset(tmp_path / "data", DataOptions())
    assert data.descriptions == {
        "StorageTanks": "storage tanks",
        "golf_course": "golf course",
        "mobilehomepark": "mobile home park",
    }
    (tmp_path / "classes.txt").write_text("mobile home park: rows of trailers\n")
    data, _ = load_dataset(tmp_path / "data", DataOptions(classes=str(tmp_path / "classes.txt")))
    assert data.descriptions["mobilehomepark"] == "rows of trailers"


def test_paper_protocol_refits_on_every_seen_class(tiny_benchmark, default_split, tmp_path):
    from rsz_train.train import train

    from .conftest import TINY_OVERRIDES

    out = train("dsva", tiny_benchmark, default_split, tmp_path / "r", device="cpu",
                overrides=TINY_OVERRIDES, protocol="paper")  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    selection = json.loads((out / "selection" / "report.json").read_text())
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert report["protocol"] == "paper" and report["best_epoch"] == selection["best_epoch"]
    folder = tiny_benchmark / "splits" / default_split
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.glob("*.txt")))).hexdigest()
    assert (report["data"]["split_source"], report["data"]["split_sha256"]) == ("rsz split", digest)
    assert (
        len(lines) == selection["best_epoch"] and report["seen_calibration"] == selection["seen_calibration"]
    )
    assert report["test"]["gzsl"]["seen_calibration"] == selection["seen_calibration"]
    classes = json.loads((out / "classes.json").read_text())
    chosen = json.loads((out / "selection" / "classes.json").read_text())
    assert set(classes["seen"]) == set(chosen["seen"]) | set(chosen["val"]) and classes["val"] == []
    # the report names the selection run's val classes; GZSL at test ranks among every seen class
    assert report["val_classes"] == chosen["val"] and report["calibration"].startswith(
        f"calibrated-stacking lambda with the best GZSL H on validation: val_seen images of the "
        f"{len(chosen['seen'])} training classes"
    )
    assert report["label_space"]["gzsl"] == (
        f"all {len(classes['seen'])} seen classes + the {len(classes['unseen'])} unseen classes"
    )
    # interrupted in the selection run and resumed: the same refit weights and test figures
    again = tmp_path / "again"
    train("dsva", tiny_benchmark, default_split, again, device="cpu", overrides=TINY_OVERRIDES,
          protocol="paper", stop_after_epoch=1)  # fmt: skip
    assert not (again / "report.json").exists() and (again / "selection" / "last.pt").is_file()
    train("dsva", tiny_benchmark, default_split, again, device="cpu", resume=True, protocol="paper")
    resumed = json.loads((again / "report.json").read_text())
    assert resumed["test"] == report["test"] and resumed["best_epoch"] == report["best_epoch"]
    weights = [load_file(str(run / "model.safetensors")) for run in (out, again)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    # trained on to more epochs: the selection (over 2 epochs) would be kept while the report said 3 were
    # tried; refused before anything is rewritten
    before = (again / "report.json").read_bytes()
    with pytest.raises(RszError) as err:
        train(
            "dsva",
            tiny_benchmark,
            default_split,
            again,
            device="cpu",
            resume=True,
            protocol="paper",
            epochs=3,
        )
    assert str(err.value) == (
        f"--resume --epochs 3: {again} is a --protocol paper run whose selection run (selection/) finished "
        f"at 2 epochs and chose epoch {report['best_epoch']} on validation, which is not chosen again: "
        "resume it with --epochs 2, or start a new run with --epochs 3"
    )
    assert (again / "report.json").read_bytes() == before


@pytest.mark.parametrize(
    ("kind", "content", "message"),
    [
        (
            "seen",
            "0\n1\nx7\n",
            r"seen_class_loc_6_1.txt:3: expected a 0-based image index in 0\.\.39, got 'x7'",
        ),
        ("seen", "0\n400\n", r"seen_class_loc_6_1.txt:2: expected a 0-based image index"),
        ("unseen", "", r"unseen_class_loc_6_1.txt: no image indices"),
    ],
)
def test_malformed_mcfa_files_are_one_line_errors(shipped, tmp_path, kind, content, message):
    folder = _mcfa_folder(tmp_path / "zsl", shipped["root"], ids=(1,))
    (folder / f"{kind}_class_loc_6_1.txt").write_text(content)
    options = DataOptions(split_file=str(folder))
    data, layout = load_dataset(shipped["root"], options)
    with pytest.raises(RszError, match=message):
        resolve_splits(shipped["root"], data, layout, options)


@pytest.mark.parametrize("split_id", [None, "1", "all"])
def test_mcfa_files_without_a_ratio_are_a_one_line_error(shipped, tmp_path, split_id):
    """seen_class_loc_1.txt (no <ratio>_) passes the folder's glob but not the name pattern: the folder and
    the expected names, not an IndexError or "no split id '1' (ids: )"."""
    folder = _mcfa_folder(tmp_path / "zsl", shipped["root"], ids=(1,))
    for path in folder.glob("*_class_loc_6_1.txt"):
        path.rename(path.with_name(path.name.replace("_6_1", "_1")))
    args = ["mcfa", "--data", str(shipped["root"]), "--split-file", str(folder), "--attributes",
            str(shipped["attributes"]), "--out", str(tmp_path / "run"), "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(main, [*args, *(["--split-id", split_id] if split_id else [])])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert (
        f"{folder}: no MCFA split files" in result.output
        and "seen_class_loc_<ratio>_<id>.txt" in result.output
    )
    assert not (tmp_path / "run").exists()


def test_split_file_naming_one_mcfa_file_takes_that_split_of_its_folder(shipped, tmp_path):
    """--split-file .../seen_class_loc_6_2.txt (a file of the split, not its folder) said "split file not
    found" of a file that is there; any other file there said so too."""
    good = _mcfa_folder(tmp_path / "gzsl", shipped["root"], ids=(1, 2))
    [(split, source)] = _splits(shipped, split_file=str(good / "seen_class_loc_6_2.txt"), split_id=None)
    [(folder_split, _)] = _splits(shipped, split_file=str(good), split_id="2")
    assert split == folder_split and (source.split_id, source.split_file) == ("2", str(good))
    (tmp_path / "classes.csv").write_text("airport\n")
    for extra, message in [
        (["--split-file", str(good / "unseen_class_loc_6_2.txt"), "--split-id", "1"],
         f"{good / 'unseen_class_loc_6_2.txt'}: a file of split 2, not of --split-id 1: pass its folder, "
         f"--split-file {good}"),
        (["--split-file", str(tmp_path / "classes.csv")],
         f"{tmp_path / 'classes.csv'}: not a split file (a .mat, an MCFA split folder, or "
         "seen.txt/unseen.txt)"),
    ]:  # fmt: skip
        result = CliRunner().invoke(
            main, ["dsva", "--data", str(shipped["root"]), "--out", str(tmp_path / "o"), *extra]
        )
        assert result.exit_code == 2 and result.output.strip().splitlines() == [f"error: {message}"]


def test_malformed_split_files_from_the_cli(shipped, tmp_path):
    folder = _mcfa_folder(tmp_path / "zsl", shipped["root"], ids=(1, 2))
    (folder / "unseen_class_loc_6_2.txt").unlink()
    good = _mcfa_folder(tmp_path / "gzsl", shipped["root"], ids=(1, 2))
    mat = tmp_path / "bad.mat"
    savemat(str(mat), {"att": np.zeros((2, 2)), "allclasses_names": np.array([["a"], ["b"]], dtype=object)})
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "seen.txt").write_text("no_such_class\n")
    (tmp_path / "lists" / "unseen.txt").write_text(shipped["names"][0] + "\n")
    cases = [
        (
            ["--split-file", str(folder), "--split-id", "all"],
            rf"{folder}: split id '2' has no unseen_class_loc_\*_2.txt",
        ),
        (["--split-file", str(good), "--split-id", "9"], rf"{good}: no split id '9' \(ids: 1, 2\)"),
        (["--split-file", str(good)], rf"{good}: 2 splits \(1, 2\); choose one with --split-id N or all"),
        (["--split-file", str(mat)], r"bad.mat: missing key 'test_unseen_loc'"),
        (["--split-file", str(tmp_path / "lists")], r"seen.txt: unknown class 'no_such_class'"),
        ([], r"a class-folder data set needs a class split"),
        (["--unseen", "99"], r"--unseen 99: must be in 1\.\.6"),
    ]
    for extra, message in cases:
        result = CliRunner().invoke(
            main, ["dsva", "--data", str(shipped["root"]), "--out", str(tmp_path / "o"), *extra]
        )
        assert result.exit_code != 0
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), result.output
        assert re.search(message, lines[0]), (message, lines[0])
    # Split 1 is whole: the file missing from split 2 does not stop it.
    options = DataOptions(split_file=str(folder), split_id="1")
    data, layout = load_dataset(shipped["root"], options)
    [(split, source)] = resolve_splits(shipped["root"], data, layout, options)
    assert source.split_id == "1" and split.test_unseen
