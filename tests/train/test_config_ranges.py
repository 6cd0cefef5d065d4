"""Out-of-range config values: one error line naming the file, the key and the value (before any work)."""

from __future__ import annotations

import dataclasses
import re

import pytest
from click.testing import CliRunner

from rsz_infer.errors import RszError
from rsz_train.cli import main
from rsz_train.config import TrainConfig, load_config, model_config_class

# (kind, YAML line, the error after "<file>: ")
OUT_OF_RANGE = [
    ("dsva", "train: {image_size: 0}", "train.image_size 0: must be at least 1"),
    ("dsva", "train: {lr: -1}", "train.lr -1.0: must be above 0"),
    ("dsva", "train: {batch_size: 0}", "train.batch_size 0: must be at least 1"),
    ("dsva", "train: {epochs: 0}", "train.epochs 0: must be at least 1"),
    ("dsva", "train: {weight_decay: -0.1}", "train.weight_decay -0.1: must be at least 0"),
    ("dsva", "train: {seed: -1}", "train.seed -1: must be at least 0"),
    ("dsva", "train: {lr: .nan}", "train.lr nan: must be a finite number"),
    ("dsva", "train: {grad_clip: .inf}", "train.grad_clip inf: must be a finite number"),
    ("dsva", "model: {dropout: 1.5}", "model.dropout 1.5: must be between 0 and 1"),
    ("dsva", "model: {logit_scale: 0}", "model.logit_scale 0.0: must be above 0"),
    ("mcfa", "model: {temperature: 0}", "model.temperature 0.0: must be above 0"),
    ("mcfa", "model: {input_dropout: -0.1}", "model.input_dropout -0.1: must be between 0 and 1"),
    ("mcfa", "model: {classifier_batch_size: 0}", "model.classifier_batch_size 0: must be at least 1"),
    ("msa", "model: {text_trainable_layers: -2}", "model.text_trainable_layers -2: must be at least -1"),
    ("msa", "model: {embed_dim: 0}", "model.embed_dim 0: must be at least 1"),
]


@pytest.mark.parametrize(("kind", "yaml_text", "message"), OUT_OF_RANGE)
def test_an_out_of_range_value_names_the_file_the_key_and_the_value(tmp_path, kind, yaml_text, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text + "\n")
    with pytest.raises(RszError, match=f"^{re.escape(f'{path}: {message}')}$"):
        load_config(kind, path)


def test_the_edges_of_each_range_are_allowed(tmp_path):
    # 0 is "off" or "auto" for these, 1 a certain dropout / mix, -1 "every text layer"
    path = tmp_path / "c.yaml"
    path.write_text(
        "train: {epochs: 1, grad_clip: 0, weight_decay: 0, warmup_epochs: 0, seed: 0, classes_per_batch: 0}\n"
        "model: {patch_size: 0, dropout: 1, attribute_mix: 0, concentration_weight: 0}\n"
    )
    config = load_config("dsva", path)
    assert (config.train.epochs, config.train.grad_clip, config.model.dropout) == (1, 0.0, 1.0)
    path.write_text("model: {text_trainable_layers: -1, margin: 0}\n")
    assert load_config("msa", path).model.text_trainable_layers == -1


def test_overrides_are_checked_by_the_same_ranges():
    with pytest.raises(RszError, match=r"^override train\.batch_size 0: must be at least 1$"):
        load_config("dsva", None, {"train.batch_size": 0})


@pytest.mark.parametrize("kind", ["dsva", "mcfa", "msa"])
def test_every_numeric_setting_has_a_range(kind):
    # a new number without one would again reach torch or PIL unchecked
    for cls in (TrainConfig, model_config_class(kind)):
        numbers = [f.name for f in dataclasses.fields(cls) if type(getattr(cls(), f.name)) in (int, float)]
        assert numbers and [n for n in numbers if n not in cls.ranges] == [], cls.__name__


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [(line, message) for kind, line, message in OUT_OF_RANGE[:4]],  # the four of the bug report
)
def test_rsz_train_refuses_them_in_one_line_and_writes_no_run(tiny_benchmark, tmp_path, yaml_text, message):
    path, out = tmp_path / "c.yaml", tmp_path / "run"
    path.write_text(yaml_text + "\n")
    args = ["dsva", "--data", str(tiny_benchmark), "--config", str(path), "--out", str(out)]
    args += ["--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert (result.exit_code, result.output) == (2, f"error: {path}: {message}\n")
    assert not out.exists()


def test_the_epochs_flag_has_the_yaml_epochs_rule(tiny_benchmark, tmp_path):
    out = tmp_path / "run"
    args = ["dsva", "--data", str(tiny_benchmark), "--out", str(out), "--device", "cpu", "--epochs", "0"]
    result = CliRunner().invoke(main, args)
    assert (result.exit_code, result.output) == (2, "error: --epochs 0: must be at least 1\n")
    assert not out.exists()


def test_exponent_floats_read_as_numbers(tmp_path):
    """`lr: 1e-4` is a float to YAML 1.2 and to the reader, a string to PyYAML's YAML 1.1: it was refused
    with "expected float, got '1e-4'"; the ranges still apply, and an int setting takes no exponent."""
    path = tmp_path / "c.yaml"
    path.write_text("train: {lr: 1e-4, weight_decay: 5E-2}\nmodel: {logit_scale: 2.5e+1}\n")
    config = load_config("dsva", path)
    assert (config.train.lr, config.train.weight_decay, config.model.logit_scale) == (1e-4, 0.05, 25.0)
    path.write_text("train: {lr: -1e-4}\n")
    with pytest.raises(RszError, match="train.lr -0.0001: must be above 0"):
        load_config("dsva", path)
    path.write_text("train: {epochs: 1e2}\n")
    with pytest.raises(RszError, match="train.epochs: expected int, got '1e2'"):
        load_config("dsva", path)


@pytest.mark.parametrize(
    ("kind", "yaml_text", "message"),
    [
        ("dsva", "train: {epochs: null}", "train.epochs: expected int, got null (no value)"),
        ("dsva", "train:\n  lr:\n", "train.lr: expected float, got null (no value)"),
        ("dsva", "train: {augment: null}", "train.augment: expected true or false, got null (no value)"),
        ("dsva", "model: {backbone: null}", "model.backbone: expected str, got null (no value)"),
    ],
)
def test_null_for_a_required_setting_names_it(tmp_path, kind, yaml_text, message):
    """`epochs: null` (or `lr:` with no value) passed the type check and failed later with a TypeError
    traceback (augment: null trained as false)."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text + "\n")
    with pytest.raises(RszError, match=f"^{re.escape(f'{path}: {message}')}$"):
        load_config(kind, path)


def test_null_is_still_taken_by_optional_settings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {pretrained: null}\ntrain: {gsd: null, dual_encoder_run: null}\n")
    config = load_config("mcfa", path)
    assert (config.model.pretrained, config.train.gsd, config.train.dual_encoder_run) == (None, None, None)


@pytest.mark.parametrize(
    "yaml_text",
    ["train: {epochs: 3}\nmodel: {dropout: 0.2}\ntrain: {lr: 0.01}\n", "train:\n  lr: 0.01\n  lr: 0.02\n"],
)
def test_a_key_given_twice_is_refused_naming_it(tmp_path, yaml_text):
    """PyYAML keeps the last of two equal keys: a second `train:` section dropped the first's epochs
    without a word."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(RszError, match=rf"^{re.escape(str(path))}: not valid YAML \(.*given twice"):
        load_config("dsva", path)
