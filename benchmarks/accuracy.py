"""Is the fast engine as accurate as the PyTorch model? ZSL, GZSL (U, S, H) and retrieval per backend.

The reference is the trained model in PyTorch FP32 (rsz_train.evaluate, as the training report). Every
backend then embeds the same test images (same preprocessing: rsz_infer.preprocess); the class and caption
embeddings come from the PyTorch model for all rows, so a difference is the image engine's alone. Scores
use the run's calibration lambda (chosen on validation), never one fitted on the test split.
An MCFA run with `model.inference: classifier` is scored as rsz-infer labels with its bundle (one code path:
rsz_infer.api.Scorer.logits, the same classifier for every row): GZSL by the shipped classifier over the
run's classes, ZSL by the classifier rsz-infer fits for the unseen classes alone (CADA-VAE's ZSL stage).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rsz_bench.checks import at_least, known_names, ort_device, torch_device
from rsz_infer.backend import ort_runner_on
from rsz_infer.errors import RszError, first_line
from rsz_infer.preprocess import normalize


@dataclass
class AccuracyConfig:
    backends: list[str] = field(default_factory=lambda: ["ort", "trt", "torch"])
    precisions: list[str] = field(default_factory=lambda: ["fp32", "fp16"])
    device: str = "auto"
    batch: int = 64


def _image_inputs(images: np.ndarray, spec) -> np.ndarray:  # PreprocessSpec
    """[N, S, S, 3] uint8 (already resized by rsz_infer.preprocess.resize_rgb) -> [N, 3, S, S] float32."""
    return (
        np.stack([normalize(im, spec) for im in images])
        if len(images)
        else np.zeros((0, 3, spec.size, spec.size))
    )


def _embed_with(runner, inputs: np.ndarray, batch: int) -> np.ndarray:  # a Runner
    dtype = np.float32
    session = getattr(runner, "session", None)
    if session is not None and session.get_inputs()[0].type == "tensor(float16)":
        dtype = np.float16
    out = [
        runner.infer({"image": inputs[i : i + batch].astype(dtype)})["embedding"].astype(np.float32)
        for i in range(0, len(inputs), batch)
    ]
    return np.concatenate(out)


def _torch_embed(module, inputs: np.ndarray, batch: int, device: str, fp16: bool) -> np.ndarray:
    """The run's image graph (export role "image") in PyTorch, FP16 by .half() on GPU."""
    import copy

    import torch

    dtype = torch.float16 if fp16 else torch.float32
    if device != "cpu" or fp16:  # a copy: casting to FP16 and back would round the reference's weights
        module = copy.deepcopy(module)
    module = module.to(device=device, dtype=dtype).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(inputs), batch):
            x = torch.from_numpy(inputs[i : i + batch]).to(device=device, dtype=dtype)
            y = module(x)
            y = y[0] if isinstance(y, (tuple, list)) else y
            out.append(y.float().cpu().numpy())
    return np.concatenate(out)


BACKENDS = ("ort", "trt", "torch")


def check_config(cfg: AccuracyConfig) -> tuple[str, str]:
    """Every option, before any work: (ONNX Runtime's device, PyTorch's device). --device cuda that cannot
    run on a GPU is refused here, as latency and rsz-infer refuse it (never a silent CPU row)."""
    from rsz_bench.latency import PRECISIONS

    known_names(cfg.backends, BACKENDS, "--backend")
    known_names(cfg.precisions, PRECISIONS, "--precision")  # latency's list: fp8 is refused by both
    at_least(cfg.batch, 1, "--batch")
    ort = ort_device(cfg.device) if "ort" in cfg.backends else "cpu"
    torch = torch_device(cfg.device)  # the reference row is PyTorch's, torch is always needed here
    return ort, torch


