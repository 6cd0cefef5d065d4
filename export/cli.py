"""rsz-export: `rsz-export --model dsva --run runs/NAME [--fp16] ...` builds a bundle;
`rsz-export inspect models/NAME` prints a bundle's manifest and re-verifies its hashes."""

from __future__ import annotations

from pathlib import Path

import click

import rsz_infer
from rsz_export.trt_build import ENGINE_CHOICES
from rsz_infer.bundle import Manifest, load_manifest
from rsz_infer.errors import HELP_OPTIONS, RszError, one_line_errors, sigterm_as_ctrl_c
from rsz_infer.trt_lib import read_sidecar, sidecar_path
from rsz_train.models.registry import model_kinds

RUN_OPTIONS = [
    click.option("--model", "kind", type=click.Choice(model_kinds()), help="model kind of the run"),
    click.option("--run", "run_dir", type=click.Path(path_type=Path), help="run folder written by rsz-train"),
]
# What every bundle takes, from a run or from a checkpoint (rsz-export clip)
BUNDLE_OPTIONS = [
    click.option("--fp16", is_flag=True, help="also write FP16 graphs and use them by default"),
    click.option(
        "--engine",
        type=click.Choice(ENGINE_CHOICES),
        default="auto",
        show_default=True,
        help="TensorRT engines: trt = required, auto = when a TensorRT library imports",
    ),
    click.option("--batch", default="1:32:256", show_default=True, help="engine batch profile min:opt:max"),
    click.option(
        "--out",
        type=click.Path(path_type=Path),
        help="bundle folder (default models/<run name>; for clip, models/<checkpoint name without suffix>, "
        "or models/<its run folder> for an epoch_N.pt)",
    ),
    click.option(
        "--force", is_flag=True, help="replace the rsz bundle at --out (never any other folder or file)"
    ),
    click.option(
        "--tiles", type=click.Path(path_type=Path), help="folder of test tiles to check the graphs on"
    ),
    click.option(
        "--gsd",
        type=float,
        default=None,
        help="metres per pixel of the training images (rsz-infer --gsd auto); default: the run's own "
        "(rsz-train --gsd); for clip, unknown",
    ),
    click.option(
        "--int8",
        is_flag=True,
        help="also an INT8 image graph, chosen and checked on real tiles (rsz_export.int8)",
    ),
    click.option(
        "--calibration",
        type=click.Path(path_type=Path),
        help="--int8: folder of tiles to calibrate on (default: the run's training tiles; "
        "for clip, required)",
    ),
]


def _with_build_options(func, options: list | None = None):
    for option in reversed(RUN_OPTIONS + BUNDLE_OPTIONS if options is None else options):
        func = option(func)
    return func


def _with_bundle_options(func):
    return _with_build_options(func, BUNDLE_OPTIONS)


def _build(kind, run_dir, fp16, engine, batch, out, force, tiles, gsd, int8, calibration) -> None:
    from rsz_export.api import export

    if kind is None or run_dir is None:
        raise RszError("--model and --run are required (e.g. rsz-export --model dsva --run runs/NAME)")
    # `kill PID` / `timeout` end it as Ctrl-C does: the staging folder and the lock file go with it
    with sigterm_as_ctrl_c():
        bundle = export(
            run_dir, out, kind, fp16=fp16, engine=engine, batch=batch, force=force, tiles=tiles, gsd=gsd,
            int8=int8, calibration=calibration,
        )  # fmt: skip
    _report(bundle)


def _report(bundle: Path) -> None:
    manifest = load_manifest(bundle)
    engines = [e for g in manifest.graphs.values() for e in g.engines]
    note = manifest.extra.get("engine_note", f"engines: {', '.join(engines)}")
    click.echo(
        f"{bundle}: {manifest.model_kind} bundle, graphs {', '.join(manifest.graphs)} "
        f"({manifest.extra.get('default_precision')}); {note}"
    )
    if manifest.gsd is None:
        click.echo("  gsd: unknown, so rsz-infer --gsd auto will not resample (rsz-export --gsd METRES)")
    else:
        where = manifest.extra.get("gsd_source", "the caller")
        click.echo(f"  gsd: {manifest.gsd:g} m per pixel, from {where}")
    for role, info in manifest.extra.get("int8", {}).items():
        chosen = info.get("method")
        check = manifest.extra["checks"].get(f"{role}.int8", {})
        click.echo(
            f"  int8 {role}: "
            + (
                f"{chosen} ({len(info['excluded_nodes'])} nodes kept in float), cosine "
                f"{check['min_cosine']:.4f}, {check['label_changes']} of {check['tiles']} labels changed"
                if chosen
                else info.get("note", "none")
            )
        )


@click.group(invoke_without_command=True, context_settings=HELP_OPTIONS)
@click.version_option(rsz_infer.__version__, "--version", prog_name="rsz-export")
@_with_build_options
@click.pass_context
@one_line_errors
def main(ctx: click.Context, **options) -> None:
    """Export a trained rsz run to ONNX / FP16 / TensorRT in a bundle (the default command)."""
    if ctx.invoked_subcommand is None:
        _build(**options)


@main.command(short_help="Export a run: the same as the default command.")
@_with_build_options
@one_line_errors
def build(**options) -> None:
    """Same as `rsz-export --model ... --run ...`."""
    _build(**options)


