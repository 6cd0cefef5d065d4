"""Issue 16, the first ten minutes: subcommand typos get "did you mean", `rsz-infer TILES` stays the default
command, and a missing default bundle names the bundles that do exist."""

from __future__ import annotations

import shutil

from .helpers import save, solid
from .test_label import run_cli


def test_subcommand_typo_says_did_you_mean(capsys):
    code, _, err = run_cli(["serach", "idx", "--text", "a river"], capsys)
    assert code == 2 and "Error: No such command 'serach'. Did you mean 'search'?" in err
    assert "No such option" not in err


def test_tiles_is_still_the_default_command(bundles, class_file, tmp_path, capsys, monkeypatch):
    save(tmp_path / "search" / "a.png", solid("red", 24))  # a folder named like a command is still tiles
    save(tmp_path / "serach" / "b.png", solid("red", 24))
    monkeypatch.chdir(tmp_path)
    for folder in ["serach", "./search"]:
        code, _, err = run_cli(
            [folder, "--classes", class_file, "--model", bundles["msa"], "--quiet"], capsys
        )
        assert code == 0 and "1 tiles labeled" in err
    code, _, err = run_cli(["label", "serach", "--classes", class_file, "--model", bundles["msa"]], capsys)
    assert code == 0 and "1 tiles labeled" in err


def test_missing_default_bundle_names_the_one_that_exists(bundles, class_file, tmp_path, capsys, monkeypatch):
    save(tmp_path / "tiles" / "a.png", solid("red", 24))
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["tiles", "--classes", class_file], capsys)
    assert code == 2 and err.strip() == (
        "error: models/default: no model bundle here (the README demo writes it: rsz-train demo); "
        "pass --model models/NAME"
    )
    shutil.copytree(bundles["dsva"], tmp_path / "demo" / "models" / "dsva")
    code, _, err = run_cli(["tiles", "--classes", class_file], capsys)
    assert (
        code == 2
        and err.strip() == "error: models/default: no model bundle here; pass --model demo/models/dsva"
    )
