"""MCFA's paper-size labeling through rsz-infer (CADA-VAE's final stage, rsz_infer.latent_classifier): the
numpy fit against PyTorch's, the semantic graph's logvar, and a tiny classifier run exported and labeled
by the real rsz-infer and scored by the real rsz-bench accuracy."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from rsz_infer.latent_classifier import (
    FITTED,
    FitSettings,
    class_latent_samples,
    fit_plan,
    fit_softmax_classifier,
)
from rsz_train.models.mcfa import fit_latent_classifier


def test_numpy_fit_follows_torch_fit_latent_classifier_step_by_step():
    """Same samples, same initial weights and batch orders (fit_plan): the numpy Adam must end where
    torch.optim.Adam does (a wrong gradient, bias correction, beta or partial last batch would not)."""
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(3), 30)
    z = (rng.normal(size=(90, 6)) + 1.5 * np.eye(3, 6)[y]).astype(np.float32)
    settings = FitSettings(samples_per_class=30, epochs=4, lr=0.01, batch_size=16, betas=(0.5, 0.999), seed=5)
    weight, bias = fit_softmax_classifier(z, y, 3, settings)
    reference = fit_latent_classifier(torch.from_numpy(z), torch.from_numpy(y), 3, 4, 0.01, 16, seed=5)
    start, _, _ = fit_plan(90, 6, 3, 4, 5)
    assert np.abs(weight - start).max() > 0.05  # it did learn (6 steps x 4 epochs at lr 0.01)
    np.testing.assert_allclose(weight, reference.weight.detach().numpy(), atol=2e-6)
    np.testing.assert_allclose(bias, reference.bias.detach().numpy(), atol=2e-6)


def test_class_latent_samples_draw_from_each_class_posterior():
    mu = np.array([[0.0, 5.0], [-3.0, 1.0]], np.float32)
    logvar = np.log(np.array([[0.25, 4.0], [1.0, 0.01]], np.float32))
    z, y = class_latent_samples(mu, logvar, 4000, seed=0)
    assert y.tolist() == [0] * 4000 + [1] * 4000
    np.testing.assert_allclose(z.reshape(2, 4000, 2).mean(1), mu, atol=0.07)
    np.testing.assert_allclose(z.reshape(2, 4000, 2).std(1), np.exp(0.5 * logvar), rtol=0.05)
    assert np.array_equal(z, class_latent_samples(mu, logvar, 4000, seed=0)[0])  # seeded


def test_export_comparator_checks_the_semantic_logvar(mcfa_classifier_run):
    """The semantic graph's second output is checked against PyTorch like every output: a logvar off by
    1e-2 fails the FP32 comparison, naming it."""
    from rsz_export.compare import compare
    from rsz_infer.errors import RszError
    from rsz_infer.runners.torch import TorchRunner
    from rsz_train.runs import load_run

    model, info = load_run(mcfa_classifier_run, kind="mcfa")
    graph = next(g for g in model.export_graphs() if g.role == "semantic")
    assert graph.output_names == ["embedding", "logvar"]

    class OffLogvar(torch.nn.Module):
        def forward(self, semantic):
            mu, logvar = graph.module(semantic)
            return mu, logvar + 1e-2

    feeds = [{"semantic": np.asarray(info.semantics.sentence[:4], np.float32)}]
    names = {"input_names": graph.input_names, "output_names": graph.output_names}
    reference = TorchRunner(graph.module, **names)
    assert compare(reference, TorchRunner(graph.module, **names), feeds, "fp32", "same")
    with pytest.raises(RszError, match="output logvar differs"):
        compare(reference, TorchRunner(OffLogvar(), **names), feeds, "fp32", "semantic.onnx")


@pytest.fixture(scope="module")
def classifier_bundle(mcfa_classifier_run, tmp_path_factory) -> Path:
    from rsz_export.api import export

    return export(mcfa_classifier_run, tmp_path_factory.mktemp("mcfa") / "bundle", kind="mcfa", engine="none")


def _label(tiles: list[str], classes: Path, bundle: Path, out: Path, capsys) -> tuple[dict[str, dict], str]:
    """rsz-infer TILES --classes ... -> ({path: record}, what it printed)."""
    from rsz_infer.cli import main

    args = [*tiles, "--classes", str(classes), "--model", str(bundle), "--out", str(out), "--quiet"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--backend", "ort", "--device", "cpu", "--batch", "64"])
    printed = capsys.readouterr()
    assert exit_info.value.code == 0, printed.err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return {r["path"]: r for r in records}, printed.out + printed.err


def _class_file(path: Path, names: list[str], info) -> Path:
    description = dict(zip(info.semantics.names, info.semantics.descriptions))
    path.write_text("".join(f"{n}: {description.get(n, n)}\n" for n in names), encoding="utf-8")
    return path


def test_classifier_bundle_labels_as_rsz_bench_accuracy_scores(
    classifier_bundle, mcfa_classifier_run, tiny_benchmark, default_split, tmp_path, monkeypatch, capsys
):
    """The run's classes (shuffled): the shipped classifier graph labels, columns reordered, calibrated
    with the run's lambda, and those labels give rsz-bench accuracy's GZSL figures; the unseen classes
    alone: the classifier fitted on the class file labels, and its labels give rsz-bench's ZSL figure; a
    new class file runs the fitted path too; the fit is cached as .npy."""
    from rsz_bench.accuracy import AccuracyConfig, run_accuracy
    from rsz_infer.api import Embedder, Scorer
    from rsz_infer.bundle import load_manifest
    from rsz_infer.classfile import read_class_file
    from rsz_infer.metrics import per_class_accuracy
    from rsz_infer.runners.ort import OrtRunner
    from rsz_infer.scoring import calibrated_stacking
    from rsz_train.data.formats import load_benchmark, load_split
    from rsz_train.runs import load_run

    monkeypatch.setenv("RSZ_CACHE_DIR", str(tmp_path / "cache"))
    bundle = classifier_bundle
    manifest = load_manifest(bundle)
    _, info = load_run(mcfa_classifier_run, kind="mcfa")
    assert {t.name for t in manifest.graphs["semantic"].outputs} == {"embedding", "logvar"}
    assert manifest.extra["classifier_fit"] == {
        "samples_per_class": 20, "epochs": 2, "lr": 0.001, "batch_size": 32, "betas": [0.5, 0.999], "seed": 0,
    }  # fmt: skip
    data, split = load_benchmark(tiny_benchmark), load_split(tiny_benchmark, default_split)
    name_of = dict(zip(data.image_paths, [data.class_names[c] for c in data.labels]))
    seen_paths, unseen_paths = list(split.test_seen), list(split.test_unseen)
    files = [str(data.root / p) for p in seen_paths + unseen_paths]
    truth = {str(data.root / p): name_of[p] for p in seen_paths + unseen_paths}

    classes = list(manifest.extra["classifier_classes"])
    random.Random(0).shuffle(classes)
    records, printed = _label(
        files, _class_file(tmp_path / "run.txt", classes, info), bundle, tmp_path / "a.jsonl", capsys
    )
    assert "labeled by the shipped classifier" in printed
    labels = {f: r["labels"][0] for f, r in records.items()}
    # the classifier graph's argmax after calibrated stacking, in the class file's order
    with Embedder(bundle, backend="ort", device="cpu", batch=64) as embedder:
        emb = embedder.embed(files)
    logits = OrtRunner(bundle / "classifier.onnx").infer({"embedding": emb})["logits"]
    seen_mask = np.isin(manifest.extra["classifier_classes"], info.seen)
    best = calibrated_stacking(logits, seen_mask, manifest.seen_calibration).argmax(1)
    assert [labels[f] for f in files] == [manifest.extra["classifier_classes"][i] for i in best]

    result = run_accuracy(
        bundle, mcfa_classifier_run, tiny_benchmark, default_split, AccuracyConfig(["ort"], ["fp32"], "cpu")
    )
    ort = next(r for r in result["rows"] if r["backend"] == "ort")
    assert ort["status"] == "ok"
    space = info.seen + info.unseen
    pred = np.array([space.index(labels[f]) for f in files])
    target = np.array([space.index(truth[f]) for f in files])
    is_unseen = np.arange(len(files)) >= len(seen_paths)
    assert ort["U"] == pytest.approx(per_class_accuracy(pred[is_unseen], target[is_unseen]), abs=1e-9)
    assert ort["S"] == pytest.approx(per_class_accuracy(pred[~is_unseen], target[~is_unseen]), abs=1e-9)

    unseen_files = files[len(seen_paths) :]
    zsl_file = _class_file(tmp_path / "unseen.txt", info.unseen, info)
    zsl_records, printed = _label(unseen_files, zsl_file, bundle, tmp_path / "z.jsonl", capsys)
    assert "labeled by the classifier fitted on the class file" in printed
    zsl_labels = {f: r["labels"][0] for f, r in zsl_records.items()}
    pred = np.array([info.unseen.index(zsl_labels[f]) for f in unseen_files])
    target = np.array([info.unseen.index(truth[f]) for f in unseen_files])
    assert ort["zsl"] == pytest.approx(per_class_accuracy(pred, target), abs=1e-9)
    cached = list((tmp_path / "cache" / "latent_classifiers").glob("*.npy"))
    assert len(cached) == 1
    fitted = np.load(cached[0], allow_pickle=False)  # [K, D + 1]: weight, then bias
    assert fitted.shape == (len(info.unseen), manifest.embedding_dim + 1)
    best = (emb[len(seen_paths) :] @ fitted[:, :-1].T + fitted[:, -1]).argmax(1)
    assert [zsl_labels[f] for f in unseen_files] == [info.unseen[i] for i in best]

    new = info.unseen[:2] + info.seen[:1] + ["glacier"]
    new_file = tmp_path / "new.txt"
    _class_file(new_file, new[:3], info)
    new_file.write_text(new_file.read_text() + "glacier: white ice and snow over bare rock\n")
    new_labels, printed = _label(unseen_files, new_file, bundle, tmp_path / "n.jsonl", capsys)
    assert "labeled by the classifier fitted on the class file" in printed
    assert {r["labels"][0] for r in new_labels.values()} <= set(new) and len(new_labels) == len(unseen_files)
    # the run's lambda was chosen for the shipped classifier; the fitted one subtracts nothing by default
    scorer = Scorer.open(bundle, manifest, read_class_file(new_file), "ort", "cpu", 1, None)
    assert scorer.labeling == FITTED and scorer.seen_mask.tolist() == [False, False, True, False]
    assert scorer.seen_calibration == 0.0 != manifest.seen_calibration


def test_an_older_bundle_without_logvar_labels_new_classes_by_the_nearest_latent(
    classifier_bundle, mcfa_classifier_run, tiny_benchmark, tmp_path, monkeypatch, capsys
):
    import shutil

    from rsz_infer.bundle import MANIFEST, load_manifest
    from rsz_train.runs import load_run

    monkeypatch.setenv("RSZ_CACHE_DIR", str(tmp_path / "cache"))
    old = tmp_path / "old"
    shutil.copytree(classifier_bundle, old)
    manifest = load_manifest(old)
    semantic = manifest.graphs["semantic"]
    semantic.outputs = [t for t in semantic.outputs if t.name != "logvar"]
    (old / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
    _, info = load_run(mcfa_classifier_run, kind="mcfa")
    tiles = [str(p) for p in sorted(Path(tiny_benchmark, "images", info.unseen[0]).iterdir())]
    records, printed = _label(
        tiles, _class_file(tmp_path / "u.txt", info.unseen, info), old, tmp_path / "o.jsonl", capsys
    )
    assert "no logvar output" in printed and "labeled by the nearest class latent" in printed
    assert len(records) == len(tiles) and not (tmp_path / "cache" / "latent_classifiers").exists()
    for record in records.values():  # ranked by the similarity to the class latents: the nearest rule
        assert record["similarities"] == sorted(record["similarities"], reverse=True)


def test_a_classifier_run_killed_before_its_report_resumes_and_scores_the_same(
    mcfa_classifier_run, tiny_benchmark, default_split, tmp_path
):
    """A kill between the final stage's weights (the kept test classifier added to model.safetensors) and
    report.json, or `--resume --epochs M` of a finished run where no new epoch beats the kept one, reloaded
    weights the fresh model has no classifier for: a RuntimeError traceback and a run that never finished."""
    import shutil

    from rsz_train.train import train

    run = tmp_path / "killed"
    shutil.copytree(mcfa_classifier_run, run)
    (run / "report.json").unlink()  # as the kill left it: weights with the classifier, no report yet
    train("mcfa", tiny_benchmark, default_split, run, device="cpu", resume=True)
    finished = json.loads((mcfa_classifier_run / "report.json").read_text())
    assert json.loads((run / "report.json").read_text())["test"] == finished["test"]