def check_bundle_is_the_runs(bundle: Path, manifest, run_dir: Path, info) -> None:  # Manifest, RunInfo
    """The bundle must be this run's export: the same model kind, and (bundles that ship the run's weights,
    manifest extra "torch") the very weights of the run, by the sha256 the manifest records. Another run's
    bundle would fail inside every row (mismatched shapes) or, worse, score against the wrong model."""
    from rsz_infer.bundle import sha256_file
    from rsz_train.runs import WEIGHTS

    if manifest.model_kind != info.kind:
        raise RszError(
            f"{bundle}: a {manifest.model_kind} bundle, but the run {run_dir} is a {info.kind} run; "
            "pass the bundle rsz-export made from this run"
        )
    shipped = manifest.extra.get("torch", {}).get("weights")
    expected = manifest.files.get(shipped) if shipped else None
    if expected and (run_dir / WEIGHTS).is_file() and sha256_file(run_dir / WEIGHTS) != expected:
        raise RszError(
            f"{bundle}: exported from other weights than {run_dir / WEIGHTS} (another run, or the run "
            "trained again since); export this run again or pass the run it came from"
        )


def check_split_is_the_runs(split, split_name: str, run_dir: Path, info) -> None:  # Split, RunInfo
    """The split must be the one the run was trained on: another split's unseen classes are classes the run
    trained on (a ZSL accuracy that means nothing) or classes it never scores (its test images belong to
    neither the run's seen nor its unseen classes)."""
    if set(split.unseen) == set(info.unseen):
        return
    recorded = info.report.get("split")
    named = f"; its report.json names split {recorded}" if recorded else ""
    raise RszError(
        f"--split {split_name}: not the split the run {run_dir} was trained on (other unseen classes{named})"
    )


