"""Option values click checks while it parses (callbacks, ranges) are one error line and exit 2 like every
other bad input: no traceback, and nothing is written (no output, no .part, no index folder)."""

from __future__ import annotations

import pytest

from .helpers import save, solid
from .test_hostile_bundles_and_indexes import error_lines
from .test_label import run_cli


@pytest.fixture()
def tiles(tmp_path):
    save(tmp_path / "tiles" / "red.png", solid("red", 24))
    return tmp_path / "tiles"


BAD_CALLBACK_VALUES = [
    ("--shard", "x", "error: --shard x: expected I/N"),
    ("--shard", "2/2", "error: --shard 2/2: I must be at least 0 and smaller than N"),
    ("--shard", "1/0", "error: --shard 1/0: I must be at least 0 and smaller than N"),
    ("--device", "gpu7", "error: --device gpu7: expected one of"),
    ("--device", "tpu", "error: --device tpu: expected one of"),
    ("--device", "cuda:x", "error: --device cuda:x: expected one of"),
]


def _commands(tiles, bundle, class_file, tmp_path) -> dict[str, list]:
    return {
        "label": [
            "label",
            tiles,
            "--classes",
            class_file,
            "--model",
            bundle,
            "--out",
            tmp_path / "l.csv",
            "--quiet",
        ],
        "index": ["index", tiles, "--model", bundle, "--out", tmp_path / "idx", "--quiet"],
        "search": ["search", tmp_path / "idx", "--text", "red"],
    }


@pytest.mark.parametrize("option, value, expected", BAD_CALLBACK_VALUES)
def test_bad_callback_values_are_one_line(
    option, value, expected, tiles, bundles, class_file, tmp_path, capsys
):
    for name, command in _commands(tiles, bundles["msa"], class_file, tmp_path).items():
        if option == "--shard" and name == "search":
            continue  # search takes no --shard
        code, _, err = run_cli([*command, option, value], capsys)
        assert code == 2 and error_lines(err) == [err.strip()] and err.startswith(expected), (name, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiles"]  # nothing written


def test_negative_workers_is_a_usage_error(tiles, bundles, class_file, tmp_path, capsys):
    commands = _commands(tiles, bundles["msa"], class_file, tmp_path)
    for name in ("label", "index"):
        code, _, err = run_cli([*commands[name], "--workers", "-1"], capsys)
        assert code == 2 and "Traceback" not in err and "Invalid value for '--workers'" in err, (name, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiles"]  # no labels, no .part, no index


@pytest.mark.parametrize(
    "value, expected",
    [
        (
            "0.5",
            "error: --hubness-penalty 0.5: the bundle has no trained class embeddings to correct against",
        ),
        ("-1", "error: --hubness-penalty -1.0: must be a number from 0 to 10"),
        ("nan", "error: --hubness-penalty nan: must be a number from 0 to 10"),
    ],
)
def test_a_hubness_penalty_the_bundle_cannot_take_is_one_line(
    value, expected, tiles, bundles, class_file, tmp_path, capsys
):
    """Only DSVA bundles exported with the correction carry the trained class embeddings it needs."""
    command = _commands(tiles, bundles["msa"], class_file, tmp_path)["label"]
    code, _, err = run_cli([*command, "--hubness-penalty", value], capsys)
    assert code == 2 and error_lines(err) == [err.strip()] and err.startswith(expected), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiles"]  # nothing written
    code, _, err = run_cli([*command, "--hubness-penalty", "0"], capsys)  # "without it" always works
    assert code == 0, err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_seen_calibration_that_is_no_number_is_one_line(
    value, tiles, bundles, class_file, tmp_path, capsys
):
    """NaN (or inf times an unseen class's 0) made every logit NaN: every tile the first class, score nan."""
    from rsz_infer import Labeler, RszError

    command = _commands(tiles, bundles["dsva"], class_file, tmp_path)["label"]
    code, _, err = run_cli([*command, "--seen-calibration", value], capsys)
    expected = (
        f"error: --seen-calibration {float(value)}: must be a finite number (leave it out for the bundle's"
    )
    assert code == 2 and error_lines(err) == [err.strip()] and err.startswith(expected), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiles"]  # nothing written
    with pytest.raises(RszError, match=r"^--seen-calibration .*: must be a finite number"):
        Labeler(bundles["dsva"], class_file, backend="ort", device="cpu", seen_calibration=float(value))
