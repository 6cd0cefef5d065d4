"""One entry point: `export(run_dir, out, ...)` turns a trained run into a checked, self-describing bundle.

Steps: every ExportGraph of the model -> FP32 ONNX (+ FP16 ONNX) -> checks against PyTorch -> TensorRT
engines (optional) -> manifest.json with every file's sha256 -> the bundle folder, moved into place whole.
A bundle holds `{role}.onnx` (always), `{role}.fp16.onnx` (--fp16), `{role}.engine` + `.engine.json`
(--engine trt|auto), `tokenizer.json` (models with a text graph) and `manifest.json`.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import rsz_infer
from rsz_export.compare import compare, random_feeds
from rsz_export.fp16 import convert_fp16
from rsz_export.onnx_export import OPSET, export_onnx, graph_io, load_checked
from rsz_export.trt_build import (
    ENGINE_CHOICES,
    ShapeRange,
    build_engine,
    onnx_input_dims,
    optimisation_profile,
)
from rsz_infer.bundle import MANIFEST, GraphSpec, Manifest, manifest_problem, sha256_file
from rsz_infer.errors import RszError
from rsz_infer.images import (
    GDAL_ONLY_SUFFIXES,
    IMAGE_FILE_SUFFIXES,
    TileError,
    TileOptions,
    decode_image_file,
)
from rsz_infer.locking import OutputLock
from rsz_infer.outputs import check_out_dir
from rsz_infer.preprocess import PreprocessSpec
from rsz_infer.runners.ort import OrtRunner
from rsz_infer.runners.torch import TorchRunner
from rsz_infer.trt_lib import load_trt, trt_available
from rsz_train.models.base import ExportGraph, RszModel
from rsz_train.models.registry import model_kinds


@dataclass
class ExportSource:
    """A model and what the bundle must say about it (built from a run by `source_from_run`)."""

    model: RszModel
    preprocess: PreprocessSpec
    seen_classes: list[str]
    seen_calibration: float
    seen_descriptions: dict[str, str] = field(default_factory=dict)  # the text each was trained with
    attribute_names: list[str] = field(default_factory=list)
    attribute_phrases: list[str] = field(default_factory=list)
    text_prompt: str = "{description}"
    max_text_length: int = 64
    tokenizer_json: Path | None = None  # copied into the bundle when the model has a text graph
    class_embeddings: np.ndarray | None = None  # [C, D], for the FP16 top-1 check on tiles
    class_offsets: np.ndarray | None = None  # [C] their hubness correction, so the check labels as rsz-infer
    phrase_ridge: float = 0.0  # DSVA: how the run's attribute vectors were made (manifest.phrase_ridge)
    description_clauses: bool = False  # ... and whether clause by clause (manifest.description_clauses)
    # DSVA's hubness correction (manifest.hubness_penalty): the penalty, its neighbours and the class
    # embeddings [S, D] of seen_classes that it measures against
    hubness_penalty: float = 0.0
    hubness_neighbours: int = 3
    trained_class_embeddings: np.ndarray | None = None
    tiles: np.ndarray | None = None  # [N, 3, H, W] preprocessed test tiles, checked besides random inputs
    prompt_templates: list[str] = field(default_factory=list)  # CLIP: the prompt ensemble (manifest)
    about: dict = field(default_factory=dict)  # where the model came from, kept in manifest.extra["source"]
    gsd: float | None = None  # metres per pixel of the training images, when known (Manifest.gsd)
    gsd_source: str = ""  # where gsd came from, said in manifest.extra["gsd_source"] and the export summary
    # --int8 (rsz_export.int8): tiles to calibrate on (default the run's training tiles) and to check and time
    # the INT8 candidates on (the run's validation tiles; never the test split), and where they came from
    calibration: np.ndarray | None = None
    int8_check: np.ndarray | None = None
    calibration_info: dict = field(default_factory=dict)
    run_dir: Path | None = None  # its config, weights and classes ship in the bundle (--backend torch)
    training: dict = field(default_factory=dict)  # the run's rsz_train.runs.training_progress (manifest)


MAX_CHECK_TILES = 64
MAX_CALIBRATION_TILES = 256  # "a few hundred": more did not move the calibrated ranges
MAX_INT8_CHECK_TILES = 128
INT8_ROLES = ("image",)  # the graph that runs per tile; text/semantic/rerank run once per class file


TILE_KINDS = ", ".join(IMAGE_FILE_SUFFIXES)  # said when a folder has none


def tile_files(tiles_dir: Path) -> list[Path]:
    """The image files under `tiles_dir`, sorted: rsz-train's set (rsz_infer.images.IMAGE_FILE_SUFFIXES), so
    a folder of .bmp or .webp tiles rsz-infer labels is a folder of tiles here too. Hidden files (macOS's
    '._x.jpg' AppleDouble copies) are no tiles; GDAL-only rasters (.vrt names other files) are left out with
    one note."""
    files, gdal_only = [], []
    for p in Path(tiles_dir).rglob("*"):
        if p.name.startswith(".") or not p.is_file():
            continue
        suffix = p.suffix.lower()
        if suffix in IMAGE_FILE_SUFFIXES:
            files.append(p)
        elif suffix in GDAL_ONLY_SUFFIXES:
            gdal_only.append(p)
    if gdal_only:
        kinds = ", ".join(sorted({p.suffix.lower() for p in gdal_only}))
        print(
            f"note: {tiles_dir}: left out {len(gdal_only)} files read by GDAL only ({kinds}, e.g. "
            f"{min(gdal_only).relative_to(tiles_dir)}); tiles are {TILE_KINDS} files",
            file=sys.stderr,
        )
    return sorted(files)


def spread(items: list, n: int) -> list:
    """At most n items, evenly spaced (sorted class folders: every class gets its share)."""
    if len(items) <= n:
        return list(items)
    return [items[int(i * len(items) / n)] for i in range(n)]


def load_tiles(tiles_dir: Path, spec: PreprocessSpec) -> np.ndarray:
    """Up to MAX_CHECK_TILES images under `tiles_dir` (sorted), preprocessed as inference will; files that
    cannot be decoded are skipped with a warning (read_usable_tiles), as INT8's tiles are."""
    if not Path(tiles_dir).is_dir():  # a mistyped path, or one tile, is no folder "without tiles"
        what = "is a file" if Path(tiles_dir).exists() else "no such folder"
        raise RszError(f"--tiles {tiles_dir}: {what} (it takes a folder of tiles)")
    paths = tile_files(tiles_dir)[:MAX_CHECK_TILES]
    if not paths:
        raise RszError(f"{tiles_dir}: no image tiles ({TILE_KINDS}) to check the export on")
    return read_usable_tiles(paths, spec, "check", Path(tiles_dir))[1]


