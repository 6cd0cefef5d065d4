"""rsz-infer: label tiles with new classes, or index tiles and search them by text or image.

    rsz-infer TILES... --classes new.txt [--out labels.csv]     label (the main job)
    rsz-infer index TILES... --model models/msa --out idx/      embed tiles for retrieval
    rsz-infer search idx/ --text "a river crossing farmland"    retrieve tiles

Exit codes: 0 all done, 3 done but some tiles were skipped (see the .errors.csv), 2 usage or input error,
130 interrupted by Ctrl-C or SIGTERM (outputs hold what finished; --resume continues).
"""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path

import click

import rsz_infer
from rsz_infer.backend import BACKENDS, PRECISIONS, check_device
from rsz_infer.bundle import DEFAULT_MODEL
from rsz_infer.cluster import parse_shard
from rsz_infer.decoders import DECODERS
from rsz_infer.errors import HELP_OPTIONS, one_line_callback, one_line_errors, sigterm_as_ctrl_c
from rsz_infer.images import DEFAULT_MAX_PIXELS, TileOptions, parse_bands
from rsz_infer.index import ANN_METHODS
from rsz_infer.native import PREPROCESSORS
from rsz_infer.outputs import check_output_path
from rsz_infer.pipeline import LabelConfig, label_tiles

HTML_SUFFIXES = (".html", ".htm")
EPILOG = (
    "More commands: 'rsz-infer index TILES... --model models/msa --out idx/' and "
    "'rsz-infer search idx/ --text \"a river crossing farmland\"' (each with --help). "
    "Exit codes: 0 done, 3 done with skipped tiles (listed in OUT's .errors.csv), 2 usage/input error, "
    "130 interrupted (--resume continues)."
)


def _device_option(f):
    return click.option(
        "--device", default="auto", show_default=True, callback=one_line_callback(check_device),
        help="auto (cuda when an NVIDIA GPU is visible; the summary says which device and provider ran), "
        "cpu, cuda, or cuda:N (GPU N for this process).",
    )(f)  # fmt: skip


def _ray_options(f):
    f = click.option(
        "--ray-partition-tiles", default=256, show_default=True,
        help="--ray: tiles per partition (a decode task, an actor call, a Parquet file: the unit of resume).",
    )(f)  # fmt: skip
    f = click.option(
        "--ray-actors", default=1, show_default=True,
        help="--ray: engine actors (one per GPU on GPU clusters; each holds one model).",
    )(f)  # fmt: skip
    f = click.option(
        "--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
        help="Run on a Ray cluster (rsz[ray]): decoding as Ray tasks, the engine in an actor pool, results "
        "as partitioned Parquet. No ADDRESS: start Ray here; else e.g. auto or ray://head:10001.",
    )(f)  # fmt: skip
    return f


def _ray(kw: dict):  # cluster.RayOptions or None
    from rsz_infer.cluster import RayOptions, check_ray_address

    address = kw.pop("ray_address")
    actors, partition_tiles = kw.pop("ray_actors"), kw.pop("ray_partition_tiles")
    if address is None:
        return None
    return RayOptions(check_ray_address(address), actors, partition_tiles)


def _tile_options(f):
    f = click.option(
        "--gsd", default="auto", show_default=True,
        help="Metres per pixel the model sees: scene windows are resampled to it. auto: the bundle's "
        "training GSD when known (rsz-export --gsd); off: never resample.",
    )(f)  # fmt: skip
    f = click.option(
        "--asset", default=None, help="STAC inputs: the asset to label (default: the visual / RGB asset)."
    )(f)
    f = click.option(
        "--bands", default=None, help="1-based bands for R,G,B of multi-band TIFFs, e.g. 3,2,1."
    )(f)
    f = click.option(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, show_default=True,
        help="Most pixels decoded in one piece, checked on the header's size before decoding: larger "
        "images are skipped (errors.csv). Tiled GeoTIFF/COG scenes are read window by window, any size.",
    )(f)  # fmt: skip
    f = click.option("--overlap", default=0, show_default=True, help="Overlap of scene windows in pixels.")(f)
    f = click.option(
        "--tile-size", default=256, show_default=True, help="Window size: larger images are cut into windows."
    )(f)
    return f


def _tiles(kw: dict) -> TileOptions:
    return TileOptions(
        kw["tile_size"],
        kw["overlap"],
        parse_bands(kw["bands"]),
        asset=kw["asset"],
        max_pixels=kw["max_pixels"],
    )


