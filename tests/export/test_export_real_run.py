"""Export of a real tiny trained DSVA run through the CLI: real MiniLM text graph, FP16, TensorRT-RTX."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rsz_export.cli import main
from rsz_infer.bundle import load_manifest
from rsz_infer.runners.ort import OrtRunner

from .test_export import _nvidia_gpu

# One epoch at 32 px is enough to get a real checkpoint; the benchmark is the session's (tests/conftest.py).
TINY = {"train.image_size": 32, "train.epochs": 1, "train.batch_size": 32, "train.warmup_epochs": 1}
TRT_EXPORT = ["--model", "dsva", "--fp16", "--engine", "trt", "--batch", "1:4:16"]


@pytest.fixture(scope="session")
def dsva_run(tiny_benchmark: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from rsz_train.data.synth import DEFAULT_SPLIT
    from rsz_train.train import train

    root = tmp_path_factory.mktemp("real")
    run = train("dsva", tiny_benchmark, DEFAULT_SPLIT, root / "runs" / "dsva", device="cpu", overrides=TINY)
    return run, tiny_benchmark


@pytest.fixture(scope="module")
def dsva_trt_export(dsva_run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    """rsz-export --fp16 --engine trt --tiles of the run, once (a TensorRT-RTX build on the CPU costs
    seconds): -> (CliRunner result, bundle). Tests read the bundle and never write into it."""
    run, bench = dsva_run
    out = tmp_path_factory.mktemp("trt") / "models" / "dsva"
    args = [*TRT_EXPORT, "--run", str(run), "--out", str(out), "--tiles", str(bench / "images")]
    return CliRunner().invoke(main, args), out


@pytest.mark.slow
def test_export_real_dsva_run(dsva_run: tuple[Path, Path], dsva_trt_export) -> None:
    run = dsva_run[0]
    result, out = dsva_trt_export
    assert result.exit_code == 0, result.output
    manifest = load_manifest(out)
    assert manifest.model_kind == "dsva" and manifest.class_embedding == "attributes"
    assert set(manifest.graphs) == {"image", "text"} and (out / "tokenizer.json").is_file()
    assert len(manifest.attribute_phrases) == manifest.embedding_dim > 0
    assert manifest.extra["checks"]["image.fp16"]["tiles"] > 0
    assert {t.name for t in manifest.graphs["image"].outputs} == {"embedding", "attention_maps"}
    assert manifest.graphs["text"].engines == ["text.engine"]
    text = OrtRunner(out / manifest.graphs["text"].onnx)
    ids = np.array([[101, 2023, 2003, 102]], dtype=np.int64)
    emb = text.infer({"input_ids": ids, "attention_mask": np.ones_like(ids)})["embedding"]
    assert emb.shape == (1, 384) and abs(float(np.linalg.norm(emb)) - 1.0) < 1e-2

    again = CliRunner().invoke(main, ["--model", "mcfa", "--run", str(run), "--engine", "none"])
    assert again.exit_code == 2 and "is a dsva run, not mcfa" in again.output


@pytest.mark.slow
@pytest.mark.skipif(_nvidia_gpu(), reason="a GPU host: the engines may run there")
def test_backend_trt_without_a_gpu_is_one_line_and_writes_nothing(
    dsva_run: tuple[Path, Path], dsva_trt_export, tmp_path: Path
) -> None:
    """The README's TensorRT-RTX path on a machine without a GPU: rsz-export --engine trt builds the
    engines on the CPU; rsz-infer --backend trt, with each --device, stops with one line saying they need an
    RTX GPU (before: "use --device cuda" where there is none), writes nothing and keeps an earlier output."""
    bench = dsva_run[1]
    exported, bundle = dsva_trt_export  # rsz-export --fp16 --engine trt, built on this CPU machine
    assert exported.exit_code == 0, exported.output
    classes = tmp_path / "new.txt"
    classes.write_text("forest: dense trees\nlake: still blue water\n", encoding="utf-8")
    tiles = bench / "images" / sorted(p.name for p in (bench / "images").iterdir())[0]
    earlier = tmp_path / "earlier" / "labels.csv"
    earlier.parent.mkdir()
    earlier.write_text("an earlier run's labels\n", encoding="utf-8")
    need = "TensorRT-RTX engines need an RTX GPU"
    no_gpu = re.escape(
        f"--backend trt: {need} and no NVIDIA GPU is visible here; use --backend ort (ONNX Runtime)"
    )
    expected = {
        "auto": no_gpu,
        "cpu": no_gpu,
        "cuda": re.escape(str(bundle))
        + rf"/(image|text)\.engine: no usable CUDA GPU on this machine \({need}\); use the ONNX Runtime "
        r"backend \(--backend ort\) instead",
    }
    for device, line in expected.items():
        for out in (earlier, tmp_path / "fresh" / "labels.gpkg"):
            command = [str(tiles), "--classes", str(classes), "--model", str(bundle), "--out", str(out)]
            command += ["--html", str(out.with_suffix(".html")), "--backend", "trt", "--device", device]
            proc = subprocess.run(
                [sys.executable, "-m", "rsz_infer.cli", *command, "--quiet"], capture_output=True, text=True
            )
            assert proc.returncode == 2, proc.stderr
            assert len(proc.stderr.splitlines()) == 1 and re.fullmatch(
                f"error: {line}", proc.stderr.strip()
            ), proc.stderr
    assert earlier.read_text(encoding="utf-8") == "an earlier run's labels\n"
    assert [p.name for p in earlier.parent.iterdir()] == ["labels.csv"]
    assert not (tmp_path / "fresh").exists()


EXPECTED_GRAPHS = {
    "mcfa": ("semantic", {"image", "text", "semantic"}),
    "msa": ("text", {"image", "text", "rerank"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(EXPECTED_GRAPHS))
def test_export_real_run_builds_an_engine_per_graph(
    kind: str, dsva_run: tuple[Path, Path], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """CI builds a TensorRT-RTX FP16 engine for every graph of each model kind, on this CPU machine (MSA:
    the session's tiny run and its bundle, tests/conftest.py, made by the same rsz-export command)."""
    from rsz_train.data.synth import DEFAULT_SPLIT
    from rsz_train.train import train

    if kind == "msa":
        result, out = request.getfixturevalue("tiny_msa_bundle")
    else:
        bench = dsva_run[1]
        run = train(kind, bench, DEFAULT_SPLIT, tmp_path / "runs" / kind, device="cpu", overrides=TINY)
        out = tmp_path / "models" / kind
        args = ["--model", kind, "--run", str(run), "--fp16", "--engine", "trt", "--batch", "1:4:16"]
        result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = load_manifest(out)
    class_embedding, roles = EXPECTED_GRAPHS[kind]
    assert manifest.model_kind == kind and manifest.class_embedding == class_embedding
    assert set(manifest.graphs) == roles
    for role, graph in manifest.graphs.items():
        assert graph.precision == "fp16"
        assert graph.engines == [f"{role}.engine"] and (out / f"{role}.engine").stat().st_size > 0


@pytest.mark.slow
def test_int8_export_and_torch_backend_on_the_bundle(dsva_run: tuple[Path, Path], tmp_path: Path) -> None:
    """--int8 calibrates on the run's training tiles by default and checks on its validation tiles; the
    bundle ships the run's safetensors, so rsz-infer --backend torch labels as ONNX Runtime FP32 does."""
    import csv

    from rsz_infer.cli import label_command

    run, bench = dsva_run
    out = tmp_path / "bundle"
    result = CliRunner().invoke(
        main, ["--model", "dsva", "--run", str(run), "--int8", "--engine", "none", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "int8 image:" in result.output
    # rsz-export's summary comes first: ONNX Runtime's calibrator prints its progress ("Collecting tensor
    # data and making histogram ...") on stdout, which rsz-export keeps out of its output
    assert result.output.startswith(f"{out}: dsva bundle"), result.output
    manifest = load_manifest(out)
    calibration = manifest.extra["int8"]["image"]["calibration"]
    assert calibration["source"] == str(bench / "images") and len(calibration["sha256"]) == 64
    assert "validation tiles" in calibration["check_source"]
    assert manifest.extra["torch"]["weights"] in manifest.files
    classes = tmp_path / "new.txt"
    classes.write_text("forest: dense trees\nlake: still blue water\ndesert: bare sand\n", encoding="utf-8")
    tiles = bench / "images" / sorted(p.name for p in (bench / "images").iterdir())[0]
    labels, summaries = {}, {}
    for name, extra in (("ort", ["--precision", "fp32"]), ("torch", []), ("auto", [])):
        csv_path = tmp_path / f"{name}.csv"
        args = [str(tiles), "--classes", str(classes), "--model", str(out), "--out", str(csv_path), "--quiet"]
        backend = ["--backend", name] if name != "auto" else []
        done = CliRunner().invoke(label_command, [*args, *backend, *extra, "--device", "cpu"])
        assert done.exit_code == 0, done.output
        summaries[name] = done.output
        with open(csv_path, newline="", encoding="utf-8") as f:
            labels[name] = [row["label_1"] for row in csv.DictReader(f)]
    assert labels["torch"] == labels["ort"] and len(labels["ort"]) > 0
    from rsz_bench.latency import LatencyConfig, run_latency

    cfg = LatencyConfig(
        backends=["torch", "ort"], precisions=["fp32", "int8"], batches=[2], iters=1, warmup=0
    )
    rows = {(r["backend"], r["precision"]): r["status"] for r in run_latency(str(out), cfg)["rows"]}
    assert rows[("torch", "fp32")] == "ok"  # the bundle's own weights, no --run needed
    shipped = "int8" in manifest.extra["variants"]["image"]
    assert rows[("ort", "int8")] == "ok" if shipped else rows[("ort", "int8")].startswith("skipped")
    assert "backend torch:cpu fp32" in summaries["torch"] and "backend ort:cpu fp32" in summaries["ort"]
    from rsz_infer.backend import choose_precision

    assert f"backend ort:cpu {choose_precision(manifest, 'image', 'auto', 'cpu')}" in summaries["auto"]


@pytest.mark.slow
def test_the_runs_gsd_reaches_the_bundle(dsva_run: tuple[Path, Path], tmp_path: Path) -> None:
    """rsz-train --gsd records the training images' ground resolution in the run (config.yaml train.gsd);
    rsz-export takes it by default, an explicit --gsd wins, and the summary says where it came from."""
    import yaml

    from rsz_train.cli import main as train_main

    bench = dsva_run[1]
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(
        yaml.safe_dump({"train": {k.split(".")[1]: v for k, v in TINY.items()}}), encoding="utf-8"
    )
    run = tmp_path / "runs" / "dsva"
    args = ["dsva", "--data", str(bench), "--config", str(tiny), "--device", "cpu", "--out", str(run)]
    bad = CliRunner().invoke(train_main, [*args, "--gsd", "-1"])
    assert bad.exit_code == 2 and "train.gsd -1.0: metres per pixel must be a number above zero" in bad.output
    trained = CliRunner().invoke(train_main, [*args, "--gsd", "0.5"])
    assert trained.exit_code == 0, trained.output
    assert yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["train"]["gsd"] == 0.5

    export = ["--model", "dsva", "--run", str(run), "--engine", "none", "--out"]
    from_run = CliRunner().invoke(main, [*export, str(tmp_path / "from_run")])
    assert from_run.exit_code == 0, from_run.output
    assert load_manifest(tmp_path / "from_run").gsd == 0.5
    assert f"gsd: 0.5 m per pixel, from the run ({run / 'config.yaml'}: train.gsd)" in from_run.output
    explicit = CliRunner().invoke(main, [*export, str(tmp_path / "explicit"), "--gsd", "2"])
    assert explicit.exit_code == 0, explicit.output
    assert load_manifest(tmp_path / "explicit").gsd == 2.0
    assert "gsd: 2 m per pixel, from rsz-export --gsd" in explicit.output


@pytest.mark.slow
def test_a_run_trained_clause_by_clause_labels_with_the_same_class_vectors(
    dsva_run: tuple[Path, Path], tmp_path: Path
) -> None:
    """train.description_clauses reaches the bundle (manifest.description_clauses), and rsz-infer computes
    the very attribute rows the run trained and was scored with (ONNX MiniLM vs PyTorch MiniLM)."""
    import json

    import yaml

    from rsz_infer import Labeler
    from rsz_train.cli import main as train_main

    bench = dsva_run[1]
    config = tmp_path / "clauses.yaml"
    train_settings = {k.split(".")[1]: v for k, v in TINY.items()}
    config.write_text(yaml.safe_dump({"train": {**train_settings, "description_clauses": True}}), "utf-8")
    run, out = tmp_path / "runs" / "dsva", tmp_path / "bundle"
    args = ["dsva", "--data", str(bench), "--config", str(config), "--device", "cpu", "--out", str(run)]
    trained = CliRunner().invoke(train_main, args)
    assert trained.exit_code == 0, trained.output
    exported = CliRunner().invoke(
        main, ["--model", "dsva", "--run", str(run), "--engine", "none", "--out", str(out)]
    )
    assert exported.exit_code == 0, exported.output
    assert load_manifest(out).description_clauses is True
    record = json.loads((run / "classes.json").read_text(encoding="utf-8"))
    assert record["description_clauses"] is True
    names = record["unseen"]
    lines = [f"{n}: {record['descriptions'][record['class_names'].index(n)]}" for n in names]
    assert any("," in line or " and " in line for line in lines)  # descriptions with clauses to read
    with Labeler(out, lines, backend="ort", device="cpu") as labeler:
        got = labeler.scorer.class_emb
    rows = np.array([record["attributes"][record["class_names"].index(n)] for n in names])
    np.testing.assert_allclose(got, rows, atol=2e-4)
    default_record = json.loads((dsva_run[0] / "classes.json").read_text(encoding="utf-8"))
    whole = np.array([default_record["attributes"][default_record["class_names"].index(n)] for n in names])
    assert np.abs(whole - rows).max() > 0.05  # the clause route is not the whole-sentence one


@pytest.mark.slow
def test_a_seen_class_named_without_a_description_takes_its_training_text(
    dsva_run: tuple[Path, Path], tmp_path: Path
) -> None:
    """The bundle keeps each seen class's training description; a class line with the bare name scores
    that class by it (not by the text of its name), and the run summary says so."""
    import json

    from rsz_infer import Labeler

    run, out = dsva_run[0], tmp_path / "bundle"
    export = ["--model", "dsva", "--run", str(run), "--engine", "none", "--out", str(out)]
    exported = CliRunner().invoke(main, export)
    assert exported.exit_code == 0, exported.output
    record = json.loads((run / "classes.json").read_text(encoding="utf-8"))
    description = dict(zip(record["class_names"], record["descriptions"]))
    seen, trained = record["seen"][0], description[record["seen"][0]]
    assert load_manifest(out).seen_descriptions[seen] == trained != seen
    unseen = f"{record['unseen'][0]}: {description[record['unseen'][0]]}"

    def class_embeddings(classes: list[str]) -> tuple[np.ndarray, list[str]]:
        with Labeler(out, classes, backend="ort", device="cpu") as labeler:
            return labeler.scorer.class_emb, labeler.scorer.notes

    bare, notes = class_embeddings([seen.upper(), unseen])  # names match case-insensitively
    explicit, _ = class_embeddings([f"{seen}: {trained}", unseen])
    own_text, _ = class_embeddings([f"{seen}: {seen}.", unseen])  # a description of its own is kept
    np.testing.assert_allclose(bare, explicit, atol=1e-6)
    assert np.abs(own_text[0] - bare[0]).max() > 1e-3
    expected = f"1 class(es) named without a description ({seen.upper()}) take the description the model"
    assert notes == [expected + " was trained with"]


@pytest.mark.slow
def test_the_bundle_scores_with_the_runs_hubness_correction(
    dsva_run: tuple[Path, Path], tmp_path: Path
) -> None:
    """DSVA's hubness correction (model.hubness_penalty) travels in the manifest with the run's trained
    class embeddings, and the bundle scores as the trainer evaluated: the labels of the test tiles give
    the trainer's reported ZSL accuracy (a penalty of 2, so that it is not what uncorrected scores give)."""
    import json

    from rsz_infer import Labeler
    from rsz_infer.metrics import gzsl_report, per_class_accuracy
    from rsz_train import evaluate as ev
    from rsz_train.data.synth import DEFAULT_SPLIT
    from rsz_train.runs import load_run
    from rsz_train.train import train

    bench, out = dsva_run[1], tmp_path / "bundle"
    run = train(
        "dsva",
        bench,
        DEFAULT_SPLIT,
        tmp_path / "run",
        device="cpu",
        overrides=TINY | {"model.hubness_penalty": 2.0},
    )
    exported = CliRunner().invoke(
        main, ["--model", "dsva", "--run", str(run), "--engine", "none", "--out", str(out)]
    )
    assert exported.exit_code == 0, exported.output
    manifest = load_manifest(out)
    model, info = load_run(run)
    class_emb = ev.embed_classes(model, info.semantics)
    assert (manifest.hubness_penalty, manifest.hubness_neighbours) == (2.0, 3)
    shown = CliRunner().invoke(main, ["inspect", str(out)]).output
    assert "minus 2 x mean cosine to 3 nearest trained classes (hubness)" in shown
    np.testing.assert_allclose(
        manifest.trained_class_embeddings,
        class_emb[[info.class_names.index(c) for c in info.seen]],
        atol=1e-6,
    )

    record = json.loads((run / "classes.json").read_text(encoding="utf-8"))
    description = dict(zip(record["class_names"], record["descriptions"]))
    reported = json.loads((run / "report.json").read_text(encoding="utf-8"))["test"]
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    split = bench / "splits" / DEFAULT_SPLIT

    def scores(classes: list[str], tiles: list[str]) -> tuple[np.ndarray, np.ndarray, list[str], float]:
        """(bundle logits, uncorrected logits, top labels, scale) of the tiles over the classes."""
        lines = [f"{c}: {description[c]}" for c in classes]
        with Labeler(out, lines, backend="ort", device="cpu") as labeler:
            emb = labeler.embed([bench / "images" / t for t in tiles])
            labels = [r["labels"][0] for r in labeler.label([bench / "images" / t for t in tiles])]
            scorer = labeler.scorer
        # the correction by hand: each class's 3 nearest trained classes by cosine, itself left out
        near = unit(scorer.class_emb) @ unit(np.asarray(manifest.trained_class_embeddings)).T
        for row, name in enumerate(classes):
            if name in info.seen:
                near[row, info.seen.index(name)] = -1.0
        offsets = 2.0 * np.sort(near, axis=1)[:, -3:].mean(axis=1)
        similarity = unit(emb) @ unit(scorer.class_emb).T
        np.testing.assert_allclose(scorer.logits(emb)[1], scorer.scale * (similarity - offsets), atol=1e-4)
        return scorer.logits(emb)[1], scorer.scale * similarity, labels, scorer.scale

    unseen = list(info.unseen)
    tiles = (split / "test_unseen.txt").read_text(encoding="utf-8").split()
    truth = np.array([unseen.index(t.split("/")[0]) for t in tiles])
    _, uncorrected, labels, _ = scores(unseen, tiles)
    predicted = np.array([unseen.index(name) for name in labels])
    assert per_class_accuracy(predicted, truth) == pytest.approx(reported["zsl"], abs=1e-9)
    assert (predicted != uncorrected.argmax(axis=1)).any()
    # rsz-infer --hubness-penalty 0 (the API's hubness_penalty=0) scores by the raw cosine
    lines = [f"{c}: {description[c]}" for c in unseen]
    with Labeler(out, lines, backend="ort", device="cpu", hubness_penalty=0.0) as labeler:
        raw = [r["labels"][0] for r in labeler.label([bench / "images" / t for t in tiles])]
    assert [unseen.index(name) for name in raw] == uncorrected.argmax(axis=1).tolist()

    space = list(info.seen) + unseen  # GZSL: the trained classes' own correction leaves themselves out
    tiles = (split / "test_seen.txt").read_text(encoding="utf-8").split() + tiles
    truth = np.array([space.index(t.split("/")[0]) for t in tiles])
    corrected, uncorrected, _, _ = scores(space, tiles)
    seen_mask = np.arange(len(space)) < len(info.seen)
    figures = gzsl_report(corrected, truth, seen_mask, manifest.seen_calibration)
    assert figures == pytest.approx({k: reported["gzsl"][k] for k in figures}, abs=1e-9)
    assert gzsl_report(uncorrected, truth, seen_mask, manifest.seen_calibration) != pytest.approx(
        figures, abs=1e-9
    )


@pytest.mark.slow
def test_a_run_stopped_before_its_last_epoch_exports_with_a_warning(
    dsva_run: tuple[Path, Path], tmp_path: Path
) -> None:
    """A run killed after epoch 1 of 2 (what rsz-train's stop_after_epoch leaves, as a kill would: last.pt,
    metrics.jsonl, model.safetensors, no report.json) exported silently, a half-trained model shipped
    unknowingly: now one warning line, the manifest's extra.training and rsz-export inspect say it. Once
    resumed to its end, the same export has no warning."""
    from rsz_train.data.synth import DEFAULT_SPLIT
    from rsz_train.train import train

    bench = dsva_run[1]
    two_epochs = TINY | {"train.epochs": 2}
    run = train("dsva", bench, DEFAULT_SPLIT, tmp_path / "run", device="cpu", overrides=two_epochs,
                stop_after_epoch=1)  # fmt: skip
    assert not (run / "report.json").exists() and (run / "last.pt").is_file()
    out = tmp_path / "bundle"
    args = ["--model", "dsva", "--run", str(run), "--engine", "none", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output  # a user may want the half-trained model: not refused
    warning = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warning == [
        f"warning: {run}: training stopped at epoch 1 of 2 (no report.json); exporting its best checkpoint "
        f"so far (epoch 1), without the GZSL calibration (lambda 0); finish it with rsz-train dsva "
        f"--data ... --out {run} --resume"
    ]
    manifest = load_manifest(out)
    assert manifest.extra["training"] == {"finished": False, "epochs_done": 1, "epochs": 2, "best_epoch": 1}
    shown = CliRunner().invoke(main, ["inspect", str(out)]).output
    assert "UNFINISHED: stopped at epoch 1 of 2 (rsz-train --resume finishes it)" in shown

    train("dsva", bench, DEFAULT_SPLIT, run, device="cpu", resume=True)
    result = CliRunner().invoke(main, [*args, "--force"])
    assert result.exit_code == 0, result.output
    assert "warning:" not in result.output
    training = load_manifest(out).extra["training"]
    assert training["finished"] is True and training["epochs_done"] == training["epochs"] == 2
    assert "finished, 2 epochs" in CliRunner().invoke(main, ["inspect", str(out)]).output


@pytest.mark.slow
def test_weights_that_do_not_fit_the_run_name_the_tensor(dsva_run: tuple[Path, Path], tmp_path: Path) -> None:
    """A run whose model.safetensors is some other state dict (a tensor missing, one of another shape, one
    the model has not) is refused in one line naming the tensor; before, the line ended at torch's header
    "(Error(s) in loading state_dict for DSVA:)" and named none."""
    import shutil

    from safetensors.torch import load_file, save_file

    run = dsva_run[0]
    state = load_file(str(run / "model.safetensors"))
    first = sorted(state)[0]
    edits = {
        "missing": ({k: v for k, v in state.items() if k != first}, f"it lacks {first})"),
        "shape": (
            {**state, first: torch.zeros(3, 3)},
            f"its {first} is [3, 3], the model's {list(state[first].shape)})",
        ),
        "extra": ({**state, "head.extra": torch.zeros(2)}, "it has head.extra, which the model has not)"),
    }
    for name, (edited, says) in edits.items():
        bad = tmp_path / name
        shutil.copytree(run, bad)
        save_file(edited, str(bad / "model.safetensors"))
        out = tmp_path / f"bundle_{name}"
        result = CliRunner().invoke(
            main, ["--model", "dsva", "--run", str(bad), "--engine", "none", "--out", str(out)]
        )
        assert result.exit_code == 2, result.output
        assert result.output.strip() == (
            f"error: {bad}/model.safetensors: does not fit the dsva model of {bad}/config.yaml ({says}"
        ), name
        assert not out.exists()


@pytest.mark.slow
def test_tiles_that_is_no_folder_says_so(dsva_run: tuple[Path, Path], tmp_path: Path) -> None:
    """--tiles given one tile or a mistyped path said "no PNG/JPEG/TIFF tiles to check the export on", as
    for an empty folder; now it says what the path is, as --calibration does, and writes nothing."""
    run, bench = dsva_run
    one_tile = sorted((bench / "images").rglob("*.png"))[0]
    out = tmp_path / "bundle"
    for given, what in ((one_tile, "is a file"), (tmp_path / "no_such", "no such folder")):
        args = [
            "--model",
            "dsva",
            "--run",
            str(run),
            "--engine",
            "none",
            "--out",
            str(out),
            "--tiles",
            str(given),
        ]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert result.output.strip() == f"error: --tiles {given}: {what} (it takes a folder of tiles)"
        assert not out.exists()


@pytest.mark.slow
def test_a_terminated_export_leaves_nothing_beside_out(dsva_run: tuple[Path, Path], tmp_path: Path) -> None:
    """`kill PID` (SIGTERM: timeout, a scheduler) in the middle of an export ends it as Ctrl-C does: exit 130,
    no --out, and neither its staging folder nor its lock file (nor the models/ folder made for them) left
    (before: Python's default SIGTERM ended it at once; both stayed until the next export into --out)."""
    import signal
    import time

    run = dsva_run[0]
    out = tmp_path / "models" / "dsva"
    command = [sys.executable, "-m", "rsz_export.cli", "--model", "dsva", "--run", str(run), "--fp16"]
    proc = subprocess.Popen(
        [*command, "--engine", "none", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not [p for p in out.parent.glob(".dsva.*") if p.is_dir()]:  # the staging folder: work under way
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted"
    assert not out.parent.exists()  # models/ was made for the lock file, and went with it