def read_tile(path: Path, spec: PreprocessSpec) -> np.ndarray:
    """The file decoded and preprocessed as rsz-infer does: rsz_infer.images.decode_image_file at rsz-infer's
    defaults (16-bit data stretched, not clipped at 255; grey to RGB; a file whose header declares more than
    --max-pixels refused before anything is decoded), then rsz_infer.preprocess. TileError when it cannot be
    read (a multi-page TIFF too: one image per file)."""
    from rsz_infer.preprocess import to_model_input

    options = TileOptions()  # rsz-infer's defaults (rsz-export has no --bands or --max-pixels)
    rgb, _ = decode_image_file(path, options)
    return to_model_input(rgb, spec)


def read_usable_tiles(
    paths: list[Path], spec: PreprocessSpec, what: str, folder: Path
) -> tuple[list[Path], np.ndarray]:
    """(the files read_tile can read, their arrays). A batch job never drops good tiles because of a bad
    one: the others are skipped, said in one warning line naming the first and the count; an RszError
    naming `folder` only when none is left."""
    usable, arrays, skipped = [], [], []
    for path in paths:
        try:
            arrays.append(read_tile(path, spec))
            usable.append(path)
        except TileError as err:
            skipped.append(f"{path}: {err}")
    if not usable:
        raise RszError(
            f"{folder}: none of its {len(paths)} {what} tiles can be decoded (first: {skipped[0]})"
        )
    if skipped:
        print(
            f"warning: {folder}: skipped {len(skipped)} of {len(paths)} {what} tiles that cannot be decoded "
            f"(first: {skipped[0]})",
            file=sys.stderr,
        )
    return usable, np.stack(arrays)


def _rsz_layout_data(report: dict) -> tuple[Path | None, str]:
    """(DIR, split name) of a run trained on an rsz-layout folder that is still here, else (None, "").
    report["data"] is the run's DataSource record (older runs: the folder as a string)."""
    data = report.get("data")
    if isinstance(data, dict):
        if data.get("layout") != "rsz" or not data.get("split_file"):
            return None, ""
        folder = Path(data["split_file"])
        data_dir, name = folder.parent.parent, folder.name
    elif isinstance(data, str) and report.get("split"):
        data_dir, name = Path(data), str(report["split"])
    else:
        return None, ""
    return (data_dir, name) if (data_dir / "splits" / name / "seen.txt").is_file() else (None, "")