def _given(names) -> frozenset[str]:
    """The options of `names` set on the command line (or by an environment variable), not by default."""
    ctx = click.get_current_context()
    default = click.core.ParameterSource.DEFAULT
    return frozenset(n for n in names if ctx.get_parameter_source(n) not in (None, default))


def _runtime_options(f):
    f = click.option(
        "--preprocess", type=click.Choice(PREPROCESSORS), default="auto", show_default=True,
        help="Resize + normalise. auto: the native library of cpp_plugins/ when built, else Pillow.",
    )(f)  # fmt: skip
    f = click.option(
        "--decoder", type=click.Choice(DECODERS), default="auto", show_default=True,
        help="JPEG/PNG decoding. auto: nvImageCodec when installed (GPU with the engine), else Pillow. "
        "pillow-draft: JPEGs larger than the model input decoded at 1/2-1/8 scale (faster; close to, "
        "not equal to, a full decode).",
    )(f)  # fmt: skip
    f = click.option(
        "--shard", default=None, callback=one_line_callback(parse_shard),
        help="I/N: only shard I of N of the discovered tiles (N processes or array jobs, each an own --out).",
    )(f)  # fmt: skip
    f = click.option(
        "--workers", type=click.IntRange(min=0), default=0,
        help="Decoding threads (0: one per core, up to 8).",
    )(f)  # fmt: skip
    f = click.option("--batch", default=32, show_default=True, help="Tiles per engine call.")(f)
    f = click.option(
        "--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
        help="Image graph variant. auto: the fastest that passed its check on this device (CPU: as measured "
        "by rsz-export; GPU: fp16).",
    )(f)  # fmt: skip
    f = _device_option(f)
    f = click.option(
        "--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
        help="auto: TensorRT engine when it loads on this GPU, else ONNX Runtime.",
    )(f)  # fmt: skip
    return f


