"""rsz-bench accuracy on real tiny runs and their real bundle: the bundle must be the run's export, and every
row that does not run says the right reason. Built as tests/export and tests/test_retrieval_end_to_end.py
build theirs (synthetic benchmark, one epoch at 32 px, rsz-export with --engine none)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rsz_bench.cli import main

TINY = {"train.image_size": 32, "train.epochs": 1, "train.batch_size": 32, "train.warmup_epochs": 1}


@pytest.fixture(scope="module")
def runs(tiny_benchmark, default_split, tiny_msa_run, tmp_path_factory) -> dict[str, Path]:
    """A synthetic benchmark; a DSVA run and its bundle; the same DSVA trained again with another seed (its
    weights differ); an MSA run (another model kind). The benchmark and the MSA run are the session's
    (tests/conftest.py), read only."""
    from rsz_export.api import export
    from rsz_train.train import train

    root = tmp_path_factory.mktemp("accuracy")
    bench, split, msa = tiny_benchmark, default_split, tiny_msa_run
    dsva = train("dsva", bench, split, root / "runs" / "dsva", device="cpu", overrides=TINY)
    again = train(
        "dsva", bench, split, root / "runs" / "dsva2", device="cpu", overrides={**TINY, "train.seed": 1}
    )
    bundle = export(dsva, root / "models" / "dsva", kind="dsva", engine="none")
    return {
        "root": root,
        "bench": bench,
        "split": split,
        "dsva": dsva,
        "dsva2": again,
        "msa": msa,
        "bundle": bundle,
    }


def _accuracy(runs: dict, run: str, *extra: str):
    args = ["accuracy", "--model", str(runs["bundle"]), "--run", str(runs[run]), "--data", str(runs["bench"])]
    out = runs["root"] / f"out_{run}_{'_'.join(extra).replace(',', '+')}"  # one folder per command
    return CliRunner().invoke(main, [*args, "--split", runs["split"], *extra, "--out", str(out)]), out


def _one_line_error(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output


def test_a_bundle_of_another_kind_is_refused_up_front(runs):
    result, out = _accuracy(runs, "msa", "--backend", "ort", "--precision", "fp32")
    _one_line_error(result, f"a dsva bundle, but the run {runs['msa']} is a msa run")
    assert not out.exists()  # nothing measured, nothing written


def test_a_bundle_of_another_run_of_the_same_kind_is_refused_up_front(runs):
    result, out = _accuracy(runs, "dsva2", "--backend", "ort", "--precision", "fp32")
    _one_line_error(result, f"exported from other weights than {runs['dsva2'] / 'model.safetensors'}")
    assert not out.exists()


def test_precisions_are_latencys_and_rows_that_do_not_run_say_why(runs):
    # fp8 is refused as latency refuses it, before any work (a missing --data is not even looked at)
    result = CliRunner().invoke(
        main,
        ["accuracy", "--model", "m", "--run", "r", "--data", "d", "--split", "s", "--precision", "fp8"],
    )
    _one_line_error(result, "--precision fp8: unknown; known: fp32, fp16, int8")
    result, out = _accuracy(
        runs, "dsva", "--backend", "ort,torch", "--precision", "fp32,fp16,int8", "--device", "cpu"
    )
    assert result.exit_code == 0, result.output
    rows = {
        (r["backend"], r["precision"]): r for r in json.loads(next(out.glob("*.json")).read_text())["rows"]
    }
    assert rows[("ort", "fp32")]["status"] == "ok" and rows[("ort", "fp32")]["device"] == "ort:cpu"
    assert rows[("ort", "int8")]["status"] == f"skipped: no int8 image graph in {runs['bundle']}"
    assert rows[("torch", "int8")]["status"].startswith("skipped: no INT8 in the PyTorch backend")
    assert rows[("torch", "fp16")]["status"].startswith("skipped: PyTorch FP16 needs a GPU")
    assert rows[("torch", "fp32")]["status"] == "skipped: PyTorch FP32 on the CPU is the reference row"
    # the metrics are fractions (0.333), so are their differences: they were said to be percentage points
    md = next(out.glob("*.md")).read_text()
    assert f"split `{runs['split']}` (60 test images" in md
    assert "Δ = backend − PyTorch FP32, a fraction as the metrics are (0.01 = 1 percentage point)." in md


def test_device_cuda_without_a_gpu_onnxruntime_is_refused_up_front(runs):
    from rsz_infer.backend import ort_gpu_providers

    if ort_gpu_providers():
        pytest.skip("this onnxruntime has a GPU provider: --device cuda is allowed here")
    result, out = _accuracy(runs, "dsva", "--backend", "ort", "--precision", "fp32", "--device", "cuda")
    from rsz_infer.backend import gpu_present

    _one_line_error(result, "--device cuda: this onnxruntime")
    assert "has no GPU provider" in result.output and not out.exists()
    # what to do: install the GPU build where a GPU is, else run on the CPU
    want = "rsz[gpu]" if gpu_present() else "no NVIDIA GPU is visible here: use cpu (or auto)"
    assert want in result.output


def test_a_bundle_with_engines_on_a_machine_that_cannot_run_them_keeps_its_other_rows(runs):
    # the README's command with the default backends (ort,trt,torch) on a CPU: TensorRT rows are skipped
    # with TensorRT's reason, the others measured (before, the engine's error ended the whole command)
    from rsz_export.api import export
    from rsz_infer.backend import gpu_present

    if gpu_present():
        pytest.skip("a GPU is visible: the engine may run here")
    engines = export(runs["dsva"], runs["root"] / "models" / "dsva_trt", kind="dsva", engine="trt")
    args = ["accuracy", "--model", str(engines), "--run", str(runs["dsva"]), "--data", str(runs["bench"])]
    out = runs["root"] / "out_trt"
    result = CliRunner().invoke(
        main, [*args, "--split", runs["split"], "--precision", "fp32", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    rows = {r["backend"]: r for r in json.loads(next(out.glob("*.json")).read_text())["rows"][1:]}
    assert rows["ort"]["status"] == "ok"
    assert rows["trt"]["status"].startswith("skipped: ") and "no usable CUDA GPU" in rows["trt"]["status"]
    # the README's latency command on the same bundle: the same skipped TensorRT row, ONNX Runtime timed
    out = runs["root"] / "out_trt_latency"
    latency = ["latency", "--model", str(engines), "--backend", "ort,trt", "--batch", "1", "--iters", "2"]
    result = CliRunner().invoke(main, [*latency, "--precision", "fp32", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = {r["backend"]: r for r in json.loads(next(out.glob("*.json")).read_text())["rows"]}
    assert rows["ort"]["status"] == "ok"
    assert rows["trt"]["status"].startswith("skipped: ") and "no usable CUDA GPU" in rows["trt"]["status"]


def test_a_split_the_run_was_not_trained_on_is_refused_up_front(runs):
    # another split's unseen classes are classes the run trained on or never scores: one line naming the
    # run's own split, not a ValueError traceback from the scoring (nor a meaningless ZSL accuracy)
    other = next(p.name for p in sorted((runs["bench"] / "splits").iterdir()) if p.name != runs["split"])
    args = ["accuracy", "--model", str(runs["bundle"]), "--run", str(runs["dsva"]), "--data"]
    out = runs["root"] / "out_other_split"
    result = CliRunner().invoke(
        main, [*args, str(runs["bench"]), "--split", other, "--backend", "ort", "--out", str(out)]
    )
    _one_line_error(
        result, f"--split {other}: not the split the run {runs['dsva']} was trained on (other unseen classes"
    )
    assert f"names split {runs['split']}" in result.output and not out.exists()


@pytest.mark.parametrize("emptied", ["test_seen", "test_unseen"])
def test_a_split_without_test_images_is_a_one_line_error(runs, tmp_path, emptied):
    # the run's split with one of its test lists emptied: a numpy traceback before (nothing to concatenate,
    # or no samples for per_class_accuracy), now one line naming the empty list
    import shutil

    data = shutil.copytree(runs["bench"], tmp_path / "data")
    listed = data / "splits" / runs["split"] / f"{emptied}.txt"
    listed.write_text("")
    args = ["accuracy", "--model", str(runs["bundle"]), "--run", str(runs["dsva"]), "--data", str(data)]
    out = tmp_path / "out"
    args += ["--split", runs["split"], "--backend", "ort", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    _one_line_error(result, f"{listed}: no test images; accuracy scores the split's test images")
    assert not out.exists()


def test_retrieval_rows_show_every_recall_and_say_they_are_percent() -> None:
    """An MSA run's rows carry rsz_train.evaluate.retrieval_scores' keys (i2t_r1 ... t2i_r10, mR: percent, as
    training's report.json "retrieval"): the table had only mR, under a header calling every metric a
    fraction, and no difference for any R@K."""
    import numpy as np

    from rsz_bench.accuracy import _add_differences, accuracy_markdown
    from rsz_train.evaluate import retrieval_scores

    # captions 0, 1 describe image 0; captions 2, 3 image 1 (scored by cosine)
    text_emb = np.array([[1, 0], [1, 0.5], [0, 1], [-1, 1]], dtype=np.float32)
    text_to_image = np.array([0, 0, 1, 1])
    reference = {"backend": "torch", "precision": "fp32", "device": "cpu", "status": "ok (reference)"}
    row = {"backend": "ort", "precision": "fp32", "device": "ort:cpu", "status": "ok"}
    for r, image_emb in ((reference, [[1, 0], [0, 1]]), (row, [[1, 0], [1, 0.2]])):
        emb = np.array(image_emb, dtype=np.float32)
        r.update(zsl=0.5, U=0.5, S=0.5, H=0.5, _emb=emb, **retrieval_scores(emb, text_emb, text_to_image))
    # By hand. Reference: every image's own caption is its top text and every caption's image its top image.
    # The ort image 1, cos to captions 0.981 0.965 0.196 -0.555: its best own caption (2) has 2 wrong ones
    # above (i2t R@1 1/2, R@5 2/2); caption 1 scores it 0.965 above its image 0 (0.894): t2i R@1 3/4.
    assert [reference[k] for k in ("i2t_r1", "t2i_r1", "mR")] == [100.0, 100.0, 100.0]
    assert [row[k] for k in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5")] == [50.0, 100.0, 75.0, 100.0]
    assert row["mR"] == (50 + 100 + 100 + 75 + 100 + 100) / 6
    _add_differences(row, reference)
    assert (row["d_i2t_r1"], row["d_i2t_r10"], row["d_t2i_r1"], row["d_mR"]) == (-50.0, 0.0, -25.0, -12.5)
    result = {"bundle": "b", "run": "r", "split": "s", "test_images": 2, "seen_calibration": 0.0}
    md = accuracy_markdown({**result, "rows": [reference, row]})
    header = md.splitlines()[2]
    for key in ("zsl", "H", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR"):
        assert f"| {key} | Δ{key} |" in header
    assert "R@K and mR are percent (1 = 1 percentage point)" in md.splitlines()[0]


def test_an_image_graph_giving_nan_embeddings_is_an_error_row_not_figures(runs, tmp_path):
    # an FP16 or INT8 graph that overflows gives NaN embeddings; the argmax of NaN scores is class 0, so the
    # row used to say "ok" with figures of nothing (and a NaN Δ)
    import shutil

    import onnx
    from onnx import helper, numpy_helper

    from rsz_infer.bundle import MANIFEST, sha256_file

    bundle = tmp_path / "nan_bundle"
    shutil.copytree(runs["bundle"], bundle)
    graph_path = bundle / "image.onnx"
    graph = onnx.load(str(graph_path))
    output = graph.graph.output[0].name  # "embedding": times a NaN constant
    graph.graph.initializer.append(numpy_helper.from_array(np.array(np.nan, np.float32), "nan_factor"))
    for node in graph.graph.node:
        node.output[:] = [f"{output}_finite" if o == output else o for o in node.output]
    graph.graph.node.append(helper.make_node("Mul", [f"{output}_finite", "nan_factor"], [output]))
    onnx.save(graph, str(graph_path))
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["files"]["image.onnx"] = sha256_file(graph_path)
    (bundle / MANIFEST).write_text(json.dumps(manifest))

    args = ["accuracy", "--model", str(bundle), "--run", str(runs["dsva"]), "--data", str(runs["bench"])]
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, [*args, "--split", runs["split"], "--backend", "ort", "--precision", "fp32", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    reference, ort = json.loads(next(out.glob("*.json")).read_text())["rows"]
    assert reference["status"] == "ok (reference)"
    assert ort["status"] == "error: 60 of 60 test image embeddings are NaN or infinite"
    assert "d_zsl" not in ort  # no difference against the reference is claimed
    assert "error: 60 of 60 test image embeddings" in next(out.glob("*.md")).read_text()
