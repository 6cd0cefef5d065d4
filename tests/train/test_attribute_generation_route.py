"""DSVA trained on image-generated attribute vectors (train.semantics: images) under a real tiny MSA run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from rsz_train.cli import main

TINY_TRAIN = {"image_size": 32, "epochs": 1, "batch_size": 32, "warmup_epochs": 1}


@pytest.fixture(scope="module")
def msa_run(tiny_msa_run: Path) -> Path:
    """The session's tiny real MSA run (tests/conftest.py), read only: the dual encoder of these tests."""
    return tiny_msa_run


def _train_dsva(bench: Path, split: str, out: Path, train_settings: dict) -> tuple[int, str]:
    """rsz-train dsva --config cfg.yaml, as a user runs it; -> (exit code, output)."""
    config = out.parent / f"{out.name}.yaml"
    config.write_text(yaml.safe_dump({"train": {**TINY_TRAIN, **train_settings}}), encoding="utf-8")
    args = ["dsva", "--data", str(bench), "--split", split, "--out", str(out), "--config", str(config)]
    result = CliRunner().invoke(main, [*args, "--device", "cpu"])
    return result.exit_code, result.output


def test_dsva_trains_on_image_generated_attributes(
    tiny_benchmark: Path, default_split: str, msa_run: Path, tmp_path: Path
) -> None:
    from rsz_train.attribute_generation import attributes_from_images, attributes_from_text, model_encoders
    from rsz_train.data.batches import load_images
    from rsz_train.data.formats import load_benchmark, load_split
    from rsz_train.runs import load_run

    code, output = _train_dsva(
        tiny_benchmark,
        default_split,
        tmp_path / "dsva",
        {"semantics": "images", "dual_encoder_run": str(msa_run)},
    )
    assert code == 0, output
    record = json.loads((tmp_path / "dsva" / "classes.json").read_text(encoding="utf-8"))
    assert record["semantics_source"] == "images"
    names = record["class_names"]
    saved = np.asarray(record["attributes"], dtype=np.float32)
    train_classes = record["seen"]
    held_out = [*record["val"], *record["unseen"]]
    assert train_classes and record["val"] and record["unseen"]
    routes = record["attribute_routes"]
    assert {routes[c] for c in train_classes} == {"images"} and {routes[c] for c in held_out} == {"text"}

    # Expected image rows, recomputed here: the training images of the training classes only.
    data, split = load_benchmark(tiny_benchmark), load_split(tiny_benchmark, default_split)
    model, info = load_run(msa_run)
    label_of = dict(zip(data.image_paths, np.asarray(data.labels).tolist()))
    train_ids = [names.index(c) for c in train_classes]
    paths = [p for p in split.train if label_of[p] in train_ids]
    local = np.array([train_ids.index(label_of[p]) for p in paths])
    raw = attributes_from_images(
        load_images(data.root, paths, info.preprocess.size),
        local,
        len(train_ids),
        data.attribute_phrases,
        *model_encoders(model, info.preprocess),
    )
    # DSVA's default phrase ridge decorrelates the dual encoder's phrases first (rsz_infer.semantics).
    ridge = record["phrase_ridge"]
    assert ridge > 0
    phrase_emb = model_encoders(model, info.preprocess)[1](list(data.attribute_phrases))
    gram = phrase_emb @ phrase_emb.T / np.outer(*[np.linalg.norm(phrase_emb, axis=1)] * 2)
    decorrelated = raw @ np.linalg.inv(gram + ridge * np.eye(len(gram)))
    centred = decorrelated - decorrelated.mean(axis=1, keepdims=True)
    expected = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    np.testing.assert_allclose(saved[train_ids], expected, atol=1e-5)

    text = attributes_from_text([data.descriptions[n] for n in names], data.attribute_phrases, ridge)
    held_ids = [names.index(c) for c in held_out]
    np.testing.assert_allclose(saved[held_ids], text[held_ids], atol=1e-5)
    assert np.abs(saved[train_ids] - text[train_ids]).max(axis=1).min() > 1e-2  # every image row differs
    # Both routes on one scale: every row centred over its attributes and of unit length.
    np.testing.assert_allclose(saved.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(saved, axis=1), 1.0, atol=1e-5)


def _one_line_error(code: int, output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), output
    return lines[0]


def test_bad_dual_encoder_run_is_a_one_line_error(
    tiny_benchmark: Path, default_split: str, msa_run: Path, tiny_run: Path, tmp_path: Path
) -> None:
    def error(settings: dict, name: str) -> str:
        return _one_line_error(*_train_dsva(tiny_benchmark, default_split, tmp_path / name, settings))

    assert "dual_encoder_run" in error({"semantics": "images"}, "unset")
    missing = tmp_path / "no_such_run"
    assert "run folder not found" in error(
        {"semantics": "images", "dual_encoder_run": str(missing)}, "missing"
    )
    assert "is a dsva run" in error({"semantics": "images", "dual_encoder_run": str(tiny_run)}, "dsva")
    assert "only used" in error({"dual_encoder_run": str(msa_run)}, "text")

    # A dual encoder that trained on a held-out class of this split would leak it into training.
    leaky = tmp_path / "leaky_msa"
    shutil.copytree(msa_run, leaky)
    record = json.loads((leaky / "classes.json").read_text(encoding="utf-8"))
    record["seen"].append(record["unseen"][0])
    (leaky / "classes.json").write_text(json.dumps(record), encoding="utf-8")
    message = error({"semantics": "images", "dual_encoder_run": str(leaky)}, "leaky")
    assert "val or unseen class" in message and record["unseen"][0] in message


def test_an_unreadable_training_image_leaves_the_images_route_running(
    tiny_benchmark: Path, default_split: str, msa_run: Path, tmp_path: Path
) -> None:
    from rsz_train.data.formats import load_benchmark, load_split

    bench = tmp_path / "bench"
    shutil.copytree(tiny_benchmark, bench)
    data, split = load_benchmark(bench), load_split(bench, default_split)
    train_class = sorted(set(split.seen) - set(split.val))[0]
    label_of = dict(zip(data.image_paths, np.asarray(data.labels).tolist()))
    corrupt = next(p for p in split.train if data.class_names[label_of[p]] == train_class)
    (data.root / corrupt).write_bytes(b"")  # a 0-byte download among the dual encoder's images

    settings = {"semantics": "images", "dual_encoder_run": str(msa_run)}
    code, output = _train_dsva(bench, default_split, tmp_path / "dsva", settings)
    assert code == 0, output
    assert "note: 1 unreadable image(s) left out" in output
    record = json.loads((tmp_path / "dsva" / "classes.json").read_text(encoding="utf-8"))
    assert record["attribute_routes"][train_class] == "images"  # its other images still make its row
    report = json.loads((tmp_path / "dsva" / "report.json").read_text(encoding="utf-8"))
    assert [str(Path(p)) for p in report["unreadable_images"]] == [str(Path(corrupt))]