@click.command(name="label", epilog=EPILOG, context_settings=HELP_OPTIONS)
@click.argument("tiles", nargs=-1, required=True)
@click.option("--classes", required=True, help="Class file: one 'name' or 'name: description' per line.")
@click.option(
    "--model", default=str(DEFAULT_MODEL), show_default=True, help="Model bundle folder (rsz-export)."
)
@click.option(
    "--out", default="labels.csv", show_default=True,
    help="Labels by suffix: .csv (WKT), .jsonl, .geojson, .parquet (GeoParquet), .gpkg, .fgb.",
)  # fmt: skip
@click.option("--top-k", default=5, show_default=True)
@click.option(
    "--seen-calibration", type=float, default=None, help="Lambda for seen classes (default: bundle's)."
)
@click.option(
    "--hubness-penalty", type=float, default=None,
    help="DSVA: weight of the hubness correction (default: the bundle's; 0 scores without it).",
)  # fmt: skip
@click.option(
    "--min-score", type=float, default=None,
    help="Label a tile 'unknown' when similarity_1 (its top class's raw similarity) is below this.",
)  # fmt: skip
@click.option(
    "--class-map",
    default=None,
    help="Also write a class-map COG per scene (colour table, class names, nodata) and a .png quicklook.",
)
@click.option("--class-map-scores", is_flag=True, help="Class map: a second band with the top score.")
@click.option(
    "--explain", is_flag=True,
    help="DSVA: each tile's top attributes; with --html, their attention maps over the tile.",
)  # fmt: skip
@click.option("--resume", is_flag=True, help="Continue an interrupted run of the same --out.")
@click.option("--html", "html_out", default=None, help="Also write an HTML gallery of the labeled tiles.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_runtime_options
@_tile_options
@_ray_options
@one_line_errors
def label_command(
    tiles,
    classes,
    model,
    out,
    top_k,
    seen_calibration,
    hubness_penalty,
    min_score,
    class_map,
    class_map_scores,
    explain,
    resume,
    html_out,
    quiet,
    **kw,
) -> None:
    """Label TILES (folders, images, any raster GDAL opens, GDAL paths, URLs, STAC JSON) with a class file."""
    ray = _ray(kw)
    cfg = LabelConfig(
        inputs=list(tiles),
        classes=Path(classes),
        out=Path(out),
        model=Path(model),
        backend=kw["backend"],
        device=kw["device"],
        precision=kw["precision"],
        batch=kw["batch"],
        top_k=top_k,
        seen_calibration=seen_calibration,
        hubness_penalty=hubness_penalty,
        min_score=min_score,
        resume=resume,
        tiles=_tiles(kw),
        class_map=Path(class_map) if class_map else None,
        class_map_scores=class_map_scores,
        gsd=kw["gsd"],
        explain=explain,
        html=Path(html_out) if html_out else None,
        workers=kw["workers"],
        decoder=kw["decoder"],
        preprocess=kw["preprocess"],
        progress=not quiet,
        shard=kw["shard"],
    )
    if html_out:
        check_output_path(Path(html_out), "--html", HTML_SUFFIXES)
    if ray is not None:
        from rsz_infer.cluster import label_tiles_ray

        summary = label_tiles_ray(cfg, ray)
    else:
        summary = label_tiles(cfg)
    click.echo(summary.line(cfg.out), err=True)
    if summary.gallery_tiles is not None:
        from rsz_infer.report import gallery_line

        click.echo(
            f"rsz-infer: {gallery_line(summary.gallery_tiles, summary.gallery_missing, html_out)}", err=True
        )
    sys.exit(summary.exit_code)


@click.command(name="index", context_settings=HELP_OPTIONS)
@click.argument("tiles", nargs=-1, required=True)
@click.option(
    "--model", default=str(DEFAULT_MODEL), show_default=True, help="Model bundle folder (MSA for text)."
)
@click.option("--out", required=True, help="Index folder (created, or brought up to date with TILES).")
@click.option(
    "--search-method",
    type=click.Choice(ANN_METHODS),
    default="auto",
    show_default=True,
    help="exact: numpy; hnsw: approximate FAISS graph (rsz[retrieval]); auto: hnsw from 50,000 tiles.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_runtime_options
@_tile_options
@_ray_options
@one_line_errors
def index_command(tiles, model, out, search_method, quiet, **kw) -> None:
    """Embed TILES into an index folder for `rsz-infer search`; known tiles are skipped, changed ones
    embedded again, and those deleted from under TILES removed.

    Tiles that cannot be read are listed in OUT.errors.csv beside the folder (exit 3); the next call tries
    them again."""
    from rsz_infer.index import TILE_OPTION_FLAGS, IndexConfig, build_index

    ray = _ray(kw)
    cfg = IndexConfig(
        list(tiles),
        Path(model),
        Path(out),
        _tiles(kw),
        method=search_method,
        progress=not quiet,
        given=_given(TILE_OPTION_FLAGS),
        **{
            k: kw[k]
            for k in (
                "backend",
                "device",
                "batch",
                "workers",
                "decoder",
                "preprocess",
                "gsd",
                "precision",
                "shard",
            )
        },
    )
    if ray is not None:
        from rsz_infer.cluster import build_index_ray

        summary = build_index_ray(cfg, ray)
    else:
        summary = build_index(cfg)
    click.echo(summary.line(cfg.out), err=True)
    sys.exit(summary.exit_code)


@click.command(name="search", context_settings=HELP_OPTIONS)
@click.argument("index_dir")
@click.option("--text", default=None, help="A sentence describing the tiles to find.")
@click.option("--image", default=None, help="A query image: find tiles that look like it.")
@click.option(
    "-k", "k", type=click.IntRange(min=1), default=20, show_default=True, help="How many tiles to return."
)
@click.option(
    "--rerank",
    type=click.IntRange(min=0),
    default=0,
    help="Re-score this many candidates with the rerank graph (MSA, --text); 0: no re-ranking.",
)
@click.option("--model", default=None, help="Model bundle (default: the one that built the index).")
@click.option("--html", "html_out", default=None, help="Also write a self-contained HTML gallery.")
@click.option("--labels", default=None, help="Labels file (.csv/.jsonl from rsz-infer) for gallery captions.")
@click.option("--json", "as_json", is_flag=True, help="Print hits as JSON lines.")
@_device_option
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@one_line_errors
def search_command(
    index_dir, text, image, k, rerank, model, html_out, labels, as_json, device, backend
) -> None:
    """Top-k tiles of INDEX_DIR for --text or --image."""
    from rsz_infer.index import Index
    from rsz_infer.outputs import check_outside_index

    if html_out:
        check_outside_index(Path(html_out), "--html", Path(index_dir))  # named as given, before any other
        check_output_path(Path(html_out), "--html", HTML_SUFFIXES)
    with Index.open(index_dir) as index:  # closed before the gallery reads the tiles
        hits = index.search(
            text=text, image=image, k=k, rerank=rerank, model=model, backend=backend, device=device
        )
        holds, info = len(index.tiles), index.info
    for hit in hits:
        if as_json:
            click.echo(
                json.dumps({"rank": hit.rank, "score": hit.score, "similarity": hit.similarity, **hit.tile})
            )
        else:
            # bytes: a file name that is not UTF-8 comes out as its own bytes (as `ls` prints it)
            click.echo(f"{hit.rank}\t{hit.score:.4f}\t{hit.tile['tile']}".encode("utf-8", "surrogateescape"))
    if not hits:
        # stdout stays empty for scripts; a valid, empty answer (exit 0), but the user hears why (an index
        # of tiles always answers k >= 1 hits, so only a search graph that found none is the other case)
        why = f"the index {index_dir} holds no tiles"
        if holds:
            why = f"the search graph found none of the {holds} tiles of {index_dir}"
        click.echo(f"rsz-infer search: no hits: {why}", err=True)
    if html_out:
        from rsz_infer.report import (
            GalleryItem,
            footprint_line,
            gallery_line,
            label_lines,
            load_labels,
            write_gallery,
        )

        known = load_labels(labels) if labels else {}
        options = TileOptions(
            **info["tile_options"], bands=tuple(info["bands"]) if info.get("bands") else None
        )
        items = [
            GalleryItem(
                f"#{h.rank}  score {h.score:.3f}",
                h.tile,
                label_lines(known.get(h.tile["tile"])) + footprint_line(h.tile),
                check_file=True,
            )
            for h in hits
        ]
        heading = f"rsz search: {text if text is not None else image}"
        missing = write_gallery(html_out, heading, items, options)
        click.echo(f"rsz-infer search: {gallery_line(len(hits), missing, html_out)}", err=True)


@click.command(name="merge", context_settings=HELP_OPTIONS)
@click.argument("out")
@click.argument("sources", nargs=-1, required=True)
@click.option(
    "--search-method", type=click.Choice(ANN_METHODS), default="auto", show_default=True,
    help="As for `rsz-infer index`.",
)  # fmt: skip
@one_line_errors
def merge_command(out, sources, search_method) -> None:
    """Merge the index folders SOURCES (`rsz-infer index --shard I/N` runs of one bundle) into OUT."""
    from rsz_infer.index import merge_indexes

    rows = merge_indexes(Path(out), [Path(s) for s in sources], search_method)
    click.echo(f"rsz-infer merge: {rows} tiles from {len(sources)} indexes -> {out}", err=True)


class LabelByDefault(click.Group):
    """`rsz-infer TILES...` runs `label`; `index` and `search` are subcommands. A first word that is no
    command, no file and close to a command name is a typo: "did you mean", not a labeling run."""

    default = "label"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        own_options = [*ctx.help_option_names, "--version"]  # the group's own: never a labeling run
        if args and args[0] not in self.commands and args[0] not in own_options:
            first = args[0]
            close = difflib.get_close_matches(first, list(self.commands), n=1, cutoff=0.6)
            if close and not first.startswith("-") and not Path(first).exists():
                ctx.fail(f"No such command '{first}'. Did you mean '{close[0]}'?")
            args = [self.default, *args]
        return super().parse_args(ctx, args)


@click.group(
    name="rsz-infer",
    cls=LabelByDefault,
    epilog=EPILOG,
    context_settings=HELP_OPTIONS,
)
@click.version_option(rsz_infer.__version__, "--version", prog_name="rsz-infer")
def cli() -> None:
    """Label tiles with new classes (`rsz-infer TILES... --classes new.txt`, the default command), or index
    tiles and search them by text or image."""


cli.add_command(label_command, name="label")
cli.add_command(index_command, name="index")
cli.add_command(search_command, name="search")
cli.add_command(merge_command, name="merge")


def main(argv: list[str] | None = None) -> None:
    """Entry point: `rsz-infer index|search ...`, otherwise the labeling command."""
    with sigterm_as_ctrl_c():
        cli.main(args=list(sys.argv[1:] if argv is None else argv), prog_name="rsz-infer")


if __name__ == "__main__":
    main()