@main.command()
@click.option(
    "--checkpoint", required=True, type=click.Path(path_type=Path),
    help="open_clip .pt/.bin/.safetensors state dict, or a Hugging Face CLIPModel folder",
)  # fmt: skip
@click.option("--arch", default=None, help="open_clip architecture (default: inferred from the weights)")
@click.option(
    "--templates", type=click.Path(path_type=Path), default=None,
    help="prompt templates, one with {} per line (default: rsz's remote-sensing set)",
)  # fmt: skip
@_with_bundle_options
@one_line_errors
def clip(
    checkpoint,
    arch,
    templates,
    fp16,
    engine,
    batch,
    out,
    force,
    tiles,
    gsd,
    int8,
    calibration,
) -> None:
    """Bundle a pretrained CLIP checkpoint (RemoteCLIP, GeoRSCLIP, SkyCLIP, OpenAI/LAION CLIP)."""
    from rsz_export.clip import arch_note, default_out, export_clip

    out = out if out is not None else default_out(checkpoint)
    with sigterm_as_ctrl_c():  # as in _build
        bundle, model = export_clip(
            checkpoint, out, arch, templates, fp16=fp16, engine=engine, batch=batch, force=force,
            tiles=tiles, gsd=gsd, int8=int8, calibration=calibration,
        )  # fmt: skip
    click.echo(f"{checkpoint}: {arch_note(model.source)}", err=True)
    _report(bundle)


def hubness(manifest: Manifest) -> str:
    """The scoring row's hubness correction, or nothing when the bundle has none."""
    if not manifest.hubness_penalty:
        return ""
    k = manifest.hubness_neighbours
    return f", minus {manifest.hubness_penalty:.4g} x mean cosine to {k} nearest trained classes (hubness)"


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@one_line_errors
def inspect(bundle: Path) -> None:
    """Print the manifest of BUNDLE as a table and re-verify every file's sha256."""
    manifest = load_manifest(bundle, verify=True)
    rows = [
        ("model kind", manifest.model_kind),
        ("rsz version", manifest.rsz_version),
        ("class embedding", manifest.class_embedding),
        ("scoring", f"{manifest.scoring_rule} x {manifest.logit_scale:.4g}" + hubness(manifest)),
        ("embedding dim", str(manifest.embedding_dim)),
        ("seen classes", f"{len(manifest.seen_classes)} (calibration {manifest.seen_calibration:.4g})"),
        (
            "preprocess",
            f"{manifest.preprocess.size}px {manifest.preprocess.resize} {manifest.preprocess.band_order}",
        ),
        ("tokenizer", manifest.tokenizer or "-"),
        ("attributes", str(len(manifest.attribute_names))),
        ("text prompt", manifest.text_prompt),
    ]
    if manifest.prompt_templates:
        rows.append(("templates", f"{len(manifest.prompt_templates)}: {manifest.prompt_templates[0]} ..."))
    if "source" in manifest.extra:
        rows.append(("source", ", ".join(f"{k} {v}" for k, v in manifest.extra["source"].items())))
    training = manifest.extra.get("training")
    if training:
        done, epochs = training.get("epochs_done"), training.get("epochs")
        rows.append(
            (
                "training",
                f"finished, {epochs} epochs"
                if training.get("finished")
                else f"UNFINISHED: stopped at epoch {done} of {epochs} (rsz-train --resume finishes it)",
            )
        )
    for role, graph in manifest.graphs.items():
        io = "; ".join(f"{t.name} {t.dtype}{t.shape}" for t in graph.inputs + graph.outputs)
        rows.append((f"graph {role}", f"{graph.onnx} [{graph.precision}] {io}"))
        for engine in graph.engines:
            side = bundle / sidecar_path(Path(engine)).name
            info = read_sidecar(side) if side.is_file() else {}
            rows.append(
                (
                    "  engine",
                    f"{engine} {info.get('library')} {info.get('library_version')} "
                    f"sm {','.join(info.get('compute_capabilities', []))}",
                )
            )
    for role, info in manifest.extra.get("int8", {}).items():
        check = manifest.extra.get("checks", {}).get(f"{role}.int8", {})
        tried = ", ".join(
            f"{c['method']} {'pass' if c['passed'] else 'fail'} cos {c['min_cosine']:.4f}"
            for c in info["candidates"]
        )
        chosen = (
            f"{info['method']} (cosine {check.get('min_cosine', 0):.4f})" if info.get("method") else "none"
        )
        rows.append((f"int8 {role}", f"{chosen}; tried {tried}"))
        cal = info.get("calibration", {})
        skipped = cal.get("skipped", 0) + cal.get("check_skipped", 0)
        rows.append(
            (
                "  calibration",
                f"{cal.get('tiles')} tiles of {cal.get('source')} sha256 {cal.get('sha256', '')[:16]}"
                + (f"; {skipped} skipped (cannot be decoded)" if skipped else ""),
            )
        )
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")
    click.echo(f"{'files':<{width}}  {len(manifest.files)} verified (sha256)")


if __name__ == "__main__":  # python -m rsz_export.cli ..., as rsz_infer.cli, rsz_train.cli and rsz_bench.cli
    main()
