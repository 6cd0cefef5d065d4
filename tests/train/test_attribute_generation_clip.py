"""DSVA's attribute generation under CLIP (train.semantics: images, the paper's route): a real open_clip model
with random weights, as a checkpoint on disk and as the bundle rsz-export clip makes of it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from rsz_infer.preprocess import to_model_input
from rsz_infer.prompts import DEFAULT_TEMPLATES
from rsz_infer.scoring import l2_normalize

from ..clip_checkpoints.helpers import random_open_clip


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("clip_dual")
    open_clip, net = random_open_clip(folder, "rsz-tiny-vit")
    checkpoint = folder / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(checkpoint))
    from rsz_export.clip import export_clip

    bundle, _ = export_clip(checkpoint, folder / "bundle", engine="none")
    return {"open_clip": open_clip, "net": net, "checkpoint": checkpoint, "bundle": bundle}


def _images(tiny_benchmark: Path, n: int = 12) -> np.ndarray:
    from rsz_train.data.batches import load_images
    from rsz_train.data.formats import load_benchmark

    data = load_benchmark(tiny_benchmark)
    return load_images(data.root, list(data.image_paths[:n]), 32), data


def test_clip_dual_encoders_match_open_clip(clip_files, tiny_benchmark):
    from rsz_infer.bundle import load_manifest
    from rsz_train.attribute_generation import attributes_from_images, dual_encoder

    images, data = _images(tiny_benchmark)
    spec = load_manifest(clip_files["bundle"]).preprocess
    phrases = list(data.attribute_phrases[:6])
    open_clip, net = clip_files["open_clip"], clip_files["net"]
    with torch.no_grad():  # the paper's rule with CLIP, eagerly: image . mean over templates of the phrase
        prompts = [t.replace("{}", p) for p in phrases for t in DEFAULT_TEMPLATES]
        text = l2_normalize(net.encode_text(open_clip.tokenize(prompts)).numpy())
        phrase_emb = l2_normalize(text.reshape(len(phrases), len(DEFAULT_TEMPLATES), -1).mean(1))
        x = torch.from_numpy(np.stack([to_model_input(i, spec) for i in images]))
        image_emb = l2_normalize(net.encode_image(x).numpy())
    labels = np.arange(len(images)) % 3
    expected = np.stack([(image_emb @ phrase_emb.T)[labels == c].mean(0) for c in range(3)])
    for source in ("checkpoint", "bundle"):
        encoder = dual_encoder(clip_files[source])
        assert encoder.seen == [] and encoder.preprocess.size == 32
        got = attributes_from_images(images, labels, 3, phrases, encoder.encode_images, encoder.encode_texts)
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=source)


def test_dsva_trains_on_attributes_generated_under_a_clip_bundle(
    clip_files, tiny_benchmark, default_split, tmp_path
):
    from rsz_train.attribute_generation import dual_encoder, generated_attributes
    from rsz_train.cli import main
    from rsz_train.data.batches import load_images
    from rsz_train.data.formats import load_benchmark, load_split

    settings = {"image_size": 32, "epochs": 1, "batch_size": 32, "warmup_epochs": 1, "semantics": "images"}
    settings["dual_encoder_run"] = str(clip_files["bundle"])
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"train": settings}), encoding="utf-8")
    out = tmp_path / "dsva"
    args = ["dsva", "--data", str(tiny_benchmark), "--split", default_split, "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--config", str(config), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "classes.json").read_text(encoding="utf-8"))
    routes, names = record["attribute_routes"], record["class_names"]
    assert {routes[c] for c in record["seen"]} == {"images"}
    assert {routes[c] for c in record["val"] + record["unseen"]} == {"text"}

    data, split = load_benchmark(tiny_benchmark), load_split(tiny_benchmark, default_split)
    label_of = dict(zip(data.image_paths, np.asarray(data.labels).tolist()))
    train_ids = {names.index(c) for c in record["seen"]}
    paths = [p for p in split.train if label_of[p] in train_ids]
    encoder = dual_encoder(clip_files["bundle"])
    expected, _ = generated_attributes(
        [data.descriptions[n] for n in names], list(data.attribute_phrases),
        load_images(data.root, paths, 32), np.array([label_of[p] for p in paths]),
        encoder.encode_images, encoder.encode_texts, phrase_ridge=record["phrase_ridge"],
    )  # fmt: skip
    saved = np.asarray(record["attributes"], dtype=np.float32)
    ids = sorted(train_ids)
    np.testing.assert_allclose(saved[ids], expected[ids], atol=1e-5)