def int8_tiles(
    run_dir: Path, report: dict, spec: PreprocessSpec, calibration_dir: Path | None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(calibration tiles, check tiles, manifest record) for --int8.

    Calibration: `calibration_dir`, else the run's training tiles. Check: the run's validation tiles
    (val_seen + val_unseen) when its data folder is here, else every 4th calibration file, held out."""
    from rsz_export.int8 import tiles_hash

    data_dir, split_name = _rsz_layout_data(report)
    split = None
    if data_dir is not None:
        from rsz_train.data.formats import load_split

        split = load_split(data_dir, split_name)
    if calibration_dir is not None:
        root = Path(calibration_dir)
        if not root.is_dir():  # a mistyped path is no folder "without tiles"
            what = "is a file" if root.exists() else "no such folder"
            raise RszError(f"--calibration {calibration_dir}: {what} (it takes a folder of tiles)")
        files = tile_files(root)
        if not files:
            raise RszError(f"{calibration_dir}: no image tiles ({TILE_KINDS}) to calibrate INT8 on")
    elif split is not None:
        root = data_dir / "images"
        files = [root / p for p in split.train]
    elif not report:  # load_run's report of a run with no report.json yet
        raise RszError(
            f"{run_dir}: no report.json, the run has not finished (rsz-train --resume finishes it), so its "
            "training tiles are not known; pass --calibration DIR"
        )
    else:
        raise RszError(
            f"{run_dir}: the run's training tiles are not here (report.json names no rsz-layout data folder "
            "that exists); pass --calibration DIR"
        )
    if split is not None:
        check_root = data_dir / "images"
        check_files = [check_root / p for p in split.val_seen + split.val_unseen]
        check_from = f"validation tiles of {data_dir} split {split_name}"
    else:
        check_root = root
        check_files, files = files[3::4], [f for i, f in enumerate(files) if i % 4 != 3]
        check_from = f"every 4th tile of {root}, held out of calibration"
    files = spread(files, MAX_CALIBRATION_TILES)
    check_files = spread(check_files, MAX_INT8_CHECK_TILES)
    if not files or not check_files:
        raise RszError(f"{root}: too few tiles to calibrate and check INT8 (need at least 4)")
    listed, listed_check = len(files), len(check_files)
    files, calibration = read_usable_tiles(files, spec, "calibration", root)
    check_files, check = read_usable_tiles(check_files, spec, "check", check_root)
    info = {
        "source": str(root),
        "tiles": len(files),
        "skipped": listed
        - len(files),  # files read_tile cannot read (undecodable: rsz-infer skips them too; multi-page TIFFs)
        "sha256": tiles_hash(files, root),  # of the tiles calibrated on
        "check_tiles": len(check_files),
        "check_skipped": listed_check - len(check_files),
        "check_source": check_from,
    }
    return calibration, check, info


def source_from_run(
    run_dir: Path,
    kind: str,
    tiles_dir: Path | None = None,
    int8: bool = False,
    calibration_dir: Path | None = None,
) -> ExportSource:
    from rsz_infer.tokenizer import DEFAULT_MAX_LENGTH
    from rsz_train.evaluate import hubness_correction
    from rsz_train.runs import load_run, training_progress
    from rsz_train.text import minilm_tokenizer_json

    model, info = load_run(run_dir, kind=kind)
    training = training_progress(Path(run_dir), info.config, info.report)
    if not training["finished"]:  # exported all the same: a half-trained model may be what the user wants
        done, epochs, best = training["epochs_done"], training["epochs"], training["best_epoch"]
        print(
            f"warning: {run_dir}: training stopped at epoch {done} of {epochs} (no report.json); "
            f"exporting its best checkpoint so far (epoch {best})"
            # lambda is chosen on validation after the last epoch: until then classes.json holds 0
            + (", without the GZSL calibration (lambda 0)" if not info.seen_calibration else "")
            + f"; finish it with rsz-train {info.kind} --data ... --out {run_dir} --resume",
            file=sys.stderr,
        )
    model_config = getattr(info.config, "model", None)
    with torch.no_grad():
        classes = model.encode_classes(model.class_inputs(info.semantics)).float().numpy()
    seen_rows = [info.class_names.index(name) for name in info.seen]
    source = ExportSource(
        model=model,
        preprocess=info.preprocess,
        seen_classes=list(info.seen),
        seen_calibration=float(info.seen_calibration),
        seen_descriptions={
            name: info.semantics.descriptions[info.class_names.index(name)] for name in info.seen
        },
        attribute_names=list(info.task.attribute_names),
        attribute_phrases=list(info.task.attribute_phrases),
        text_prompt=getattr(model_config, "text_prompt", "{description}"),
        max_text_length=int(getattr(model_config, "max_text_length", DEFAULT_MAX_LENGTH)),
        tokenizer_json=minilm_tokenizer_json(),
        class_embeddings=classes,
        class_offsets=hubness_correction(model, classes, seen_rows),
        phrase_ridge=float(info.phrase_ridge),
        description_clauses=bool(info.description_clauses),
        hubness_penalty=float(getattr(model_config, "hubness_penalty", 0.0)),
        hubness_neighbours=int(getattr(model_config, "hubness_neighbours", 3)),
        trained_class_embeddings=classes[seen_rows],
        gsd=info.config.train.gsd,
        gsd_source="" if info.config.train.gsd is None else f"the run ({run_dir / 'config.yaml'}: train.gsd)",
        tiles=None if tiles_dir is None else load_tiles(tiles_dir, info.preprocess),
        run_dir=Path(run_dir),
        training=training,
    )
    if int8:
        source.calibration, source.int8_check, source.calibration_info = int8_tiles(
            run_dir, info.report, info.preprocess, calibration_dir
        )
    return source


def export(
    run_dir: Path | str,
    out: Path | str | None = None,
    kind: str = "dsva",
    fp16: bool = False,
    engine: str = "auto",
    batch: str = "1:32:256",
    force: bool = False,
    tiles: Path | str | None = None,
    gsd: float | None = None,
    int8: bool = False,
    calibration: Path | str | None = None,
) -> Path:
    """Export the run `run_dir` (a `kind` run) into the bundle folder `out` (default models/<run>).

    `tiles`: a folder of test tiles; the image graph is also checked on them (FP16: same top-1 labels).
    `gsd`: metres per pixel of the training images, for the manifest; default: the run's own (rsz-train --gsd,
    config.yaml train.gsd), which an explicit `gsd` overrides.
    `int8`: also an INT8 image graph (rsz_export.int8), calibrated on `calibration` (default: the run's
    training tiles) and checked on the run's validation tiles."""
    check_gsd(gsd)
    if kind not in model_kinds():
        raise RszError(f"--model {kind}: unknown model kind (known: {', '.join(model_kinds())})")
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else Path("models") / run_dir.name
    if calibration is not None and not int8:
        raise RszError("--calibration: only used with --int8")
    inputs = [Path(p) for p in (run_dir, tiles, calibration) if p is not None]
    with export_lock(out, force, inputs):  # before the run is loaded: a refused --out costs nothing
        # a different bundle at --out is refused now, from the run's files, before its tiles are read
        refuse_known_difference(out, force, kind, fp16, int8, run_dir, gsd)
        source = source_from_run(
            run_dir, kind, None if tiles is None else Path(tiles), int8, calibration and Path(calibration)
        )
        if gsd is not None:
            source.gsd, source.gsd_source = gsd, "rsz-export --gsd"
        return export_locked(source, out, fp16, engine, batch, force)