def run_accuracy(bundle: Path, run_dir: Path, data_dir: Path, split_name: str, cfg: AccuracyConfig) -> dict:
    from rsz_bench.latency import TORCH_NO_INT8, open_model
    from rsz_infer.bundle import open_bundle
    from rsz_train import evaluate as ev
    from rsz_train.data import batches as td
    from rsz_train.data.formats import load_benchmark, load_split
    from rsz_train.models.registry import model_entry
    from rsz_train.runs import load_run

    ort_dev, torch_dev = check_config(cfg)
    manifest = open_bundle(bundle)
    model, info = load_run(run_dir)
    check_bundle_is_the_runs(bundle, manifest, Path(run_dir), info)
    data = load_benchmark(data_dir)
    split = load_split(data_dir, split_name)
    check_split_is_the_runs(split, split_name, Path(run_dir), info)
    spec = info.preprocess
    source = open_model(str(bundle))
    if source.image_size != spec.size:
        raise RszError(f"{bundle}: takes {source.image_size} px images, the run {run_dir} {spec.size} px")

    index = {c: i for i, c in enumerate(info.class_names)}
    seen_ids = [index[c] for c in info.seen]
    unseen_ids = [index[c] for c in info.unseen]
    label_of = dict(zip(data.image_paths, np.asarray(data.labels).tolist()))
    name_of = {i: c for i, c in enumerate(data.class_names)}
    paths = list(split.test_seen) + list(split.test_unseen)
    # GZSL needs test images of both kinds, ZSL the unseen ones: an empty list was a numpy traceback
    for key in ("test_seen", "test_unseen") if unseen_ids else ("test_seen",):
        if not getattr(split, key):
            listed = Path(data_dir) / "splits" / split_name / f"{key}.txt"
            raise RszError(f"{listed}: no test images; accuracy scores the split's test images")
    missing = [p for p in paths if p not in label_of]
    if missing:
        raise RszError(f"split {split_name}: image {missing[0]} is not in {data_dir}")
    labels = np.array([index[name_of[label_of[p]]] for p in paths], dtype=np.int64)
    inputs = _image_inputs(td.load_images(data.root, paths, spec.size, spec.resize), spec)

    class_emb = ev.embed_classes(model, info.semantics)
    retrieval_set = _retrieval_set(data, model, model_entry(info.kind).uses_captions, spec, td, ev)

    classifier_scores = _classifier_scores(bundle, manifest, info, seen_ids, unseen_ids, labels)

    def scores(image_fn) -> dict[str, Any]:  # inputs -> embeddings
        emb = image_fn(inputs)
        out: dict[str, Any] = {"_emb": emb}
        _flag_non_finite(out, emb, "test image embeddings")
        if unseen_ids and len(paths) and classifier_scores is not None:
            out.update(classifier_scores(emb))
        elif unseen_ids and len(paths):
            z = ev.model_zsl_gzsl_scores(
                model, emb, labels, class_emb, seen_ids, unseen_ids, info.seen_calibration
            )
            out.update(zsl=z["zsl"], U=z["gzsl"]["U"], S=z["gzsl"]["S"], H=z["gzsl"]["H"])
        if retrieval_set is not None:
            r_inputs, text_emb, text_to_image = retrieval_set
            r_emb = image_fn(r_inputs)
            _flag_non_finite(out, r_emb, "caption test image embeddings")
            out.update(ev.retrieval_scores(r_emb, text_emb, text_to_image))
        return out

    image_module = next((g.module for g in model.export_graphs() if g.role == "image"), None)
    if image_module is None:
        raise RszError(f"{run_dir}: the model has no image graph")
    rows = [{"backend": "torch", "precision": "fp32", "device": "cpu", "reference": True}]
    rows[0].update(scores(lambda x: _torch_embed(image_module, x, cfg.batch, "cpu", False)))
    reference = rows[0]
    for backend in cfg.backends:
        for precision in cfg.precisions:
            row: dict[str, Any] = {"backend": backend, "precision": precision}
            try:
                if backend == "ort":
                    from rsz_infer.runners.ort import OrtRunner

                    path = source.onnx_for(precision)
                    if path is None:
                        row["status"] = f"skipped: no {precision} image graph in {bundle}"
                    else:
                        runner = ort_runner_on(OrtRunner(path, device=ort_dev), ort_dev)
                        row["device"] = runner.name
                        row.update(scores(lambda x, r=runner: _embed_with(r, x, cfg.batch)))
                elif backend == "trt":
                    engine = source.engines.get(precision)
                    if engine is None:
                        row["status"] = f"skipped: no {precision} TensorRT engine in {bundle}"
                    else:
                        from rsz_infer.runners.trt import TrtRunner

                        try:
                            runner = TrtRunner(engine)
                        except RszError as err:  # no GPU here, or one this engine was not built for
                            row["status"] = f"skipped: {err}"
                        else:
                            row["device"] = "cuda"
                            row.update(scores(lambda x, r=runner: _embed_with(r, x, cfg.batch)))
                # the torch backend (the only other one check_config lets through)
                elif precision == "int8":  # before the device: on a GPU an "INT8" row would run FP32
                    row["status"] = TORCH_NO_INT8
                elif torch_dev == "cpu" and precision == "fp32":
                    row["status"] = "skipped: PyTorch FP32 on the CPU is the reference row"
                elif torch_dev == "cpu":
                    row["status"] = "skipped: PyTorch FP16 needs a GPU (not a CPU deployment target)"
                else:
                    row["device"] = torch_dev
                    fp16 = precision == "fp16"
                    row.update(
                        scores(lambda x, f=fp16, d=torch_dev: _torch_embed(image_module, x, cfg.batch, d, f))
                    )
            except RszError:
                raise
            except Exception as err:  # one failing engine must not lose the others' figures
                row["status"] = f"error: {type(err).__name__}: {first_line(err, limit=200)}"
            row.setdefault("status", "ok")
            if row["status"] == "ok":
                _add_differences(row, reference)
            rows.append(row)
    reference.setdefault("status", "ok (reference)")
    for row in rows:
        row.pop("_emb", None)
    return {
        "bundle": str(bundle),
        "run": str(run_dir),
        "data": str(data_dir),
        "split": split_name,
        "test_images": len(paths),
        "seen_calibration": info.seen_calibration,
        "rows": rows,
    }


def _flag_non_finite(row: dict[str, Any], emb: np.ndarray, what: str) -> None:
    """An error status for embeddings with NaN or infinite rows (an overflowing FP16 / INT8 graph): the
    argmax of NaN scores is class 0, so the row's figures would be of nothing. The first finding stays."""
    broken = int((~np.isfinite(emb)).any(axis=1).sum())
    if broken and "status" not in row:
        row["status"] = f"error: {broken} of {len(emb)} {what} are NaN or infinite"


