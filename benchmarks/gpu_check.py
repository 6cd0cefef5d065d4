"""The Python steps of scripts/gpu_check.sh that no rsz command does by itself.

    python -m rsz_bench.gpu_check decode --out DIR --device cuda     nvImageCodec vs Pillow, bit for bit
    python -m rsz_bench.gpu_check tiles --out DIR -n 4096            256-px JPEG tiles for rsz-bench e2e
    python -m rsz_bench.gpu_check train --data D --out DIR --device cuda [--smoke]
                                                                      one epoch of every shipped config
Each step writes DIR/<step>.json and DIR/<step>.md (rsz_bench.report: machine, date, command).
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import click
import numpy as np

from rsz_infer.errors import RszError, one_line_errors

REPO = Path(__file__).resolve().parent.parent


def _write(
    kind: str, title: str, rows: list[dict], columns: list[tuple[str, str]], out: Path, **extra
) -> None:  # noqa: ANN003
    from rsz_bench.report import markdown_table, new_result, write_result

    result = new_result(kind, title, rows=rows, **extra)
    json_path, _ = write_result(result, markdown_table(rows, columns) + "\n", out, kind)
    click.echo(markdown_table(rows, columns))
    click.echo(f"wrote {json_path}")


@click.group()
def main() -> None:
    """Steps of scripts/gpu_check.sh."""


@main.command()
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True)
@one_line_errors
def decode(out: Path, device: str) -> None:
    """nvImageCodec (nvJPEG on the GPU) against Pillow on the decode-path test files, bit for bit."""
    sys.path.insert(0, str(REPO))
    from rsz_infer.decoders import PillowDecoder, open_decoder
    from rsz_infer.images import TileError, TileOptions, discover_tiles
    from tests.infer.helpers import write_mixed_tiles

    files = write_mixed_tiles(Path(out) / "decode_files")
    options = TileOptions(tile_size=100)
    tiles = list(discover_tiles([files], options))
    pillow, nvimg = PillowDecoder(), open_decoder("nvimgcodec", device)
    rows = []
    for tile, ref, got in zip(tiles, pillow.decode(tiles, options), nvimg.decode(tiles, options)):
        row = {
            "tile": tile.id.replace(str(files) + "/", ""),
            "by": "nvimgcodec" if nvimg._stream(tile, options) else "pillow",
        }
        if isinstance(ref, TileError) or isinstance(got, TileError):
            row["same"] = type(ref) is type(got) and str(ref) == str(got)
            row["result"] = f"skipped: {ref}" if isinstance(ref, TileError) else "decoded"
        else:
            row["same"] = bool(
                ref[1] == got[1] and ref[0].shape == got[0].shape and np.array_equal(ref[0], got[0])
            )
            row["result"] = f"{ref[0].shape[1]}x{ref[0].shape[0]} {ref[1]}"
            if not row["same"] and ref[0].shape == got[0].shape:
                row["max_abs_diff"] = int(np.abs(ref[0].astype(int) - got[0].astype(int)).max())
        rows.append(row)
    same = sum(r["same"] for r in rows)
    columns = [
        ("tile", "file"),
        ("by", "decoded by"),
        ("result", "Pillow's result"),
        ("same", "same bit for bit"),
    ]
    title = f"nvImageCodec ({device}) vs Pillow: {same} of {len(rows)} tiles identical"
    _write("decode", title, rows, columns, out, device=device, identical=same, tiles=len(rows))
    if same != len(rows):
        raise RszError(
            f"nvImageCodec on {device}: {len(rows) - same} of {len(rows)} tiles differ from Pillow"
        )


@main.command()
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("-n", "count", type=int, default=4096, show_default=True)
@click.option("--size", type=int, default=256, show_default=True)
@one_line_errors
def tiles(out: Path, count: int, size: int) -> None:
    """`count` JPEG tiles (quality 90) of smooth random scenes, for rsz-bench e2e."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        coarse = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
        image.save(out / f"tile_{i:05d}.jpg", quality=90)
    click.echo(f"wrote {count} {size}-px JPEG tiles to {out}")


# --smoke: the config's own loop (sampler, schedule, heads) on a small backbone at 32 px: the plumbing of
# the GPU run, at a cost the test suite can pay on 2 CPU cores
SMOKE = {
    "train.image_size": 32,
    "train.batch_size": 16,
    "train.warmup_epochs": 0,
    "train.batches_per_epoch": 2,
}
SMOKE_BACKBONE = {"dsva": "vit_tiny", "mcfa": "resnet_tiny", "msa": "resnet_tiny"}


@main.command()
@click.option("--data", type=click.Path(path_type=Path), required=True, help="rsz-train synth folder")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--device", default="cuda", show_default=True)
@click.option("--config", "configs", multiple=True, help="shipped config names (default: every one)")
@click.option("--smoke", is_flag=True, help="32 px, small batches: a CPU run of the same steps")
@one_line_errors
def train(data: Path, out: Path, device: str, configs: tuple[str, ...], smoke: bool) -> None:
    """One epoch of each shipped paper-size config (AMP on GPU, the configs' default) on tiny data."""
    import torch
    import yaml

    from rsz_train.data.synth import DEFAULT_SPLIT
    from rsz_train.train import train as run_training

    shipped = sorted((REPO / "rsz_train" / "configs").glob("*.yaml"))
    names = list(configs) or [p.stem for p in shipped]
    rows = []
    for name in names:
        kind = yaml.safe_load((REPO / "rsz_train" / "configs" / f"{name}.yaml").read_text())["kind"]
        overrides = {"train.epochs": 1}
        if smoke:
            overrides |= SMOKE | {"model.backbone": SMOKE_BACKBONE[kind]}
        if kind == "msa":  # the paper's ImageNet ResNet-50 weights are not here: random init, said so
            overrides["model.require_pretrained"] = False
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        row = {"config": name, "kind": kind, "device": device}
        try:
            run_training(
                kind, data, DEFAULT_SPLIT, out / name, config_path=name, device=device, overrides=overrides
            )
            row["status"] = "ok"
        except RszError as err:
            row["status"] = f"error: {err}"
        row["seconds"] = round(time.perf_counter() - started, 2)
        if device.startswith("cuda"):
            row["peak_mib"], row["memory"] = (
                round(torch.cuda.max_memory_allocated() / 2**20),
                "torch peak allocated",
            )
        else:
            row["peak_mib"], row["memory"] = (
                round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "process peak RSS",
            )
        rows.append(row)
    columns = [
        ("config", "config"), ("kind", "kind"), ("device", "device"), ("seconds", "s (1 epoch + eval)"),
        ("peak_mib", "peak MiB"), ("memory", "memory"), ("status", "status"),
    ]  # fmt: skip
    _write("train", "One training epoch per shipped config", rows, columns, out, smoke=smoke)
    failed = [r["config"] for r in rows if r["status"] != "ok"]
    if failed:
        raise RszError(f"training failed for {', '.join(failed)} (see {out / 'train.md'})")


if __name__ == "__main__":
    main()
