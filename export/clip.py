"""`rsz-export clip --checkpoint PATH`: a CLIP checkpoint users already have -> a checked rsz bundle.

The checkpoint is read by rsz_train.models.clip (open_clip state dict or safetensors, or a Hugging Face
CLIPModel folder); the bundle is written by rsz_export.api.export_locked like every other bundle (FP32 and
FP16 ONNX checked against open_clip's / transformers' own forward, TensorRT-RTX engines), with CLIP's
tokenizer as tokenizer.json and the prompt templates in the manifest.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from rsz_export.api import (
    ExportSource,
    check_gsd,
    export_lock,
    export_locked,
    int8_tiles,
    load_tiles,
    refuse_before_building,
)
from rsz_export.clip_tokenizer import hf_clip_tokenizer, open_clip_tokenizer, write_tokenizer_json
from rsz_infer.errors import RszError
from rsz_infer.prompts import DEFAULT_TEMPLATES, read_templates
from rsz_train.models.clip import ClipModel, ClipSource, load_clip


def clip_source(
    model: ClipModel, tokenizer_json: Path, templates: list[str], tiles: Path | None
) -> ExportSource:
    about = {
        "checkpoint": Path(model.source.path).name,
        "format": model.source.format,
        "arch": model.source.arch,
        "arch_inferred": model.source.inferred,
    }
    if model.source.same_shapes:
        about["same_shapes"] = list(model.source.same_shapes)
    return ExportSource(
        model=model,
        preprocess=model.preprocess,
        seen_classes=[],  # zero-shot: no class was trained on, so no calibrated stacking applies
        seen_calibration=0.0,
        text_prompt="{name}",
        max_text_length=model.context_length,
        tokenizer_json=tokenizer_json,
        tiles=None if tiles is None else load_tiles(tiles, model.preprocess),
        prompt_templates=list(templates),
        about=about,
    )


# Published checkpoints whose activation is OpenAI's QuickGELU although their shapes read as the plain
# architecture: name prefix (of the file, or of its folder) -> (whose, the --arch to pass). GeoRSCLIP's
# authors build RS5M_ViT-B-32 (and its RSICD / RSITMD fine-tunes) with
# open_clip.create_model_and_transforms("ViT-B/32", pretrained="openai") and load the file into it
# (om-ai-lab/RS5M inference/inference.py, build_model), i.e. OpenAI's QuickGELU model; their ViT-H-14 is
# built from a LAION tag (plain GELU), and RemoteCLIP's README builds the plain names. SkyScript ships its
# models as open_clip's epoch_20.pt in a folder named after the model; its ViT-L14 ones start from OpenAI's
# ViT-L-14 and are evaluated with --force-quick-gelu (wangzhecheng/SkyScript
# test_scene_and_fine_grained_classification.ipynb), its ViT-B32 one starts from LAION's laion2b_e16 (GELU).
QUICKGELU_CHECKPOINTS = {
    "rs5m_vit-b-32": ("GeoRSCLIP's", "ViT-B-32-quickgelu"),
    "skyclip_vit_l14": ("SkyScript's", "ViT-L-14-quickgelu"),
    "clip_vit_l14_laion_rs": ("SkyScript's", "ViT-L-14-quickgelu"),
}


def _run_folder(path: Path) -> Path:
    """The folder naming a training checkpoint's model: open_clip's run writes NAME/checkpoints/epoch_N.pt,
    SkyScript's zips hold NAME/epoch_N.pt."""
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def default_out(checkpoint: Path) -> Path:
    """models/<checkpoint name without suffix>; for open_clip's epoch_N.pt / epoch_latest.pt, which every
    training run (SkyCLIP's models too) writes under the same names, models/<its run folder>."""
    run = _run_folder(Path(checkpoint).absolute())
    if re.fullmatch(r"epoch_(\d+|latest)", checkpoint.stem) and run.name:
        return Path("models") / run.name
    return Path("models") / checkpoint.stem


def arch_note(source: ClipSource) -> str:
    """What to tell the user about the architecture (said whenever it was inferred)."""
    if source.format == "hf":
        return "Hugging Face CLIPModel"
    if not source.inferred:
        return f"open_clip {source.arch}"
    note = f"open_clip {source.arch} (inferred from the weights' shapes"
    if source.same_shapes:
        note += f"; same shapes: {', '.join(source.same_shapes)}, pass --arch for one of those"
    note += ")"
    path = Path(source.path)
    for name in (path.name, _run_folder(path).name):
        for prefix, (whose, arch) in QUICKGELU_CHECKPOINTS.items():
            if name.lower().startswith(prefix) and arch in source.same_shapes:
                told = f"{name} is named as {whose}, run by its authors with QuickGELU: pass --arch {arch}"
                return f"{note}; {told}"
    quick = [name for name in source.same_shapes if name == f"{source.arch}-quickgelu"]
    if quick:  # no published name to go by (a renamed file, a checkpoint rsz does not know)
        note += (
            f"; the activation is not in the weights: if its authors run it with QuickGELU (open_clip's "
            f"pretrained='openai', or --force-quick-gelu), pass --arch {quick[0]}"
        )
    return note


def export_clip(
    checkpoint: Path | str,
    out: Path | str | None = None,
    arch: str | None = None,
    templates: Path | str | None = None,
    fp16: bool = False,
    engine: str = "auto",
    batch: str = "1:32:256",
    force: bool = False,
    tiles: Path | str | None = None,
    gsd: float | None = None,
    int8: bool = False,
    calibration: Path | str | None = None,
) -> tuple[Path, ClipModel]:
    """Export a CLIP checkpoint into the bundle folder `out` (default: `default_out`).

    `int8`: also an INT8 image graph (rsz_export.int8), calibrated on the tiles of `calibration` (required: a
    checkpoint comes with no training tiles) and checked on every 4th of them, held out."""
    checkpoint = Path(checkpoint)
    if int8 and calibration is None:
        raise RszError(
            "rsz-export clip --int8: pass --calibration DIR (tiles to calibrate and check INT8 on)"
        )
    if calibration is not None and not int8:
        raise RszError("--calibration: only used with --int8")
    check_gsd(gsd)
    template_list = read_templates(templates) if templates is not None else list(DEFAULT_TEMPLATES)
    out = Path(out) if out is not None else default_out(checkpoint)
    inputs = [Path(p) for p in (checkpoint, tiles, calibration) if p is not None]
    # --out is checked and locked before the checkpoint loads (rsz_export.api.export_lock)
    with export_lock(out, force, inputs), tempfile.TemporaryDirectory(prefix="rsz-clip-") as tmp:
        model = load_clip(checkpoint, arch)
        tokenizer = hf_clip_tokenizer(checkpoint) if model.is_hf else open_clip_tokenizer()
        tokenizer_json = write_tokenizer_json(tokenizer, Path(tmp) / "tokenizer.json")
        source = clip_source(model, tokenizer_json, template_list, None if tiles is None else Path(tiles))
        if gsd is not None:  # metres per pixel the checkpoint was trained at, when the user knows it
            source.gsd, source.gsd_source = gsd, "rsz-export --gsd"
        if int8:
            source.calibration, source.int8_check, source.calibration_info = int8_tiles(
                checkpoint, {}, model.preprocess, Path(calibration)
            )
        refuse_before_building(source, out, fp16, force)
        bundle = export_locked(source, out, fp16=fp16, engine=engine, batch=batch, force=force)
    return bundle, model