def _classifier_scores(
    bundle: Path, manifest, info, seen_ids: list[int], unseen_ids: list[int], labels: np.ndarray
):  # Manifest, RunInfo
    """For a bundle with a classifier graph (MCFA, model.inference classifier): embeddings -> ZSL and GZSL
    by rsz-infer's own scoring of the run's classes (GZSL) and of the unseen classes (ZSL); else None."""
    from rsz_infer.api import Scorer
    from rsz_infer.classfile import ClassEntry
    from rsz_infer.metrics import gzsl_report, per_class_accuracy

    if "classifier" not in manifest.graphs or not unseen_ids:
        return None
    description = dict(zip(info.semantics.names, info.semantics.descriptions))
    space = list(seen_ids) + list(unseen_ids)
    entries = [ClassEntry(info.class_names[c], description[info.class_names[c]]) for c in space]
    gzsl = Scorer.open(bundle, manifest, entries, "ort", "cpu", 1, info.seen_calibration)
    zsl = Scorer.open(bundle, manifest, entries[len(seen_ids) :], "ort", "cpu", 1, None)
    position = {c: i for i, c in enumerate(space)}
    local = np.array([position[int(c)] for c in labels], dtype=np.int64)
    seen_mask = np.arange(len(space)) < len(seen_ids)
    is_unseen = ~seen_mask[local]

    def scores(emb: np.ndarray) -> dict[str, Any]:
        figures = gzsl_report(gzsl.logits(emb)[1], local, seen_mask, gzsl.seen_calibration)
        zsl_pred = zsl.logits(emb[is_unseen])[1].argmax(axis=1)
        return {"zsl": per_class_accuracy(zsl_pred, local[is_unseen] - len(seen_ids)), **figures}

    return scores


# ZSL and GZSL are fractions (rsz_infer.metrics.per_class_accuracy, gzsl_report); retrieval is percent under
# rsz_infer.metrics.retrieval_metrics' keys, as training's report.json "retrieval" has them.
ZSL_METRICS = ("zsl", "U", "S", "H")
RETRIEVAL_METRICS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR")
METRICS = ZSL_METRICS + RETRIEVAL_METRICS


def _add_differences(row: dict, reference: dict) -> None:
    for key in METRICS:
        if key in row and key in reference:
            row[f"d_{key}"] = row[key] - reference[key]
    a, b = row["_emb"], reference["_emb"]
    row["emb_max_abs_diff"] = float(np.abs(a - b).max())
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    row["emb_min_cosine"] = float(cos.min())


def _retrieval_set(data, model, uses_captions: bool, spec, td, ev):
    """(image inputs, caption embeddings, caption -> image) of the test captions, for text-tower models."""
    if not uses_captions:
        return None
    paths = [p for p in data.image_paths if data.caption_splits.get(p) == "test" and data.captions.get(p)]
    if not paths:
        return None
    texts, text_to_image = [], []
    for i, p in enumerate(paths):
        texts += data.captions[p]
        text_to_image += [i] * len(data.captions[p])
    inputs = _image_inputs(td.load_images(data.root, paths, spec.size, spec.resize), spec)
    return inputs, ev.embed_texts(model, texts), np.asarray(text_to_image)


def accuracy_markdown(result: dict) -> str:
    from rsz_bench.report import markdown_table

    present = [m for m in METRICS if any(m in r for r in result["rows"])]
    columns = [("backend", "backend"), ("precision", "prec"), ("device", "device")]
    for m in present:
        columns += [(m, m), (f"d_{m}", f"Δ{m}")]
    columns += [("emb_max_abs_diff", "max |Δemb|"), ("emb_min_cosine", "min cos"), ("status", "status")]
    units = "a fraction as the metrics are (0.01 = 1 percentage point)"
    if any(m in RETRIEVAL_METRICS for m in present):
        zsl = [m for m in present if m in ZSL_METRICS]
        units = (f"{', '.join(zsl)} are fractions (0.01 = 1 percentage point); " if zsl else "") + (
            "R@K and mR are percent (1 = 1 percentage point)"
        )
    head = (
        f"Bundle `{result['bundle']}`, run `{result['run']}`, split `{result['split']}` "
        f"({result['test_images']} test images, calibration λ={result['seen_calibration']:.3g} "
        f"chosen on validation). Δ = backend − PyTorch FP32, {units}."
    )
    return head + "\n\n" + markdown_table(result["rows"], columns) + "\n"
