"""rsz-train: make the embedded benchmark and train zero-shot models on scene folders.

rsz-train synth --out data/synth
rsz-train dsva --data data/synth --out runs/dsva
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

import rsz_infer
from rsz_infer.errors import HELP_OPTIONS, RszError, first_line, one_line_errors, sigterm_as_ctrl_c
from rsz_train.demo import demo_command
from rsz_train.models.registry import MODELS


def _default_split() -> str:
    from rsz_train.data.synth.catalogue import DEFAULT_SPLIT

    return DEFAULT_SPLIT


@click.group(context_settings=HELP_OPTIONS)
@click.version_option(rsz_infer.__version__, "--version", prog_name="rsz-train")
def main() -> None:
    """Train zero-shot models for remote-sensing tiles.

    A data folder holds images/<class>/*.png, classes.txt ("name: description"), attributes.txt and
    splits/<split>/*.txt (see docs/DESIGN.md); `rsz-train synth` writes a small synthetic one. A training
    command writes a run folder (model.safetensors, config.yaml, classes.json, metrics.jsonl,
    report.json) that rsz-export turns into a deployable bundle.
    """


def _train_command(kind: str, summary: str) -> click.Command:
    @click.command(name=kind, help=summary, context_settings=HELP_OPTIONS)
    @click.option(
        "--data",
        "data_dir",
        required=True,
        type=click.Path(path_type=Path),
        help="Benchmark folder (images/, classes.txt, attributes.txt, splits/).",
    )
    @click.option(
        "--split",
        default=None,
        help=f"rsz layout: a split folder under DATA/splits/ (default {_default_split()}).",
    )
    @click.option(
        "--split-file",
        type=click.Path(path_type=Path),
        default=None,
        help="Class split of a class-folder data set: DSVA's ann_attr_finetune_*_splits.mat, an MCFA "
        "split folder (seen_class_loc_*.txt, unseen_class_loc_*.txt), or a folder with seen.txt/unseen.txt.",
    )
    @click.option("--split-id", default=None, help="Numbered split of a .mat or MCFA folder: N, or 'all'.")
    @click.option(
        "--image-list",
        type=click.Path(path_type=Path),
        default=None,
        help="The .mat whose image_files a DSVA --split-file's indices follow (the authors' features .mat, "
        "res101.mat; its labels are checked when present). Default: the split file's own image_files, "
        "else class folders and file names in sorted order.",
    )
    @click.option("--unseen", type=int, default=None, help="Random class split with N unseen classes.")
    @click.option(
        "--seed",
        "split_seed",
        type=int,
        default=0,
        show_default=True,
        help="Seed of the --unseen class draw and of the validation holdouts.",
    )
    @click.option(
        "--classes",
        "classes_file",
        type=click.Path(path_type=Path),
        default=None,
        help="Class file with descriptions ('name: description' per line); default: the class names.",
    )
    @click.option(
        "--attributes",
        "attributes_file",
        type=click.Path(path_type=Path),
        default=None,
        help="Attribute phrases ('name<TAB>group<TAB>phrase' per line), for DSVA and MCFA.",
    )
    @click.option(
        "--captions",
        type=click.Path(path_type=Path),
        default=None,
        help="Karpathy caption JSON (RSICD, RSITMD, UCM/Sydney-captions); images under --data.",
    )
    @click.option(
        "--protocol",
        type=click.Choice(["rsz", "paper"]),
        default="rsz",
        show_default=True,
        help="paper: select epochs and lambda on val classes, refit on all seen classes, test once.",
    )
    @click.option(
        "--out",
        "out_dir",
        required=True,
        type=click.Path(path_type=Path),
        help="Run folder to write, e.g. runs/NAME.",
    )
    @click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path),
        default=None,
        help="YAML file with 'model:' and 'train:' settings overriding the defaults, or the name of a "
        "shipped one (rsz_train/configs: dsva_vit_b16, dsva_vit_b32, mcfa_resnet18, msa_resnet50).",
    )
    @click.option("--device", default=None, help="cpu or cuda (default: cuda when a GPU is present).")
    @click.option("--epochs", type=int, default=None, help="Number of epochs (overrides the config).")
    @click.option("--resume", is_flag=True, help="Continue the interrupted run in --out from its last.pt.")
    @click.option(
        "--nproc",
        type=int,
        default=1,
        show_default=True,
        help="Train in N local processes (DistributedDataParallel: one per GPU, or gloo on CPUs) with "
        "the same global batches; under torchrun leave it at 1.",
    )
    @click.option(
        "--gsd",
        type=float,
        default=None,
        metavar="METRES",
        help="Metres per pixel of the training images, recorded in the run (train.gsd) for rsz-export.",
    )
    @click.option(
        "--allow-random-init",
        is_flag=True,
        help="Train a paper-size config whose backbone has no pretrained weights (MSA: model.pretrained).",
    )
    @one_line_errors
    def command(
        data_dir: Path,
        split: str | None,
        split_file: Path | None,
        split_id: str | None,
        image_list: Path | None,
        unseen: int | None,
        split_seed: int,
        classes_file: Path | None,
        attributes_file: Path | None,
        captions: Path | None,
        protocol: str,
        out_dir: Path,
        config_path: Path | None,
        device: str | None,
        epochs: int | None,
        resume: bool,
        nproc: int,
        gsd: float | None,
        allow_random_init: bool,
    ) -> None:
        from rsz_train.config import ZERO_OR_MORE, check_range
        from rsz_train.data.sources import DataOptions
        from rsz_train.distributed import current

        check_range(split_seed, ZERO_OR_MORE, "--seed")  # the range of train.seed (numpy takes no negative)
        from rsz_train.train import train_run

        options = DataOptions(
            split=split,
            split_file=None if split_file is None else str(split_file),
            split_id=split_id,
            image_list=None if image_list is None else str(image_list),
            unseen=unseen,
            seed=split_seed,
            classes=None if classes_file is None else str(classes_file),
            attributes=None if attributes_file is None else str(attributes_file),
            captions=None if captions is None else str(captions),
        )
        overrides = {"model.require_pretrained": False} if allow_random_init and kind == "msa" else {}
        if gsd is not None:
            overrides["train.gsd"] = gsd
        try:
            # SIGTERM (`kill`, `timeout`, a scheduler's stop) ends training as Ctrl-C does: one line,
            # exit 130; the epochs whose last.pt was written are kept for --resume
            with sigterm_as_ctrl_c():
                result = train_run(
                    kind, data_dir, split, out_dir, config_path, device, epochs, resume,
                    data_options=options, protocol=protocol, nproc=nproc, overrides=overrides or None,
                )  # fmt: skip
        except (MemoryError, RuntimeError) as err:  # torch.OutOfMemoryError is a RuntimeError
            if not isinstance(err, MemoryError) and not _OUT_OF_MEMORY.search(str(err)):
                raise
            raise RszError(
                f"out of memory ({first_line(err, 'MemoryError', limit=160)}): lower train.batch_size, "
                "train.eval_batch_size or train.image_size in --config"
            ) from None
        run = result.run
        report_path = run / "report.json"
        if report_path.is_file() and current().is_main:
            report = json.loads(report_path.read_text(encoding="utf-8"))
            splits = report.get("splits")
            scored = (
                f"test over {len(splits)} splits, mean +- std (ddof=0), each scored once"
                if splits
                else "test, scored once"
            )
            head, tail = f"run written to {run}", ""
            if result.nothing_to_do:  # --resume of a finished run: train_run says so
                head = f"nothing left to do: run finished in {run}"
                tail = "; --resume --epochs M trains it on to M epochs"
            click.echo(
                f"{head} (--protocol {report['protocol']}, {report['seconds']} s); "
                f"{scored}: {_summary(report['test'])}{tail}"
            )

    return command


# torch's words for a failed allocation: CUDA's "CUDA out of memory", the CPU's "can't allocate memory"
_OUT_OF_MEMORY = re.compile(r"out of memory|can't allocate memory", re.IGNORECASE)


def _summary(test: dict) -> str:
    if test and all(isinstance(v, dict) and "mean" in v for v in test.values()):  # several splits
        return ", ".join(
            f"{name} {100 * v['mean']:.1f} +- {100 * v['std']:.1f}%"
            if name != "retrieval_mR"
            else f"{name} {v['mean']:.1f} +- {v['std']:.1f}"
            for name, v in test.items()
        )
    parts = []
    if "zsl" in test:
        parts.append(f"ZSL unseen accuracy {100 * test['zsl']:.1f}%")
    if "gzsl" in test:
        g, u = test["gzsl"], test["gzsl_uncalibrated"]
        parts.append(f"GZSL H {100 * g['H']:.1f}% (uncalibrated {100 * u['H']:.1f}%)")
    if "gzsl_absent" in test:
        parts.append(f"no GZSL ({test['gzsl_absent']})")
    if "retrieval" in test:
        parts.append(f"retrieval mR {test['retrieval']['mR']:.1f}")
    return ", ".join(parts) or "no test images"


for _entry in (e for e in MODELS.values() if e.trained):  # one training command per trained model kind
    main.add_command(_train_command(_entry.kind, f"Train {_entry.summary}"))


@click.command("synth", context_settings=HELP_OPTIONS)
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Folder to create.")
@click.option("--seed", default=0, show_default=True, help="Random seed: same seed, same bytes.")
@click.option("--size", default=64, show_default=True, help="Tile side in pixels.")
@click.option("--per-class", default=60, show_default=True, help="Tiles per class.")
@click.option("--workers", default=None, type=int, help="Processes (default: all cores).")
@one_line_errors
def synth_command(out: Path, seed: int, size: int, per_class: int, workers: int | None) -> None:
    """Write the procedural remote-sensing benchmark (images, classes, attributes, captions, splits)."""
    from rsz_train.data.synth import CLASS_NAMES, write_benchmark

    path = write_benchmark(out, seed=seed, size=size, per_class=per_class, workers=workers)
    click.echo(
        f"wrote {len(CLASS_NAMES) * per_class} tiles of {size} px in {len(CLASS_NAMES)} classes to {path}"
    )


main.add_command(synth_command, name="synth")
main.add_command(demo_command, name="demo")

__all__ = ["main", "RszError"]


if __name__ == "__main__":  # torchrun --nproc-per-node N -m rsz_train.cli KIND ...
    main()