def check_gsd(gsd: float | None) -> None:
    """--gsd must be a finite number above zero (the manifest is JSON: inf would be written as Infinity)."""
    if gsd is not None and not (math.isfinite(gsd) and gsd > 0):
        raise RszError(f"--gsd {gsd}: metres per pixel must be a finite number above zero")


def _check_graph(graph: ExportGraph, onnx_path: Path, precision: str, source: ExportSource) -> dict:
    """ONNX Runtime against PyTorch FP32 on fresh random inputs (and on the tiles for the image graph)."""
    inputs, _ = graph_io(load_checked(onnx_path))
    reference = TorchRunner(graph.module, input_names=graph.input_names, output_names=graph.output_names)
    candidate = OrtRunner(onnx_path)
    feeds = [random_feeds(inputs, batch=3, seq=9, seed=1), random_feeds(inputs, batch=1, seq=5, seed=2)]
    class_embeddings = None
    if graph.role == "image" and source.tiles is not None:
        feeds.append({"image": np.ascontiguousarray(source.tiles, dtype=np.float32)})
        class_embeddings = source.class_embeddings
    what = f"{onnx_path.name} ({graph.role}, {precision})"
    checks = compare(reference, candidate, feeds[:2], precision, what, None, source.model.scoring_rule)
    if len(feeds) > 2:
        checks += compare(
            reference,
            candidate,
            feeds[2:],
            precision,
            what + " on tiles",
            class_embeddings,
            source.model.scoring_rule,
            source.class_offsets,
        )
    return {
        "max_relative_error": max(c.relative_error for c in checks),
        "min_cosine": min(c.min_cosine for c in checks),
        "tiles": 0 if source.tiles is None or graph.role != "image" else len(source.tiles),
    }


def _engine_library(engine: str):  # TrtLib | None
    if engine not in ENGINE_CHOICES:
        raise RszError(f"--engine {engine}: expected one of {', '.join(ENGINE_CHOICES)}")
    if engine == "none":
        return None
    return load_trt() if engine == "trt" else trt_available()


def _fingerprint(manifest: Manifest) -> str:
    """What makes two bundles the same: everything but engines and build timings."""
    d = json.loads(manifest.to_json())
    # INT8 graphs are left out like engines: which candidate wins depends on timings of this machine
    d["files"] = {
        k: v for k, v in d["files"].items() if ".engine" not in k and k != "timing.cache" and ".int8" not in k
    }
    for g in d["graphs"].values():
        g["engines"] = []
    # ... but whether INT8 was asked for, and on which calibration tiles, is content: a bundle without INT8
    # is not "the same" as an --int8 export of the run
    int8_asked = {role: record.get("calibration") for role, record in d["extra"].get("int8", {}).items()}
    drop = ("engines", "engine_note", "int8", "speed")
    d["extra"] = {k: v for k, v in d["extra"].items() if k not in drop}
    if int8_asked:
        d["extra"]["int8"] = int8_asked
    d["extra"]["checks"] = {k: v for k, v in d["extra"].get("checks", {}).items() if not k.endswith(".int8")}
    for variants in d["extra"].get("variants", {}).values():
        variants.pop("int8", None)
    return json.dumps(d, sort_keys=True)


