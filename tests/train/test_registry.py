"""The registry is the only list of model kinds: the CLIs take their choices and commands from it, it imports
neither torch nor the model modules, and it is no part of an import circle."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

from click.testing import CliRunner

from rsz_train.models.registry import MODELS, model_entry, model_kinds


def test_registry_is_torch_free_and_outside_any_import_circle():
    code = (
        "import sys, rsz_train.models.registry, rsz_export.cli, rsz_train.config; "
        "bad = [m for m in ('torch', 'rsz_train.runs', 'rsz_train.models.dsva') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_entry_resolves_and_every_cli_offers_it():
    from rsz_export.cli import main as export_main
    from rsz_train.cli import main as train_main
    from rsz_train.demo import demo_command

    for kind, entry in MODELS.items():
        assert dataclasses.is_dataclass(entry.config_cls) and callable(model_entry(kind).build)
        if entry.trained:
            assert train_main.commands[kind].help == f"Train {entry.summary}"
        else:  # pretrained only (clip): bundled by its own export command, never trained
            assert (
                kind not in train_main.commands and kind not in model_kinds() and kind in export_main.commands
            )
    assert model_entry("dsva").needs_attributes and not model_entry("msa").needs_attributes
    options = {p.name: p for p in export_main.params}
    assert tuple(options["kind"].type.choices) == model_kinds()
    demo = {p.name: p for p in demo_command.params}
    assert tuple(demo["kind"].type.choices) == model_kinds()
    result = CliRunner().invoke(export_main, ["--model", "nope", "--run", "x"])
    assert result.exit_code == 2 and "'nope' is not one of 'dsva', 'mcfa', 'msa'" in result.output


def test_bundle_reader_knows_every_kind_a_bundle_can_be():
    """rsz_infer.bundle keeps its own copy (rsz-infer runs without rsz_train): it must stay the registry's."""
    from rsz_infer.bundle import MODEL_KINDS
    from rsz_train.models.registry import bundle_kinds

    assert MODEL_KINDS == bundle_kinds()
