"""`rsz-train demo`: the whole product on the embedded benchmark, one command.

It runs the same four commands a user would type, and prints each before running it:
generate scenes, train a model, export it, label tiles of classes the model never saw.
Then it scores the labels against the tiles' true classes (which rsz-infer never sees).
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import click

from rsz_infer.bundle import DEFAULT_MODEL
from rsz_infer.errors import HELP_OPTIONS, RszError, one_line_errors
from rsz_train.data.formats import SceneData, Split, load_benchmark, load_split
from rsz_train.models.registry import model_kinds


def _run(cmd: list[str]) -> None:
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    started = time.perf_counter()
    result = subprocess.run(cmd)
    if result.returncode not in (0,):
        raise RszError(f"command failed with exit code {result.returncode}: {shlex.join(cmd)}")
    print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)


def _tool(name: str) -> str:
    """The console script next to this Python (works inside a venv that is not activated)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def _publish_default(bundle: Path) -> None:
    """Make the bundle rsz-infer's default `--model` (models/default here, a relative link), so the README's
    `rsz-infer tiles/ --classes new.txt` runs right after the demo. A real models/default is left alone."""
    default = DEFAULT_MODEL
    if default.exists() and not default.is_symlink():
        print(f"  ({default} is a bundle of yours, left as it is; the demo's is {bundle})", flush=True)
        return
    default.parent.mkdir(parents=True, exist_ok=True)
    link = default.with_name(f".{default.name}.{os.getpid()}.tmp")
    link.unlink(missing_ok=True)
    link.symlink_to(os.path.relpath(bundle.resolve(), default.parent.resolve()), target_is_directory=True)
    os.replace(link, default)  # replaces the link of an earlier demo, never a folder
    print(f"  {default} -> {bundle} (rsz-infer's default --model)", flush=True)


def _unseen_tiles(data: SceneData, split_info: Split, tiles_dir: Path) -> dict[str, str]:
    """Copy the unseen-class test tiles under neutral names; return tile name -> true class."""
    label_of = {p: data.class_names[i] for p, i in zip(data.image_paths, data.labels)}
    tiles_dir.mkdir(parents=True, exist_ok=True)
    truth = {}
    for n, rel in enumerate(split_info.test_unseen):
        name = f"tile_{n:05d}{Path(rel).suffix}"
        shutil.copyfile(data.root / rel, tiles_dir / name)
        truth[name] = label_of[rel]
    return truth


def _write_class_file(data: SceneData, unseen: list[str], path: Path) -> None:
    lines = ["# Classes the demo model never saw in training: name: description"]
    lines += [f"{name}: {data.descriptions[name]}" for name in unseen]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _score(labels_csv: Path, truth: dict[str, str]) -> tuple[float, float, Counter]:
    """Overall and mean per-class top-1 accuracy of rsz-infer's CSV against the true classes."""
    hits: Counter = Counter()
    totals: Counter = Counter()
    found: Counter = Counter()
    with open(labels_csv, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            name = Path(row["tile"]).name
            if name not in truth:
                continue
            totals[truth[name]] += 1
            found[row["label_1"]] += 1
            hits[truth[name]] += row["label_1"] == truth[name]
    if not totals:
        raise RszError(f"{labels_csv}: no labeled demo tiles found")
    overall = sum(hits.values()) / sum(totals.values())
    per_class = sum(hits[c] / totals[c] for c in totals) / len(totals)
    return overall, per_class, found


@click.command("demo", context_settings=HELP_OPTIONS)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=Path("demo"),
    show_default=True,
    help="Folder for the generated data, the run, the bundle and the labels.",
)
@click.option("--model", "kind", type=click.Choice(model_kinds()), default="dsva", show_default=True)
@click.option("--per-class", type=int, default=60, show_default=True, help="Tiles generated per class.")
@click.option("--epochs", type=int, default=None, help="Training epochs (default: the model's config).")
@click.option("--seed", type=int, default=0, show_default=True)
@one_line_errors
def demo_command(workdir: Path, kind: str, per_class: int, epochs: int | None, seed: int) -> None:
    """Generate scenes, train, export, then label tiles of classes the model never saw."""
    from rsz_train.data.synth import DEFAULT_SPLIT

    started = time.perf_counter()
    if workdir.exists() and not workdir.is_dir():
        raise RszError(
            f"--workdir {workdir}: is a file; the demo needs a folder (new or its own earlier one)"
        )
    data_dir, run_dir, bundle = workdir / "scenes", workdir / "runs" / kind, workdir / "models" / kind
    if not (data_dir / "classes.txt").exists():
        _run(
            [
                _tool("rsz-train"),
                "synth",
                "--out",
                str(data_dir),
                "--seed",
                str(seed),
                "--per-class",
                str(per_class),
            ]
        )
    train_cmd = [
        _tool("rsz-train"),
        kind,
        "--data",
        str(data_dir),
        "--split",
        DEFAULT_SPLIT,
        "--out",
        str(run_dir),
    ]
    if epochs is not None:
        train_cmd += ["--epochs", str(epochs)]
    if (run_dir / "config.yaml").is_file():
        # an earlier demo in this folder (finished, or stopped midway): continue its run, not a dead end
        train_cmd.append("--resume")
    _run(train_cmd)
    _run(
        [
            _tool("rsz-export"),
            "--model",
            kind,
            "--run",
            str(run_dir),
            "--fp16",
            "--engine",
            "auto",
            "--out",
            str(bundle),
            "--force",
        ]
    )
    _publish_default(bundle)

    tiles_dir, class_file = workdir / "unseen_tiles", workdir / "new.txt"
    shutil.rmtree(tiles_dir, ignore_errors=True)
    data, split_info = load_benchmark(data_dir), load_split(data_dir, DEFAULT_SPLIT)
    truth = _unseen_tiles(data, split_info, tiles_dir)
    unseen = split_info.unseen
    _write_class_file(data, unseen, class_file)
    labels = workdir / "labels.csv"
    _run(
        [
            _tool("rsz-infer"),
            str(tiles_dir),
            "--classes",
            str(class_file),
            "--model",
            str(bundle),
            "--backend",
            "ort",
            "--out",
            str(labels),
        ]
    )

    overall, per_class_acc, found = _score(labels, truth)
    trained = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))["test"]["zsl"]
    print(f"\nLabeled {sum(found.values())} tiles of {len(unseen)} classes the model never saw:")
    for name, count in found.most_common() + [(name, 0) for name in unseen if name not in found]:
        print(f"  {name:<28} {count:5d} tiles")  # a class no tile went to is listed with 0
    print(f"Top-1 accuracy {overall:.1%} (mean per class {per_class_acc:.1%}; chance {1 / len(unseen):.1%}).")
    print(f"Training reported mean per-class accuracy {trained:.1%} on the same tiles (PyTorch, FP32).")
    print(f"Labels: {labels}   total time {time.perf_counter() - started:.0f} s")