def known_difference(
    old: Manifest,
    kind: str,
    fp16: bool,
    int8: bool,
    run_dir: Path | None = None,
    gsd: float | None = None,
) -> str | None:
    """How the bundle asked for will differ from `old` (the manifest at --out), told before building it;
    None when nothing known up front differs. Each item is part of _fingerprint, so a difference here
    is one the late check would find too (never a refusal of what would be kept as "the same bundle")."""
    if old.model_kind != kind:
        return f"a {old.model_kind} bundle, this export is {kind}"
    if old.rsz_version != rsz_infer.__version__:
        return f"written by rsz {old.rsz_version}, this is rsz {rsz_infer.__version__}"
    precision = "fp16" if fp16 else "fp32"
    if old.extra.get("default_precision") != precision:
        return f"its default precision is {old.extra.get('default_precision')}, this export's is {precision}"
    if bool(old.extra.get("int8")) != int8:
        return "it has an INT8 graph, this export has none" if not int8 else "it has no INT8 graph (--int8)"
    if gsd is not None and old.gsd != gsd:
        return f"its gsd is {old.gsd}, this export's is {gsd:g}"
    if run_dir is not None:
        from rsz_train.runs import CLASSES, CONFIG, WEIGHTS

        for name in (WEIGHTS, CONFIG, CLASSES):  # _ship_run_files copies them as run.NAME
            shipped = old.files.get(f"run.{name}")
            path = Path(run_dir) / name
            if path.is_file() and shipped != sha256_file(path):
                return f"it holds another run's {name}" if shipped else f"it holds no run {name}"
    return None


def refuse_known_difference(
    out: Path,
    force: bool,
    kind: str,
    fp16: bool,
    int8: bool,
    run_dir: Path | None = None,
    gsd: float | None = None,
) -> None:
    """The "different bundle" refusal of export_locked, said before any work when known_difference can
    tell (the caller holds export_lock(out): check_out let only a bundle through)."""
    if force or not out.exists():
        return
    why = known_difference(_read_manifest(out), kind, fp16, int8, run_dir, gsd)
    if why:
        raise RszError(f"{out}: a different bundle is already there ({why}); pass --force to replace it")


def export_model(
    source: ExportSource,
    out: Path | str,
    fp16: bool = False,
    engine: str = "auto",
    batch: str = "1:32:256",
    force: bool = False,
) -> Path:
    """Export an in-memory model (what `export` does after loading the run)."""
    out = Path(out)
    check_gsd(source.gsd)
    with export_lock(out, force, [source.run_dir] if source.run_dir is not None else []):
        refuse_before_building(source, out, fp16, force)
        return export_locked(source, out, fp16, engine, batch, force)


def refuse_before_building(source: ExportSource, out: Path, fp16: bool, force: bool) -> None:
    """refuse_known_difference for a loaded source, before any graph is built (minutes with FP16, INT8 or
    TensorRT); export_locked's fingerprint check stays for what only the built bundle tells (weights of an
    in-memory model, checks, class embeddings). export() makes this check before loading the run instead."""
    int8 = source.calibration is not None
    refuse_known_difference(out, force, source.model.kind, fp16, int8, source.run_dir, source.gsd)


def export_locked(
    source: ExportSource,
    out: Path,
    fp16: bool,
    engine: str,
    batch: str,
    force: bool,
) -> Path:
    """export_model's work; the caller holds export_lock(out), taken before it loads the model (a second
    export to the same --out fails at once, a refused --out costs nothing), and has refused a bundle known
    to differ (refuse_known_difference)."""
    batch_range = ShapeRange.parse(batch)
    model = source.model.eval()
    lib = _engine_library(engine)
    graphs = model.export_graphs()
    if not any(g.role == "image" for g in graphs):
        raise RszError(f"{type(model).__name__}: export_graphs() has no image graph")
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        manifest = _write_bundle(source, graphs, staging, fp16, lib, batch_range)
        problem = manifest_problem(manifest)  # rsz-infer's own check, before the bundle takes --out's place
        if problem:
            raise RszError(f"{out}: rsz-infer could not read this bundle ({problem}); nothing was written")
        if out.exists() and not force:  # check_out let only a bundle through
            if _fingerprint(_read_manifest(out)) == _fingerprint(manifest):
                # same content: keep what is there (engines included), and say so: the output is otherwise
                # the same as a fresh export's
                print(f"note: {out}: the same bundle is already there; kept as it is", file=sys.stderr)
                return out
            raise RszError(f"{out}: a different bundle is already there; pass --force to replace it")
        # mkdtemp makes its folder 0700; a bundle gets the mode any new folder of this user gets
        os.chmod(staging, 0o777 & ~_umask())
        if out.exists():  # a bundle and --force (check_out)
            # No rename swaps two folders at once: the old bundle steps aside as .NAME.old first. A kill
            # between the two renames leaves no --out but the old bundle whole; the next export to --out
            # puts it back (_recover) before doing anything else.
            old = _old_path(out)
            out.rename(old)
            staging.rename(out)
            _discard(old, out)
        else:
            staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


# Names beside --out that belong to its exports: the staging folder (tempfile.mkdtemp: prefix + 8 characters
# of [a-z0-9_]), the replaced bundle while the new one moves in, and the lock (rsz_infer.locking.lock_path).
_STAGING_SUFFIX = re.compile(r"[a-z0-9_]{8}")


def _old_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.old")


def _discard(old: Path, out: Path) -> None:
    """Delete the set-aside bundle `old` of `out`: first renamed to a staging name, then removed. A kill
    while removing leaves a staging folder (removed by the next export, _recover), never a half-deleted
    .NAME.old that is no bundle any more (which _recover must refuse to delete, and so every export)."""
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    old.rename(trash)  # onto the empty folder mkdtemp made: one rename
    shutil.rmtree(trash)


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read the umask is to set it: put it back at once
    os.umask(mask)
    return mask


