"""rsz-bench on tiny real models: each command writes well-formed JSON and markdown; plot writes a PNG.

No timing is asserted (speed goals never belong in tests), only that the figures exist; their values are
checked against known ones (hand-counted FLOPs, known times, a known sleep) in test_bench_measures.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from rsz_bench.cli import main

LATENCY_ARGS = ["--iters", "2", "--warmup", "1"]


def _run(args: list[str]) -> str:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="session")
def latency_result(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("latency")
    _run(
        ["latency", "--model", "ref:vit_tiny", "--image-size", "32", "--backend", "ort,torch,torch-graphs"]
        + ["--precision", "fp32,fp16", "--batch", "1,2", "--out", str(out), *LATENCY_ARGS]
    )
    return out / "latency_vit_tiny.json"


def test_latency_writes_rows_flops_and_peak(latency_result):
    result = json.loads(latency_result.read_text())
    assert result["kind"] == "latency" and result["model"] == "ref:vit_tiny" and result["image_size"] == 32
    assert result["flops_per_image"] > 0 and "FlopCounterMode" in result["flops_method"]
    assert result["peaks"]["cpu"]["tflops"] > 0
    rows = {(r["backend"], r["precision"], r["batch"]): r for r in result["rows"]}
    assert len(rows) == 3 * 2 * 2
    for key in [("ort", "fp32", 1), ("ort", "fp32", 2), ("ort", "fp16", 2), ("torch", "fp32", 2)]:
        row = rows[key]
        assert row["status"] == "ok", row
        # every figure is there; what they are worth is checked against known values in test_bench_measures
        assert row["p50_ms"] > 0 and row["images_per_s"] > 0 and row["fraction_of_peak"] > 0
    # on a CPU machine the GPU-only configurations say why they did not run
    assert rows[("torch-graphs", "fp32", 1)]["status"].startswith("skipped: CUDA graphs need a GPU")
    assert rows[("torch", "fp16", 1)]["status"].startswith("skipped")
    md = latency_result.with_suffix(".md").read_text()
    assert "Command: `rsz-bench latency" in md and "Machine:" in md and "Date:" in md
    assert md.count("\n| ort |") == 4 and "| p50 ms |" in md


def test_latency_markdown_headlines_ratios_of_rows_timed_in_the_run(latency_result):
    """Speeds compare only as ratios measured in one run: the markdown led with absolute images/s alone."""
    result = json.loads(latency_result.read_text())
    for batch in (1, 2):
        rows = {(r["backend"], r["precision"]): r for r in result["rows"] if r["batch"] == batch}
        base, ort = rows[("torch", "fp32")], rows[("ort", "fp32")]
        assert base["x_baseline"] == 1.0 and ort["baseline"] == "torch fp32"
        assert ort["x_baseline"] == pytest.approx(ort["images_per_s"] / base["images_per_s"])
        assert "x_baseline" not in rows[("torch-graphs", "fp32")]  # skipped: no ratio
    md = latency_result.with_suffix(".md").read_text()
    body = md.split("Command: ", 1)[1].splitlines()[2:]  # after the header and its blank line
    assert body[0] == "Speed ratios (images/s at p50, rows timed in this same run):"
    ort = next(r for r in result["rows"] if (r["backend"], r["precision"], r["batch"]) == ("ort", "fp32", 1))
    assert body[1].startswith(f"- batch 1: ort fp32 {ort['x_baseline']:.2f}x, ") and body[1].endswith(
        " the speed of torch fp32"
    )
    assert "| x baseline |" in md


def test_results_say_the_versions_that_made_them(latency_result):
    """rsz's, onnxruntime's and (rows ran on it) torch's version in the JSON and in the markdown's header:
    the markdown had none, the JSON torch's only on a GPU machine."""
    import onnxruntime
    import torch

    import rsz_infer

    want = {"rsz": rsz_infer.__version__, "onnxruntime": onnxruntime.__version__, "torch": torch.__version__}
    versions = json.loads(latency_result.read_text())["machine"]["versions"]
    assert {k: versions.get(k) for k in want} == want
    md = latency_result.with_suffix(".md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("Versions: "))
    assert all(f"{k} {v}" in line for k, v in want.items()), line


def test_latency_onnx_flop_count_agrees_with_torch(tmp_path):
    from rsz_bench.flops import onnx_flops, torch_flops
    from rsz_bench.reference import build_reference, export_reference_onnx

    ref = build_reference("ref:resnet_tiny", 32)
    counted = onnx_flops(export_reference_onnx(ref, tmp_path))
    assert counted == pytest.approx(torch_flops(ref.module, ref.example(1)), rel=0.02)


def test_bad_options_are_one_line_errors(tmp_path):
    for args, message in [
        (["latency", "--model", "ref:nope"], "ref:nope: unknown reference model"),
        (["latency", "--model", "ref:vit_tiny", "--batch", "0"], "--batch 0: expected positive integers"),
        (["latency", "--model", str(tmp_path)], "not an rsz model bundle"),
        (["latency", "--model", str(tmp_path / "typo")], f"{tmp_path / 'typo'}: no model bundle here"),
        (["plot", str(tmp_path / "missing.json"), "--out", str(tmp_path / "p.png")], "missing.json"),
    ]:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output


def test_plot_writes_png(latency_result, tmp_path):
    png = tmp_path / "plots" / "throughput.png"
    _run(["plot", str(latency_result), "--out", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(png).size[0] > 100
    # another command's result is one line, not a KeyError on rows without a batch size
    other = tmp_path / "accuracy_x.json"
    row = {"backend": "ort", "precision": "fp32", "device": "ort:cpu", "zsl": 0.3, "status": "ok"}
    other.write_text(json.dumps({"kind": "accuracy", "model": "m", "rows": [row]}))
    result = CliRunner().invoke(main, ["plot", str(other), "--out", str(tmp_path / "o.png")])
    assert result.exit_code == 2, result.output
    assert result.output == f"error: {other}: a rsz-bench accuracy result; plot draws latency results\n"


def test_plot_that_cannot_be_written_names_it_and_leaves_no_temporary(latency_result, tmp_path):
    """Written as the JSON and markdown results are (rsz_infer.outputs.atomic_write_bytes): a failed rename
    left `.p.tmp.png` behind and named it instead of --out."""
    taken = tmp_path / "plots" / "p.png"
    taken.mkdir(parents=True)  # --out is a folder: the rename onto it fails
    result = CliRunner().invoke(main, ["plot", str(latency_result), "--out", str(taken)])
    assert result.exit_code == 2, result.output
    assert (
        result.output.startswith(f"error: {taken}: cannot write it (")
        and len(result.output.splitlines()) == 1
    )
    assert [p.name for p in taken.parent.iterdir()] == ["p.png"] and taken.is_dir()
    # a folder of --out that is a file: named, as latency's --out is (it was "[Errno 17] File exists")
    blocker = tmp_path / "notes.txt"
    blocker.write_text("")
    result = CliRunner().invoke(main, ["plot", str(latency_result), "--out", str(blocker / "p.png")])
    assert result.output == f"error: --out {blocker / 'p.png'}: {blocker} is a file, not a folder\n"


def test_e2e_reports_stages_and_skips_bad_tiles(tmp_path):
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        rgb = rng.integers(0, 256, (48 + 8 * i, 40, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(tiles / f"t{i}.{'png' if i % 2 else 'jpg'}")
    (tiles / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "res"
    _run(["e2e", str(tiles), "--model", "ref:vit_tiny", "--batch", "2", "--workers", "2", "--out", str(out)])
    result = json.loads((out / "e2e_vit_tiny.json").read_text())
    assert result["tiles"] == 6 and result["decoded"] == 5
    stages = result["stages"]
    assert set(stages) == {"decode", "resize", "normalize", "copy", "engine", "scoring"}
    assert sum(s["share"] for s in stages.values()) == pytest.approx(1.0)
    figures = result["figures"]
    for key in ("decode_only_tiles_per_s", "encoder_only_tiles_per_s", "pipeline_loop_tiles_per_s"):
        assert figures[key] > 0
    assert "| decode |" in (out / "e2e_vit_tiny.md").read_text()
    assert result["decoder"] in ("pillow", "nvimgcodec:cpu") and result["preprocess"] in (
        "pillow",
        "native:cpu",
    )


def test_latency_e2e_and_ort_settings_options_are_checked_before_any_work(tmp_path):
    """A count below its minimum, or an empty --backend / --precision, is one line naming the value, before
    any model is built (the model here does not even exist)."""
    missing = str(tmp_path / "no_bundle")
    for args, message in [
        (["--iters", "0"], "--iters 0: must be at least 1"),
        (["--iters", "-3"], "--iters -3: must be at least 1"),
        (["--warmup", "-1"], "--warmup -1: must be at least 0"),
        (["--threads", "-2"], "--threads -2: must be at least 0 (0: all cores)"),
        (["--image-size", "-4"], "--image-size -4: must be at least 1"),
        (["--backend", ","], "--backend: no value given; expected one or more of ort, trt, torch"),
        (["--precision", ","], "--precision: no value given; expected one or more of fp32, fp16, int8"),
        (["--precision", "fp8"], "--precision fp8: unknown; known: fp32, fp16, int8"),
    ]:
        result = CliRunner().invoke(main, ["latency", "--model", missing, *args, "--out", str(tmp_path)])
        assert result.exit_code == 2, (args, result.output)
        assert result.output.strip().startswith(f"error: {message}"), args
        assert len(result.output.strip().splitlines()) == 1, args
    for args, message in [
        (["e2e", str(tmp_path), "--model", missing, "--batch", "0"], "--batch 0: must be at least 1"),
        (["ort-settings", "--model", missing, "--iters", "0"], "--iters 0: must be at least 1"),
        (["ort-settings", "--model", missing, "--rounds", "-1"], "--rounds -1: must be at least 1"),
    ]:
        result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "out")])
        assert result.exit_code == 2 and message in result.output and len(result.output.splitlines()) == 1, (
            args,
            result.output,
        )


def test_device_cuda_is_a_gpu_or_an_error_never_a_cpu_row(tmp_path):
    """--device cuda where onnxruntime has no GPU provider (or PyTorch sees no GPU) is rsz-infer's one-line
    error, not rows measured on the CPU."""
    import torch

    from rsz_infer.backend import ort_gpu_providers

    cases = []
    if not ort_gpu_providers():
        cases.append(("ort", "--device cuda: this onnxruntime"))
    if not torch.cuda.is_available():
        cases.append(("torch", "--device cuda: this PyTorch"))
    if not cases:
        pytest.skip("a GPU onnxruntime and a CUDA PyTorch: --device cuda runs on the GPU here")
    for backend, message in cases:
        args = ["latency", "--model", "ref:vit_tiny", "--image-size", "32", "--backend", backend]
        out = tmp_path / backend
        result = CliRunner().invoke(main, [*args, "--device", "cuda", *LATENCY_ARGS, "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"error: {message}") and len(result.output.splitlines()) == 1
        assert not out.exists()
    e2e = ["e2e", str(tmp_path), "--model", "ref:vit_tiny", "--device", "cuda", "--out", str(tmp_path / "e")]
    tile = tmp_path / "t.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tile)
    if not ort_gpu_providers():  # the ref: model's ONNX graph on ONNX Runtime
        result = CliRunner().invoke(main, e2e)
        assert result.exit_code == 2 and "--device cuda: this onnxruntime" in result.output, result.output


def test_e2e_with_no_decodable_tile_names_the_inputs(tmp_path):
    bad = tmp_path / "undecodable"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"not a png")
    (bad / "b.jpg").write_bytes(b"not a jpeg")
    result = CliRunner().invoke(
        main, ["e2e", str(bad), "--model", "ref:vit_tiny", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert line.startswith(f"error: {bad}: none of the 2 tiles could be decoded (first: {bad / 'a.png'}: ")
    assert len(line.splitlines()) == 1


def test_e2e_workers_below_zero_is_a_one_line_error(tmp_path):
    """0 is rsz-infer's default (as its --workers, click.IntRange(min=0)); -1 made the thread pool raise."""
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "t.png")
    args = ["e2e", str(tmp_path / "t.png"), "--model", "ref:vit_tiny", "--workers", "-1"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "error: --workers -1: must be at least 0 (0: rsz-infer's default)"


def test_an_out_that_cannot_be_a_folder_is_refused_before_the_benchmark_runs(tmp_path):
    """Checked first: after the run, the figures of a long benchmark would be lost with an errno line."""
    taken = tmp_path / "results.txt"
    taken.write_text("not a folder")
    missing = str(tmp_path / "no_bundle")  # the check comes before the model is even opened
    for out in (taken, taken / "sub"):
        for args in (["latency", "--model", missing], ["e2e", str(tmp_path), "--model", missing]):
            result = CliRunner().invoke(main, [*args, "--out", str(out)])
            assert result.exit_code == 2, (args, result.output)
            assert result.output == f"error: --out {out}: {taken} is a file, not a folder\n", args


def test_result_files_are_readable_like_any_new_file(tmp_path):
    """Written beside and renamed, yet with the umask's mode: a temporary file's 0600 kept results from the
    team reading them."""
    from rsz_bench.report import new_result, write_result

    plain = tmp_path / "plain.txt"
    plain.write_text("")
    json_path, md_path = write_result(new_result("latency", "Latency: x", rows=[]), "", tmp_path / "res", "r")
    assert json.loads(json_path.read_text())["kind"] == "latency"
    for path in (json_path, md_path):
        assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    assert sorted(p.name for p in json_path.parent.iterdir()) == ["r.json", "r.md"]  # no temporary left
