"""`rsz-bench`: latency | e2e | accuracy | plot. Every command writes DIR/<name>.json and DIR/<name>.md."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import click

import rsz_infer
from rsz_infer.decoders import DECODERS
from rsz_infer.errors import HELP_OPTIONS, RszError, one_line_errors
from rsz_infer.native import PREPROCESSORS


def _ints(value: str, option: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise RszError(f"{option} {value}: expected comma-separated integers") from None
    if not out or min(out) < 1:
        raise RszError(f"{option} {value}: expected positive integers")
    return out


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _slug(model: str) -> str:
    return Path(model.removeprefix("ref:")).name.replace(":", "_") or "model"


def _stems(models: Sequence[str]) -> list[str]:
    """One output stem per --model, so that no result overwrites another: the folder name (or ref: name),
    with its parent folder where two models share a name (a/model, b/model: a_model, b_model), and _2, _3
    after a stem taken already (the same model twice, or x/a/model and y/a/model)."""
    names = [_slug(m) for m in models]
    stems: list[str] = []
    for model, name in zip(models, names):
        if names.count(name) > 1:
            parent = "ref" if model.startswith("ref:") else Path(os.path.abspath(model)).parent.name
            name = f"{_slug(parent)}_{name}"
        stem, n = name, 1
        while stem in stems:
            n += 1
            stem = f"{name}_{n}"
        stems.append(stem)
    return stems


class _Group(click.Group):
    """Remembers its arguments, so every result records the exact command that produced it."""

    def main(self, args=None, *rest, **kwargs):  # click's signature
        import sys

        from rsz_bench import report

        report.COMMAND_ARGS[:] = list(sys.argv[1:] if args is None else args)
        return super().main(args, *rest, **kwargs)


@click.group(cls=_Group, context_settings=HELP_OPTIONS)
@click.version_option(rsz_infer.__version__, "--version", prog_name="rsz-bench")
def main() -> None:
    """Benchmarks of rsz: speed per backend, end-to-end throughput, accuracy of the fast engines."""


@main.command()
@click.option("--model", "models", required=True, multiple=True, help="models/NAME bundle or ref:NAME")
@click.option("--backend", default="ort,torch", show_default=True, help="ort,trt,torch,torch-compile,...")
@click.option("--batch", default="1,8,32", show_default=True)
@click.option("--precision", default="fp32", show_default=True, help="fp32,fp16,int8")
@click.option(
    "--calibration",
    type=click.Path(path_type=Path),
    default=None,
    help="ref: models, int8: tiles to calibrate and check the INT8 graph on (as rsz-export --int8)",
)
@click.option("--image-size", type=int, default=None, help="ref: models only (default: the paper's size)")
@click.option("--iters", type=int, default=30, show_default=True)
@click.option("--warmup", type=int, default=5, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--compile-mode", default="default", show_default=True, help="torch.compile mode")
@click.option("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")
@click.option(
    "--rounds",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="N > 1: open every row first, then time them in N interleaved rounds (ratios on a shared machine)",
)
@click.option("--run", "run_dir", type=click.Path(path_type=Path), default=None, help="runs/NAME for torch")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench_results"), show_default=True)
@one_line_errors
def latency(
    models,
    backend,
    batch,
    precision,
    calibration,
    image_size,
    iters,
    warmup,
    device,
    compile_mode,
    threads,
    rounds,
    run_dir,
    out,
):
    """Encoder latency (p50/p90/p99), images/s, peak memory and achieved fraction of the measured peak."""
    from rsz_bench.latency import LatencyConfig, latency_markdown, run_latency
    from rsz_bench.report import check_result_slot, model_identity, new_result, write_result
    from rsz_infer.outputs import check_out_dir

    check_out_dir(out)
    for model, stem in zip(models, _stems(models)):
        check_result_slot(out, f"latency_{stem}", "latency", model)

    cfg = LatencyConfig(
        backends=_names(backend),
        batches=_ints(batch, "--batch"),
        precisions=_names(precision),
        iters=iters,
        warmup=warmup,
        device=device,
        image_size=image_size,
        compile_mode=compile_mode,
        threads=threads,
        calibration=calibration,
        rounds=rounds,
    )
    for model, stem in zip(models, _stems(models)):
        measured = run_latency(model, cfg, run_dir=run_dir)
        result = new_result("latency", f"Latency: {model}", model_path=model_identity(model), **measured)
        json_path, md_path = write_result(result, latency_markdown(result), out, f"latency_{stem}")
        click.echo(latency_markdown(result))
        click.echo(f"wrote {json_path} and {md_path}")


@main.command()
@click.argument("tiles", nargs=-1, required=True)
@click.option("--model", required=True, help="models/NAME bundle or ref:NAME")
@click.option(
    "--classes", type=click.Path(path_type=Path), default=None, help="class file: also run label_tiles"
)
@click.option("--backend", default="auto", show_default=True, help="bundles: auto|ort|trt|torch")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--batch", type=int, default=32, show_default=True)
@click.option("--workers", type=int, default=0, help="decode threads, 0 or more (0: rsz-infer's default)")
@click.option(
    "--decoder", type=click.Choice(DECODERS), default="auto", show_default=True, help="as rsz-infer's"
)
@click.option(
    "--preprocess", type=click.Choice(PREPROCESSORS), default="auto", show_default=True, help="as rsz-infer's"
)
@click.option(
    "--precision", type=click.Choice(["auto", "int8", "fp16", "fp32"]), default="auto", show_default=True,
    help="bundles: as rsz-infer's",
)  # fmt: skip
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench_results"), show_default=True)
@one_line_errors
def e2e(tiles, model, classes, backend, device, batch, workers, decoder, preprocess, precision, out):
    """End-to-end tiles/s from files on disk, with where the time goes."""
    from rsz_bench.e2e import E2EConfig, e2e_markdown, run_e2e
    from rsz_bench.report import check_result_slot, model_identity, new_result, write_result
    from rsz_infer.outputs import check_out_dir

    check_out_dir(out)
    check_result_slot(out, f"e2e_{_slug(model)}", "e2e", model)

    cfg = E2EConfig(
        batch=batch, backend=backend, device=device, workers=workers, decoder=decoder, preprocess=preprocess,
        precision=precision,
    )  # fmt: skip
    measured = run_e2e(list(tiles), model, cfg, classes)
    result = new_result("e2e", f"End to end: {model}", model_path=model_identity(model), **measured)
    json_path, md_path = write_result(result, e2e_markdown(result), out, f"e2e_{_slug(model)}")
    click.echo(e2e_markdown(result))
    click.echo(f"wrote {json_path} and {md_path}")


@main.command()
@click.option("--model", "bundle", required=True, type=click.Path(path_type=Path), help="models/NAME bundle")
@click.option(
    "--run", "run_dir", required=True, type=click.Path(path_type=Path), help="runs/NAME it came from"
)
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path), help="benchmark folder")
@click.option("--split", "split_name", required=True, help="split name under DATA/splits")
@click.option("--backend", default="ort,trt,torch", show_default=True)
@click.option("--precision", default="fp32,fp16", show_default=True, help="fp32,fp16,int8")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--batch", type=int, default=64, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench_results"), show_default=True)
@one_line_errors
def accuracy(bundle, run_dir, data_dir, split_name, backend, precision, device, batch, out):
    """ZSL, GZSL (U, S, H) and retrieval through each backend and precision, against PyTorch FP32."""
    from rsz_bench.accuracy import AccuracyConfig, accuracy_markdown, run_accuracy
    from rsz_bench.report import check_result_slot, model_identity, new_result, write_result
    from rsz_infer.outputs import check_out_dir

    check_out_dir(out)
    check_result_slot(out, f"accuracy_{_slug(str(bundle))}", "accuracy", bundle)

    cfg = AccuracyConfig(backends=_names(backend), precisions=_names(precision), device=device, batch=batch)
    measured = run_accuracy(bundle, run_dir, data_dir, split_name, cfg)
    result = new_result("accuracy", f"Accuracy: {bundle}", model_path=model_identity(bundle), **measured)
    json_path, md_path = write_result(
        result, accuracy_markdown(result), out, f"accuracy_{_slug(str(bundle))}"
    )
    click.echo(accuracy_markdown(result))
    click.echo(f"wrote {json_path} and {md_path}")


@main.command("ort-settings")
@click.option("--model", required=True, help="models/NAME bundle or ref:NAME")
@click.option("--batch", type=int, default=8, show_default=True)
@click.option("--rounds", type=int, default=5, show_default=True, help="interleaved rounds")
@click.option("--iters", type=int, default=3, show_default=True, help="timed runs per setting per round")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench_results"), show_default=True)
@one_line_errors
def ort_settings(model, batch, rounds, iters, out):
    """ONNX Runtime session settings (optimisation level, threads, arena, pre-processed graph) timed."""
    from rsz_bench.ort_settings import ort_settings_markdown, run_ort_settings
    from rsz_bench.report import check_result_slot, model_identity, new_result, write_result
    from rsz_infer.outputs import check_out_dir

    check_out_dir(out)
    check_result_slot(out, f"ort_settings_{_slug(model)}", "ort-settings", model)

    measured = run_ort_settings(model, batch, rounds, iters)
    result = new_result(
        "ort-settings", f"ORT settings: {model}", model_path=model_identity(model), **measured
    )
    json_path, md_path = write_result(
        result, ort_settings_markdown(result), out, f"ort_settings_{_slug(model)}"
    )
    click.echo(ort_settings_markdown(result))
    click.echo(f"wrote {json_path} and {md_path}")


@main.command()
@click.argument("results", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="PNG file to write")
@one_line_errors
def plot(results, out):
    """Throughput against batch size per backend, from a latency JSON file."""
    from rsz_bench.plot import plot_throughput
    from rsz_infer.outputs import check_out_dir

    check_out_dir(out.parent, out)  # a folder that is a file was "[Errno 17] File exists" from mkdir
    click.echo(f"wrote {plot_throughput(results, out)}")


if __name__ == "__main__":  # python -m rsz_bench.cli (scripts/gpu_check.sh): rsz-bench's own entry
    from rsz_infer.entry import bench_main

    bench_main()