@contextmanager
def export_lock(out: Path, force: bool, inputs: Iterable[Path] = ()) -> Iterator[None]:
    """Held while exporting into `out`: check_out, then one export at a time (rsz_infer.locking: a flock on
    .NAME.lock beside `out`, released by a kill too), then what a killed export left is cleaned up (holding
    the lock, no running export owns it) and check_out again on what is there now."""
    check_out(out, force, inputs)  # first without side effects: a refused --out creates nothing
    try:  # the folders made for the lock file go again with it when the export fails (OutputLock.release)
        lock = OutputLock(out, "export")
    except RszError:  # OutputLock's wording names rsz-infer
        raise RszError(
            f"{out}: another rsz-export is writing it right now; wait for it to finish or choose "
            "another --out"
        ) from None
    with lock:
        _recover(out)
        check_out(out, force, inputs)
        yield


def _recover(out: Path) -> None:
    """What a killed export into `out` left beside it (the caller holds export_lock(out)): staging folders
    are removed; an old bundle set aside by a replace is put back when --out is missing (the kill came
    between the two renames), else removed (the new bundle was in place already). Said in one line each."""
    prefix = f".{out.name}."
    stale = [
        p
        for p in sorted(out.parent.iterdir())
        if p.name.startswith(prefix)
        and _STAGING_SUFFIX.fullmatch(p.name[len(prefix) :])
        and p.is_dir()
        and not p.is_symlink()
    ]
    for path in stale:
        shutil.rmtree(path)
    if stale:
        names = ", ".join(p.name for p in stale)
        print(
            f"note: removed {len(stale)} staging folder(s) of an interrupted rsz-export: {names}",
            file=sys.stderr,
        )
    old = _old_path(out)
    if not os.path.lexists(old):
        return
    if not os.path.lexists(out):
        old.rename(out)
        print(
            f"note: {out}: put back the bundle an interrupted rsz-export had moved to {old.name}",
            file=sys.stderr,
        )
    elif old.is_dir() and not old.is_symlink() and _not_a_bundle(old) is None:
        _discard(old, out)
        print(f"note: removed {old.name}, the bundle an interrupted rsz-export had replaced", file=sys.stderr)
    else:  # not what a replace sets aside: not rsz-export's to delete, and a replace needs the name
        raise RszError(f"{old}: is in the way of rsz-export (not a bundle it set aside); move it elsewhere")


def _read_manifest(folder: Path) -> Manifest:
    """The bundle's manifest as it is written (no file or value checks: those are rsz-infer's, on loading)."""
    data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    return Manifest.from_dict(data)


def _not_a_bundle(folder: Path) -> str | None:
    """Why `folder` is not an rsz bundle, None when it is one: its manifest.json reads as a Manifest and every
    entry of the folder is a plain file the manifest lists. Anything else in it (a run, a user's file, a
    subfolder) is not rsz-export's to delete, so --force refuses such a folder."""
    if not (folder / MANIFEST).is_file():
        return f"no {MANIFEST}"
    try:
        manifest = _read_manifest(folder)
    except (
        OSError,
        json.JSONDecodeError,
        UnicodeDecodeError,
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
    ):
        return f"its {MANIFEST} is not an rsz manifest"
    listed = set(manifest.files) | {MANIFEST}
    for entry in sorted(folder.iterdir()):
        if entry.name not in listed or entry.is_symlink() or not entry.is_file():
            return f"{entry.name} is not one of the bundle's files"
    return None


def check_out(out: Path, force: bool, inputs: Iterable[Path | str] = ()) -> None:
    """--out rules, checked before any work: --out is a new folder, or an rsz bundle (same content: kept;
    different: replaced with --force only); never a file, a link or another folder, and never the run (or
    another input) nor a folder inside or around it. One-line RszError otherwise."""
    where = out.resolve()
    for given in inputs:
        path = Path(given).resolve()
        if where == path or path in where.parents:
            raise RszError(
                f"--out {out}: is {given} or inside it, an input of this export; choose another --out"
            )
        if where in path.parents:
            raise RszError(f"--out {out}: holds {given}, an input of this export; choose another --out")
    if out.is_symlink():
        raise RszError(f"--out {out}: is a symbolic link; give the bundle folder itself")
    check_out_dir(out.parent, out)  # the folder the lock's mkdir and the staging folder go into
    if not out.exists():
        return
    if not out.is_dir():
        raise RszError(f"--out {out}: is a file, not a bundle folder; choose another --out")
    problem = _not_a_bundle(out)
    if problem:
        only = "; --force replaces only an rsz bundle" if force else ""
        raise RszError(
            f"--out {out}: exists and is not an rsz bundle ({problem}){only}; choose another --out"
        )


def _concrete_shapes(graph: ExportGraph, inputs: list, outputs: list) -> tuple[list, list]:
    """Shapes as the manifest states them: the graph's named dynamic axes, every other axis a number.

    Shape inference sometimes names fixed axes symbolically (e.g. "Sliceembedding_dim_1"); the example run
    of the PyTorch module gives their real size."""
    with torch.no_grad():
        results = graph.module(*graph.example_inputs)
    results = results if isinstance(results, tuple | list) else (results,)
    examples = dict(zip(graph.input_names, graph.example_inputs)) | dict(zip(graph.output_names, results))
    for spec in inputs + outputs:
        dynamic = graph.dynamic_axes.get(spec.name, {})
        actual = examples[spec.name].shape
        spec.shape = [dynamic[i] if i in dynamic else int(actual[i]) for i in range(len(actual))]
    return inputs, outputs


