"""Splits of unusual shape from the rsz-train CLI: an MCFA ZSL folder (no test_seen list) still gets its
ZSL test score; msa without captions and a NaN attribute matrix are one-line errors before any run folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy.io import savemat

from rsz_train.cli import main
from rsz_train.data.formats import load_scene_folders

NAMES = ("airplane", "beach", "forest", "harbor", "river", "storage_tank")
TINY_YAML = (
    "train:\n  image_size: 32\n  epochs: 1\n  batch_size: 8\n  eval_batch_size: 32\n  warmup_epochs: 1\n"
)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> dict:
    """6 class folders x 5 PNGs, an attributes file and a tiny config."""
    base = tmp_path_factory.mktemp("plain")
    root = base / "scenes"
    rng = np.random.default_rng(0)
    for c, name in enumerate(NAMES):
        (root / name).mkdir(parents=True)
        for i in range(5):
            tile = rng.integers(0, 60, (32, 32, 3)) + 30 * c
            Image.fromarray(tile.astype(np.uint8)).save(root / name / f"{name}_{i:04d}.png")
    attributes = base / "attributes.txt"
    attributes.write_text(
        "water\tcolour\tdark blue water\ntrees\tcolour\tgreen tree canopy\nroofs\tshape\tgrey roofs\n"
    )
    config = base / "tiny.yaml"
    config.write_text(TINY_YAML)
    return {"root": root, "attributes": attributes, "config": config}


def _cli(args: list[str]):
    return CliRunner().invoke(main, args)


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_mcfa_zsl_folder_without_test_seen_still_scores_zsl(plain, tmp_path):
    data = load_scene_folders(plain["root"])
    unseen = {"airplane", "storage_tank"}
    folder = tmp_path / "zsl_4_2split"
    folder.mkdir()
    rows = {"seen": [], "unseen": []}
    for i, label in enumerate(data.labels):
        rows["unseen" if data.class_names[label] in unseen else "seen"].append(i)
    for kind, values in rows.items():  # MCFA's ZSL folders have no test_seen_class_loc_*.txt
        (folder / f"{kind}_class_loc_0.33_1.txt").write_text("".join(f"{v}\n" for v in values))
    out, config = tmp_path / "run", tmp_path / "tiny.yaml"
    config.write_text(TINY_YAML + "model:\n  hubness_penalty: 2.0\n")  # 3 trained classes, 3 neighbours
    result = _cli(
        ["dsva", "--data", str(plain["root"]), "--split-file", str(folder), "--attributes",
         str(plain["attributes"]), "--config", str(config), "--out", str(out), "--device", "cpu"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "no test images" not in result.output and "ZSL unseen accuracy" in result.output
    assert "no GZSL (no test_seen images" in result.output
    test = json.loads((out / "report.json").read_text())["test"]
    assert 0.0 <= test["zsl"] <= 1.0 and "gzsl" not in test
    assert test["gzsl_absent"].startswith("no test_seen images: GZSL")

    # the ZSL figure is the model's own scoring, its hubness correction included
    from rsz_infer.metrics import per_class_accuracy
    from rsz_train import evaluate as ev
    from rsz_train.data.batches import load_images
    from rsz_train.runs import load_run

    model, info = load_run(out, kind="dsva")
    index = {name: i for i, name in enumerate(info.class_names)}
    unseen_ids = [index[c] for c in info.unseen]
    paths = [p for p, label in zip(data.image_paths, data.labels) if data.class_names[label] in unseen]
    truth = np.array([info.unseen.index(p.split("/")[0]) for p in paths])
    emb = ev.embed_images(model, load_images(data.root, paths, info.preprocess.size), info.preprocess)
    class_emb = ev.embed_classes(model, info.semantics)
    correction = ev.hubness_correction(model, class_emb, [index[c] for c in info.seen])
    logits = ev.class_logits(emb, class_emb[unseen_ids], "cosine", 1.0, correction[unseen_ids])
    assert per_class_accuracy(logits.argmax(axis=1), truth) == pytest.approx(test["zsl"], abs=1e-9)
    raw = ev.class_logits(emb, class_emb[unseen_ids], "cosine", 1.0)
    assert per_class_accuracy(raw.argmax(axis=1), truth) != pytest.approx(test["zsl"], abs=1e-9)


def test_msa_without_captions_says_it_needs_captions(plain, tmp_path):
    out = tmp_path / "run"
    result = _cli(
        ["msa", "--data", str(plain["root"]), "--unseen", "2", "--out", str(out), "--device", "cpu"]
    )
    line = _one_line_error(result)
    assert "msa trains on captions: pass --captions FILE (a Karpathy JSON)" in line, line
    assert "fewer than 2" not in line and not out.exists()


def test_nan_att_is_a_one_line_error_before_training(plain, tmp_path):
    """It used to train and fail with 'the loss is nan (lower train.lr?)', leaving a half-written run."""
    data = load_scene_folders(plain["root"])
    att = np.ones((3, len(NAMES)))
    att[1, 2] = np.nan
    positions = np.arange(1, len(data.image_paths) + 1)
    harbor = [i + 1 for i, p in enumerate(data.image_paths) if p.startswith(("harbor/", "river/"))]
    seen = [int(i) for i in positions if i not in harbor]
    mat = tmp_path / "ann_attr_finetune_4_splits.mat"
    savemat(
        str(mat),
        {
            "att": att,
            "allclasses_names": np.array([[n] for n in NAMES], dtype=object),
            "train_gzsl_loc": np.array([i for i in seen if i % 5 != 1])[:, None],
            "test_seen_loc": np.array([i for i in seen if i % 5 == 1])[:, None],
            "test_unseen_loc": np.array(harbor)[:, None],
        },
    )
    config = tmp_path / "matrix.yaml"
    config.write_text(TINY_YAML + "  semantics: matrix\n")
    out = tmp_path / "run"
    result = _cli(
        ["dsva", "--data", str(plain["root"]), "--split-file", str(mat), "--config", str(config),
         "--out", str(out), "--device", "cpu"]
    )  # fmt: skip
    line = _one_line_error(result)
    assert "ann_attr_finetune_4_splits.mat: att: value nan at row 2, column 3 is not a finite number" in line
    assert not Path(out).exists()