def _ship_run_files(run_dir: Path, staging: Path) -> dict:
    """The run's config, class record and safetensors weights, for `rsz-infer --backend torch` (the model
    code comes from rsz_train; nothing pickled is shipped or loaded)."""
    from rsz_train.runs import CLASSES, CONFIG, WEIGHTS

    shipped = {"config": CONFIG, "classes": CLASSES, "weights": WEIGHTS}
    record = {}
    for key, name in shipped.items():
        target = f"run.{name}"
        shutil.copyfile(run_dir / name, staging / target)
        record[key] = target
    return record


def _int8_variant(
    graph: ExportGraph, fp32_path: Path, staging: Path, source: ExportSource, extra: dict, keep_qdq: bool
) -> None:
    """The INT8 graph of one role (rsz_export.int8): candidates measured on the check tiles, the fastest that
    passes shipped as <role>.int8.onnx; none passing ships none and says why (extra["int8"][role])."""
    from rsz_export.int8 import quantize_graph

    check = np.ascontiguousarray(source.int8_check, dtype=np.float32)
    reference = TorchRunner(graph.module, input_names=graph.input_names, output_names=graph.output_names)
    expected = reference.infer({"image": check})
    out_path = staging / f"{graph.role}.int8.onnx"
    fp16_name = extra["variants"][graph.role].get("fp16")
    result = quantize_graph(
        fp32_path,
        out_path,
        expected,
        source.calibration,
        check,
        source.class_embeddings,
        source.model.scoring_rule,
        source.class_offsets,
        keep_qdq=keep_qdq,
        also_timed={"fp16": staging / fp16_name} if fp16_name else None,
    )
    record = result.record() | {"calibration": source.calibration_info}
    speed = extra.setdefault("speed", {}).setdefault("cpu", {})
    speed.setdefault("batch", result.batch)
    speed["fp32"] = round(result.fp32_ms_per_batch, 2)
    if fp16_name:
        speed["fp16"] = round(result.timings["fp16"], 2)
    if result.chosen is None:
        # each candidate's own reason (the measured value against the limit): what to change is in there
        why = "; ".join(f"{c.method}: {c.reason}" for c in result.candidates)
        record["note"] = f"no INT8 graph shipped: no candidate passed the check ({why})"
    else:
        extra["variants"][graph.role]["int8"] = out_path.name
        extra["checks"][f"{graph.role}.int8"] = {
            "min_cosine": result.chosen.min_cosine,
            "label_changes": result.chosen.label_changes,
            "tiles": len(check),
            "tiles_from": source.calibration_info.get("check_source", ""),
        }
        if graph.role == "image":
            speed["int8"] = round(result.chosen.ms_per_batch, 2)
    if result.qdq is not None and result.qdq.path is not None:
        record["qdq_graph"] = result.qdq.path.name
    extra.setdefault("int8", {})[graph.role] = record


def _int8_engine(
    role: str,
    info: dict,
    spec: GraphSpec,
    staging: Path,
    lib,
    batch: ShapeRange,
    seq: ShapeRange,
    extra: dict,
) -> None:  # lib: TrtLib
    """A TensorRT engine from the role's QDQ INT8 graph (TensorRT and TensorRT-RTX import Q/DQ nodes)."""
    qdq_name = info.get("qdq_graph")
    if not qdq_name:
        info["engine_note"] = "no INT8 engine: no QDQ graph passed the check (a dynamic graph does not parse)"
        return
    qdq_path = staging / qdq_name
    profile = optimisation_profile(onnx_input_dims(qdq_path), batch, seq)
    engine_path = staging / f"{role}.int8.engine"
    try:
        sidecar = build_engine(qdq_path, engine_path, profile, "int8", staging / "timing.cache", lib=lib)
    except RszError as err:
        info["engine_note"] = f"no INT8 engine: {str(err).replace(str(staging) + '/', '')}"
        if qdq_name != spec.onnx and qdq_name != extra["variants"][role].get("int8"):
            qdq_path.unlink()  # kept only as the engine's source
            del info["qdq_graph"]
        return
    spec.engines.append(engine_path.name)
    extra["engines"][engine_path.name] = sidecar


def _write_bundle(
    source: ExportSource,
    graphs: list[ExportGraph],
    staging: Path,
    fp16: bool,
    lib,  # TrtLib | None
    batch: ShapeRange,
) -> Manifest:
    """The bundle in `staging`, in three steps: graphs (ONNX, checks, variants), engines, manifest."""
    seq = ShapeRange(1, min(32, source.max_text_length), source.max_text_length)
    extra: dict = {
        "opset": OPSET,
        "default_precision": "fp16" if fp16 else "fp32",
        "variants": {},
        "checks": {},
    }
    if source.about:
        extra["source"] = dict(source.about)
    if source.training:
        extra["training"] = dict(source.training)
    if source.gsd is not None:
        extra["gsd_source"] = source.gsd_source or "given by the caller"
    specs = {graph.role: _write_graph(graph, source, staging, fp16, lib, extra) for graph in graphs}
    _write_engines(specs, staging, lib, batch, seq, extra)
    return _write_manifest(source, specs, staging, extra)


def _write_graph(
    graph: ExportGraph,
    source: ExportSource,
    staging: Path,
    fp16: bool,
    lib,
    extra: dict,
) -> GraphSpec:
    """One graph: FP32 ONNX checked against PyTorch, the FP16 variant (--fp16) and the INT8 one (--int8)."""
    fp32_path = export_onnx(graph, staging / f"{graph.role}.onnx")
    inputs, outputs = _concrete_shapes(graph, *graph_io(load_checked(fp32_path)))
    extra["checks"][f"{graph.role}.fp32"] = _check_graph(graph, fp32_path, "fp32", source)
    extra["variants"][graph.role] = {"fp32": fp32_path.name}
    default_path, precision = fp32_path, "fp32"
    if fp16:
        fp16_path = staging / f"{graph.role}.fp16.onnx"
        why = {op: "kept FP32 by the model (ExportGraph.fp32_ops)" for op in graph.fp32_ops}
        extra["fp16"] = convert_fp16(fp32_path, fp16_path, why)
        load_checked(fp16_path)
        extra["checks"][f"{graph.role}.fp16"] = _check_graph(graph, fp16_path, "fp16", source)
        extra["variants"][graph.role]["fp16"] = fp16_path.name
        default_path, precision = fp16_path, "fp16"
    if source.calibration is not None and graph.role in INT8_ROLES:
        _int8_variant(graph, fp32_path, staging, source, extra, keep_qdq=lib is not None)
    return GraphSpec(onnx=default_path.name, precision=precision, inputs=inputs, outputs=outputs)


def _write_engines(
    specs: dict[str, GraphSpec],
    staging: Path,
    lib,
    batch: ShapeRange,
    seq: ShapeRange,
    extra: dict,
) -> None:
    """A TensorRT engine (+ sidecar) per graph when a TensorRT library is in use; INT8 engines too."""
    if lib is None:
        extra["engine_note"] = "no TensorRT engines (--engine none, or no TensorRT library imports)"
        return
    extra["engines"] = {}
    for role, spec in specs.items():
        onnx_path = staging / spec.onnx
        profile = optimisation_profile(onnx_input_dims(onnx_path), batch, seq)
        engine_path = staging / f"{role}.engine"
        sidecar = build_engine(
            onnx_path, engine_path, profile, spec.precision, staging / "timing.cache", lib=lib
        )
        spec.engines.append(engine_path.name)
        extra["engines"][engine_path.name] = sidecar
    for role, info in extra.get("int8", {}).items():
        _int8_engine(role, info, specs[role], staging, lib, batch, seq, extra)


def _write_manifest(
    source: ExportSource, specs: dict[str, GraphSpec], staging: Path, extra: dict
) -> Manifest:
    """Run files, tokenizer, then manifest.json listing every file of the bundle with its sha256."""
    if source.run_dir is not None:
        extra["torch"] = _ship_run_files(source.run_dir, staging)
    has_text = "text" in specs
    if has_text and source.tokenizer_json is not None:
        shutil.copyfile(source.tokenizer_json, staging / "tokenizer.json")
    image_outputs = {t.name: t for t in specs["image"].outputs}
    model = source.model
    if "classifier" in specs:  # MCFA's final-stage classifier: its logits' columns, in order, and how
        extra["classifier_classes"] = list(model.task.extra["classifier_classes"])
        extra["classifier_fit"] = model.classifier_fit()  # rsz-infer fits one for other classes
    manifest = Manifest(
        model_kind=model.kind,
        rsz_version=rsz_infer.__version__,
        preprocess=source.preprocess,
        graphs=specs,
        class_embedding=model.class_embedding,
        scoring_rule=model.scoring_rule,
        logit_scale=float(model.logit_scale()),
        embedding_dim=int(image_outputs["embedding"].shape[-1]),
        seen_classes=list(source.seen_classes),
        seen_calibration=float(source.seen_calibration),
        seen_descriptions=dict(source.seen_descriptions),
        tokenizer="tokenizer.json" if has_text else "",
        max_text_length=source.max_text_length,
        text_prompt=source.text_prompt,
        attribute_names=list(source.attribute_names),
        attribute_phrases=list(source.attribute_phrases),
        phrase_ridge=float(source.phrase_ridge),
        description_clauses=bool(source.description_clauses),
        hubness_penalty=float(source.hubness_penalty),
        hubness_neighbours=int(source.hubness_neighbours),
        trained_class_embeddings=(
            [[round(float(v), 7) for v in row] for row in source.trained_class_embeddings]
            if source.hubness_penalty and source.trained_class_embeddings is not None
            else []
        ),
        prompt_templates=list(source.prompt_templates),
        gsd=source.gsd,
        extra=extra,
    )
    manifest.files = {f.name: sha256_file(f) for f in sorted(staging.iterdir()) if f.is_file()}
    (staging / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
    return manifest
