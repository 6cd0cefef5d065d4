"""Export of toy models: ONNX + FP16 + real TensorRT-RTX engines, checks, bundle and CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from rsz_export.api import ExportSource, export_model
from rsz_export.cli import main
from rsz_export.onnx_export import load_checked
from rsz_export.trt_build import ShapeRange, build_engine, onnx_input_dims, optimisation_profile
from rsz_infer.bundle import load_manifest, sha256_file
from rsz_infer.errors import RszError
from rsz_infer.preprocess import PreprocessSpec
from rsz_infer.runners.ort import OrtRunner
from rsz_infer.trt_lib import load_trt, sidecar_path
from rsz_train.models.base import ExportGraph, RszModel

SIZE = 16


class _Image(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, 12)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(image)).mean(dim=(2, 3))
        return F.normalize(self.head(x), dim=1)


class _Text(nn.Module):
    """A MiniLM-shaped toy: int64 ids and mask -> masked mean pooling -> LayerNorm -> L2 normalised."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(1000, 16)
        self.norm = nn.LayerNorm(16)
        self.proj = nn.Linear(16, 12)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(self.embed(input_ids))
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(self.proj(pooled), dim=1)


class _Diverging(_Image):
    """Computes something else when traced: its ONNX graph does not match PyTorch."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = super().forward(image)
        return out * 1.01 if torch.jit.is_tracing() else out


class ToyModel(RszModel):
    kind = "dsva"
    scoring_rule = "cosine"
    class_embedding = "attributes"

    def __init__(self, image: nn.Module | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image = image or _Image()
        self.text = _Text()

    def logit_scale(self) -> float:
        return 10.0

    def export_graphs(self) -> list[ExportGraph]:
        ids = torch.randint(100, 1000, (2, 7))
        return [
            ExportGraph(
                "image",
                self.image,
                (torch.randn(2, 3, SIZE, SIZE),),
                ["image"],
                ["embedding"],
                {"image": {0: "batch"}, "embedding": {0: "batch"}},
            ),
            ExportGraph(
                "text",
                self.text,
                (ids, torch.ones_like(ids)),
                ["input_ids", "attention_mask"],
                ["embedding"],
                {
                    "input_ids": {0: "batch", 1: "seq"},
                    "attention_mask": {0: "batch", 1: "seq"},
                    "embedding": {0: "batch"},
                },
            ),
        ]


def _source(model: RszModel, tmp_path: Path) -> ExportSource:
    tokenizer = tmp_path / "tok.json"
    tokenizer.write_text('{"toy": true}', encoding="utf-8")
    rng = np.random.default_rng(0)
    return ExportSource(
        model=model,
        preprocess=PreprocessSpec(size=SIZE),
        seen_classes=["a", "b"],
        seen_calibration=0.3,
        attribute_names=["green", "grey"],
        attribute_phrases=["green fields", "grey roofs"],
        tokenizer_json=tokenizer,
        class_embeddings=rng.standard_normal((5, 12)).astype(np.float32),
        tiles=rng.standard_normal((4, 3, SIZE, SIZE)).astype(np.float32),
    )


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FP32 + FP16 graphs and real TensorRT-RTX engines (built here on the CPU)."""
    tmp = tmp_path_factory.mktemp("export")
    return export_model(_source(ToyModel(), tmp), tmp / "bundle", fp16=True, engine="trt", batch="1:4:8")


def test_bundle_has_checked_graphs_and_manifest(bundle: Path) -> None:
    manifest = load_manifest(bundle)
    assert set(manifest.graphs) == {"image", "text"}
    assert manifest.graphs["image"].onnx == "image.fp16.onnx" and manifest.graphs["image"].precision == "fp16"
    assert manifest.extra["variants"]["text"] == {"fp32": "text.onnx", "fp16": "text.fp16.onnx"}
    assert manifest.embedding_dim == 12 and manifest.logit_scale == 10.0
    assert manifest.attribute_phrases == ["green fields", "grey roofs"] and manifest.seen_calibration == 0.3
    assert {t.name for t in manifest.graphs["text"].inputs} == {"input_ids", "attention_mask"}
    assert (
        manifest.graphs["text"].inputs[0].shape == ["batch", "seq"]
        and manifest.graphs["text"].inputs[0].dtype == "int64"
    )
    assert "LayerNormalization" in manifest.extra["fp16"]["fp32_ops"]
    assert manifest.extra["checks"]["image.fp32"]["max_relative_error"] < 1e-4
    assert manifest.extra["checks"]["image.fp16"]["min_cosine"] >= 0.999
    assert manifest.extra["checks"]["image.fp16"]["tiles"] == 4
    files = {p.name for p in bundle.iterdir()}
    assert set(manifest.files) == files - {"manifest.json"}
    assert not list(bundle.parent.glob(".bundle.*"))  # the staging folder is gone


def test_fp16_graph_is_float16_inside_with_float32_io(bundle: Path) -> None:
    import onnx

    model = load_checked(bundle / "text.fp16.onnx")
    half = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert half, "weights should be float16"
    rng = np.random.default_rng(3)
    ids = rng.integers(100, 1000, (3, 5)).astype(np.int64)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], np.int64)
    image = rng.standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    for role, feeds in (("text", {"input_ids": ids, "attention_mask": mask}), ("image", {"image": image})):
        half = OrtRunner(bundle / f"{role}.fp16.onnx").infer(feeds)["embedding"]
        full = OrtRunner(bundle / f"{role}.onnx").infer(feeds)["embedding"]
        assert half.dtype == np.float32
        # the values, not only the unit norms every normalised output has: FP16 keeps ~3 digits
        np.testing.assert_allclose(half, full, atol=5e-3, rtol=0)
        cosine = (half * full).sum(1) / (np.linalg.norm(half, axis=1) * np.linalg.norm(full, axis=1))
        assert cosine.min() >= 0.999 and not np.allclose(half, full, atol=1e-7)  # really FP16 inside


def test_real_tensorrt_rtx_engines_with_sidecars(bundle: Path) -> None:
    manifest = load_manifest(bundle)
    assert manifest.graphs["image"].engines == ["image.engine"]
    side = json.loads(sidecar_path(bundle / "text.engine").read_text())
    assert side["library"] in ("tensorrt", "tensorrt_rtx") and side["precision"] == "fp16"
    assert side["profile"]["input_ids"]["min"] == [1, 1] and side["profile"]["input_ids"]["max"][0] == 8
    image_side = json.loads(sidecar_path(bundle / "image.engine").read_text())
    assert image_side["profile"]["image"]["opt"] == [4, 3, SIZE, SIZE]
    assert side["compute_capabilities"] and len(side["onnx_sha256"]) == 64
    assert (bundle / "text.engine").stat().st_size > 1000


# Hand-written broken sidecars, each with the one line read_sidecar gives (the file is named before it).
BAD_SIDECARS = {
    "not_json": ('{"library": "tensorrt_rtx",', "engine sidecar is not JSON (Expecting"),
    "not_an_object": ('["tensorrt_rtx", "1.7"]', "engine sidecar is not a JSON object"),
    "no_library": ({"library": None}, "engine sidecar has no 'library' (rebuild the engine"),
    "version_a_number": ({"library_version": 1.7}, "engine sidecar field 'library_version' must be a string"),
    "targets_a_string": (
        {"compute_capabilities": "8.6"},
        "engine sidecar field 'compute_capabilities' must be",
    ),
    "no_profile": ({"profile": None}, "engine sidecar has no 'profile'"),
    "profile_dims_text": (
        {"profile": {"image": {"min": "1,3,16,16", "opt": [4, 3, 16, 16], "max": [8, 3, 16, 16]}}},
        "engine sidecar field 'profile.image.min' must be a list of integers",
    ),
    "precision_a_number": ({"precision": 16}, "engine sidecar field 'precision' must be a string"),
}


def _bad_sidecar(good: dict, case: str) -> str:
    """The text of BAD_SIDECARS[case]: a string as is, a dict as changes to the good sidecar (None drops)."""
    change = BAD_SIDECARS[case][0]
    if isinstance(change, str):
        return change
    side = {**good, **change}
    return json.dumps({k: v for k, v in side.items() if v is not None})


@pytest.mark.parametrize("case", sorted(BAD_SIDECARS))
def test_a_malformed_engine_sidecar_is_one_line_naming_file_and_field(
    bundle: Path, tmp_path: Path, case: str
) -> None:
    """The runner and rsz-export inspect read sidecars through read_sidecar: one line, file and field.
    (Before, inspect gave a traceback and the runner let ill-typed fields through, a string of targets
    became its characters.)"""
    from rsz_infer.runners.trt import TrtRunner

    good = json.loads(sidecar_path(bundle / "image.engine").read_text())
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    side = sidecar_path(copy / "image.engine")
    side.write_text(_bad_sidecar(good, case), encoding="utf-8")
    expected = f"{side}: {BAD_SIDECARS[case][1]}"
    with pytest.raises(RszError) as err:
        TrtRunner(copy / "image.engine")
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)
    # inspect re-verifies hashes first: list the broken sidecar with its hash, as a careless tool would
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"][side.name] = sha256_file(side)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["inspect", str(copy)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith(f"error: {expected}"), result.output


def _nvidia_gpu() -> bool:
    """An NVIDIA GPU on this host, by the driver's own tool (not by the runner's check under test)."""
    smi = shutil.which("nvidia-smi")
    return smi is not None and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


@pytest.mark.skipif(_nvidia_gpu(), reason="a GPU host: test_trt_runner_on_a_gpu_matches_onnx_runtime instead")
def test_trt_runner_without_gpu_is_one_clear_error(bundle: Path) -> None:
    from rsz_infer.runners.trt import TrtRunner

    with pytest.raises(RszError, match="no usable CUDA GPU"):
        TrtRunner(bundle / "image.engine")


WITHOUT_TENSORRT = (
    "import sys\n"
    "sys.modules['tensorrt'] = sys.modules['tensorrt_rtx_bindings'] = None  # before pip install rsz[trt]\n"
    "from rsz_infer.errors import RszError\n"
    "from rsz_infer.runners.trt import TrtRunner\n"
    "try:\n"
    "    TrtRunner(sys.argv[1])\n"
    "except RszError as err:\n"
    "    print(err)\n"
)


@pytest.mark.skipif(_nvidia_gpu(), reason="a GPU host: the missing GPU is what this test is about")
def test_trt_runner_without_gpu_or_tensorrt_says_no_gpu_first(bundle: Path) -> None:
    """With neither a GPU nor TensorRT, the line is the GPU: installing TensorRT would only change it."""
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_TENSORRT, str(bundle / "image.engine")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    engine = bundle / "image.engine"
    assert proc.stdout.startswith(f"{engine}: no usable CUDA GPU on this machine"), proc.stdout
    assert "pip install" not in proc.stdout


@pytest.mark.skipif(not _nvidia_gpu(), reason="needs an NVIDIA GPU (the GPU twin of the test above)")
def test_trt_runner_on_a_gpu_matches_onnx_runtime(bundle: Path) -> None:
    from rsz_infer.runners.trt import TrtRunner

    x = np.random.default_rng(6).standard_normal((4, 3, SIZE, SIZE)).astype(np.float32)
    with TrtRunner(bundle / "image.engine") as runner:  # the FP16 engine of the FP16 graph
        got = runner.infer({"image": x})["embedding"]
    ref = OrtRunner(bundle / "image.onnx").infer({"image": x})["embedding"]  # FP32
    assert got.shape == ref.shape == (4, 12) and np.isfinite(got).all()
    cosine = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cosine.min() >= 0.999


def test_adding_int8_to_a_bundle_is_no_noop(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """README: `rsz-export ... --fp16 --int8 --out models/dsva` onto the bundle an export without --int8 wrote
    there must not keep the old one as "the same bundle" (no INT8 graph); the same --int8 export again is."""
    out = tmp_path / "bundle"
    shutil.copytree(bundle, out)  # the session bundle stays as the other tests expect it
    rng = np.random.default_rng(1)
    source = replace(
        _source(ToyModel(), tmp_path),
        calibration=rng.random((8, 3, SIZE, SIZE), dtype=np.float32),
        int8_check=rng.random((8, 3, SIZE, SIZE), dtype=np.float32),
        calibration_info={"source": "toy", "sha256": "0" * 64, "tiles": 8},
    )
    with pytest.raises(RszError, match="--force"):
        export_model(source, out, fp16=True, engine="none", batch="1:4:8")
    assert "int8" not in load_manifest(out).extra  # refused: the old bundle is left as it was
    export_model(source, out, fp16=True, engine="none", batch="1:4:8", force=True)
    assert "image" in load_manifest(out).extra["int8"]
    capsys.readouterr()
    # the same --int8 export again (its INT8 timings, so its chosen candidate, may differ): the same bundle
    export_model(source, out, fp16=True, engine="none", batch="1:4:8")
    assert "the same bundle is already there" in capsys.readouterr().err


def test_same_export_is_a_noop_and_a_different_one_needs_force(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    before = (bundle / "manifest.json").read_text()
    export_model(_source(ToyModel(), tmp_path), bundle, fp16=True, engine="none", batch="1:4:8")
    assert (bundle / "manifest.json").read_text() == before
    assert f"note: {bundle}: the same bundle is already there; kept as it is" in capsys.readouterr().err
    other = ToyModel()
    with torch.no_grad():
        other.image.head.bias.add_(0.5)
    with pytest.raises(RszError, match="--force"):
        export_model(_source(other, tmp_path), bundle, engine="none")
    assert (bundle / "manifest.json").read_text() == before


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` and beside it with its mtime and size: what an export may not touch."""
    return {
        str(p.relative_to(folder.parent)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(folder.parent.rglob("*"))
    }


def _fake_run(path: Path, weights: bytes) -> Path:
    """The files export ships from a run (run.config.yaml, run.classes.json, run.model.safetensors)."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("model: {}\n", encoding="utf-8")
    (path / "classes.json").write_text("{}\n", encoding="utf-8")
    (path / "model.safetensors").write_bytes(weights)
    return path


def test_a_different_bundle_is_refused_before_any_graph_is_built(bundle: Path, tmp_path: Path) -> None:
    """What differs up front (precision, INT8, model kind, the run's weights) is refused before any ONNX is
    written: a graph that would fail its check is not reached, and --out and its folder are untouched."""
    out = tmp_path / "models" / "bundle"
    shutil.copytree(bundle, out)  # FP16, no INT8, no run files
    before = _snapshot(out)
    diverging = _source(ToyModel(_Diverging()), tmp_path)  # would fail as "differs from PyTorch"
    with pytest.raises(RszError, match=r"different bundle is already there \(its default precision is fp16"):
        export_model(diverging, out, engine="none", batch="1:4:8")
    calibration = np.zeros((8, 3, SIZE, SIZE), dtype=np.float32)
    int8 = replace(diverging, calibration=calibration, int8_check=calibration)
    with pytest.raises(RszError, match=r"\(it has no INT8 graph \(--int8\)\); pass --force"):
        export_model(int8, out, fp16=True, engine="none", batch="1:4:8")
    assert _snapshot(out) == before

    # the run's weights are known before the run is loaded: rsz-export --run is refused before load_run
    # (this run's config.yaml would not load)
    run_a = _fake_run(tmp_path / "runs" / "a", b"weights of run a")
    source = replace(_source(ToyModel(), tmp_path), run_dir=run_a)
    export_model(source, out, fp16=True, engine="none", batch="1:4:8", force=True)
    before = _snapshot(out)
    run_b = _fake_run(tmp_path / "runs" / "b", b"weights of run b")
    with pytest.raises(RszError, match=r"\(it holds another run's model.safetensors\)"):
        export_model(replace(diverging, run_dir=run_b), out, fp16=True, engine="none", batch="1:4:8")
    args = ["--run", str(run_b), "--fp16", "--engine", "none", "--out", str(out)]
    result = CliRunner().invoke(main, ["--model", "dsva", *args])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        f"error: {out}: a different bundle is already there (it holds another run's model.safetensors); "
        "pass --force to replace it"
    )
    result = CliRunner().invoke(main, ["--model", "mcfa", *args])
    assert result.exit_code == 2 and "(a dsva bundle, this export is mcfa)" in result.output
    assert _snapshot(out) == before


def test_diverging_graph_fails_the_check_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "broken"
    with pytest.raises(RszError, match="image.onnx.*differs from PyTorch"):
        export_model(_source(ToyModel(_Diverging()), tmp_path), out, engine="none")
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["tok.json"]


def test_a_failed_export_leaves_no_folder_it_made_for_out(tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "broken"  # the lock file beside --out made new/ and new/deeper/
    with pytest.raises(RszError, match="differs from PyTorch"):
        export_model(_source(ToyModel(_Diverging()), tmp_path), out, engine="none")
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]


def test_a_bundle_rsz_infer_could_not_read_is_never_written(tmp_path: Path) -> None:
    # e.g. a CLIP folder's preprocessor_config.json with std 0: refused before the bundle takes --out's place
    source = _source(ToyModel(), tmp_path)
    source = replace(source, preprocess=replace(source.preprocess, std=(0.0, 0.0, 0.0)))
    out = tmp_path / "bad_std"
    with pytest.raises(RszError, match=r"bad_std: rsz-infer could not read this bundle \(preprocess.std"):
        export_model(source, out, engine="none")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".bad_std.")]


def test_corrupted_onnx_is_one_line(bundle: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes((bundle / "image.onnx").read_bytes()[:300])
    with pytest.raises(RszError, match="bad.onnx: invalid ONNX graph") as err:
        load_checked(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(RszError, match="bad.onnx"):
        build_engine(bad, tmp_path / "bad.engine", {}, "fp32")


def test_engine_build_profile_from_onnx(bundle: Path, tmp_path: Path) -> None:
    dims = onnx_input_dims(bundle / "text.onnx")
    profile = optimisation_profile(dims, ShapeRange.parse("2:3:5"), ShapeRange(1, 4, 16))
    assert profile["attention_mask"] == {"min": [2, 1], "opt": [3, 4], "max": [5, 16]}
    side = build_engine(bundle / "text.onnx", tmp_path / "t.engine", profile, "fp32")
    assert side["profile"] == profile and sidecar_path(tmp_path / "t.engine").is_file()


@pytest.mark.parametrize("text", ["1:32", "0:1:2", "8:4:16", "a:b:c"])
def test_bad_batch_profile(text: str) -> None:
    with pytest.raises(RszError, match="--batch"):
        ShapeRange.parse(text)


def test_tensorrt_too_old_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    old = types.ModuleType("tensorrt")
    old.__version__ = "8.6.1"
    monkeypatch.setitem(sys.modules, "tensorrt", old)
    load_trt.cache_clear()
    try:
        with pytest.raises(RszError, match="tensorrt 8.6.1: too old"):
            load_trt()
    finally:
        load_trt.cache_clear()


def test_inspect_prints_table_and_detects_tampering(bundle: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(bundle)])
    assert result.exit_code == 0, result.output
    assert "graph image" in result.output and "image.fp16.onnx [fp16]" in result.output
    assert "verified" in result.output
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    with open(copy / "text.onnx", "ab") as f:
        f.write(b"\0")
    result = CliRunner().invoke(main, ["inspect", str(copy)])
    assert result.exit_code == 2 and "text.onnx: sha256 does not match" in result.output


WITHOUT_EXPORT_EXTRAS = (
    "import sys\n"
    "sys.modules['torch'] = sys.modules['onnx'] = None  # an inference-only install (pip install .)\n"
    "from rsz_infer import entry\n"
    "sys.argv = ['rsz-export', *sys.argv[1:]]\n"
    "entry.export_main()\n"
)


def test_inspect_needs_no_export_extra(bundle: Path, tmp_path: Path) -> None:
    """Someone who installed only the inference side can inspect a bundle they were sent; building one
    still says which extra it needs."""
    inspect = [sys.executable, "-c", WITHOUT_EXPORT_EXTRAS, "inspect", str(bundle)]
    proc = subprocess.run(inspect, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and "verified" in proc.stdout, proc.stderr
    build = [sys.executable, "-c", WITHOUT_EXPORT_EXTRAS, "--model", "dsva", "--run", str(tmp_path)]
    proc = subprocess.run(build, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().startswith("error: rsz-export needs the "), proc.stderr


def test_cli_errors_missing_run_and_wrong_kind(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["--model", "dsva", "--run", str(tmp_path / "nope"), "--engine", "none"]
    )
    assert result.exit_code == 2 and "run folder not found" in result.output
    run = tmp_path / "mcfa_run"
    run.mkdir()
    (run / "config.yaml").write_text("kind: mcfa\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["--model", "dsva", "--run", str(run), "--engine", "none"])
    assert result.exit_code == 2 and "is a mcfa run, not dsva" in result.output
    result = CliRunner().invoke(main, ["build", "--run", str(run)])
    assert result.exit_code == 2 and "--model and --run are required" in result.output


def test_torch_runner_fp16_copy_and_no_gpu_error() -> None:
    from rsz_infer.runners.torch import TorchRunner

    module = _Image().eval()
    x = np.random.default_rng(5).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    ref = TorchRunner(module, input_names=["image"], output_names=["embedding"]).infer({"image": x})
    half = TorchRunner(module, fp16=True).infer({"image": x})["output0"]
    assert half.dtype == np.float32 and np.abs(half - ref["embedding"]).max() < 1e-2
    assert next(module.parameters()).dtype == torch.float32  # the caller's module is not changed
    if not torch.cuda.is_available():
        with pytest.raises(RszError, match="no CUDA GPU"):
            TorchRunner(module, device="cuda")


def test_training_gsd_goes_into_the_manifest(tmp_path: Path) -> None:
    """rsz-export --gsd: the bundle records the ground resolution the model was trained at (rsz-infer --gsd
    auto resamples scene windows to it); without it the manifest says null."""
    from dataclasses import replace

    from rsz_infer.images import TileOptions
    from rsz_infer.pipeline import resolve_gsd

    source = _source(ToyModel(), tmp_path)
    with_gsd = export_model(replace(source, gsd=0.3), tmp_path / "gsd", engine="none")
    without = export_model(source, tmp_path / "plain", engine="none")
    assert load_manifest(with_gsd).gsd == 0.3 and load_manifest(without).gsd is None
    assert resolve_gsd("auto", load_manifest(with_gsd), TileOptions()).gsd == 0.3
    assert resolve_gsd("auto", load_manifest(without), TileOptions()).gsd is None
    assert resolve_gsd("off", load_manifest(with_gsd), TileOptions()).gsd is None
    with pytest.raises(RszError, match="--gsd -1: metres per pixel must be positive"):
        resolve_gsd("-1", load_manifest(with_gsd), TileOptions())


# ---------------------------------------------------------------- --out: what --force may replace, and when


def _beside(out: Path) -> list[str]:
    """Names rsz-export could leave beside --out (staging folders, .NAME.old, the lock file)."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def _run_folder(path: Path) -> Path:
    """A folder of finished work, as rsz-train leaves it (the files --force must never delete)."""
    path.mkdir(parents=True)
    for name in ("config.yaml", "model.safetensors", "metrics.jsonl", "report.json"):
        (path / name).write_text(f"{name} of a finished run\n", encoding="utf-8")
    return path


def test_force_replaces_only_a_bundle_and_leaves_nothing_beside(tmp_path: Path) -> None:
    """--force replaces an rsz bundle; any other folder (no manifest, or files the manifest does not list)
    or a file at --out is refused in one line, untouched, with nothing left beside it."""
    source = _source(ToyModel(), tmp_path)
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine\n", encoding="utf-8")
    with pytest.raises(RszError, match=r"--out .*proj: exists and is not an rsz bundle \(no manifest.json\)"):
        export_model(source, folder, engine="none", force=True)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"] and _beside(folder) == []
    afile = tmp_path / "afile"
    afile.write_text("keep me\n", encoding="utf-8")
    for force in (True, False):
        with pytest.raises(RszError, match="afile: is a file, not a bundle folder") as err:
            export_model(source, afile, engine="none", force=force)
        assert "\n" not in str(err.value)
    assert afile.read_text(encoding="utf-8") == "keep me\n" and _beside(afile) == []

    out = export_model(source, tmp_path / "bundle", engine="none")
    (out / "mine.txt").write_text("not the bundle's\n", encoding="utf-8")
    with pytest.raises(RszError, match=r"mine.txt is not one of the bundle's files\); --force replaces only"):
        export_model(source, out, engine="none", force=True)
    (out / "mine.txt").unlink()
    before = (out / "manifest.json").read_text(encoding="utf-8")
    other = ToyModel()
    with torch.no_grad():
        other.image.head.bias.add_(0.5)
    export_model(_source(other, tmp_path), out, engine="none", force=True)
    assert (out / "manifest.json").read_text(encoding="utf-8") != before
    load_manifest(out, verify=True)
    assert _beside(out) == []


def test_out_is_checked_before_any_work(tmp_path: Path) -> None:
    """A refused --out is said before the model is loaded or exported: a run folder that does not exist, or
    a graph that would fail its check, is not reached."""
    afile = tmp_path / "afile"
    afile.write_text("x\n", encoding="utf-8")
    args = ["--model", "dsva", "--run", str(tmp_path / "nope"), "--engine", "none", "--force"]
    result = CliRunner().invoke(main, [*args, "--out", str(afile)])
    assert result.exit_code == 2 and "afile: is a file, not a bundle folder" in result.output
    with pytest.raises(RszError, match="afile: is a file"):  # not "image.onnx ... differs from PyTorch"
        export_model(_source(ToyModel(_Diverging()), tmp_path), afile, engine="none")
    # a file where a folder of --out would be: said so, not "[Errno 17] File exists: '.../afile'"
    result = CliRunner().invoke(main, [*args, "--out", str(afile / "models" / "dsva")])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: --out {afile}/models/dsva: {afile} is a file, not a folder"


def test_out_inside_a_retrieval_index_folder_is_refused(tmp_path: Path) -> None:
    """rsz-export --out idx/bundle wrote the bundle into an index folder, and the next `rsz-infer index
    --out idx` refused the folder for it: refused up front in the wording rsz-infer's outputs get."""
    from PIL import Image

    from rsz_infer.index import IndexConfig, build_index

    source = _source(ToyModel(), tmp_path)
    bundle = export_model(source, tmp_path / "bundle", engine="none")
    (tmp_path / "tiles").mkdir()
    Image.new("RGB", (SIZE, SIZE), "red").save(tmp_path / "tiles" / "red.png")
    idx = tmp_path / "idx"
    build_index(IndexConfig([str(tmp_path / "tiles")], bundle, idx, progress=False))
    before = sorted(p.name for p in idx.iterdir())
    for out in (idx, idx / "bundle"):
        with pytest.raises(RszError) as err:
            export_model(source, out, engine="none", force=True)
        assert str(err.value) == (
            f"--out {out}: inside the index folder {idx.resolve()}, which holds only the index's own files "
            "(the next `rsz-infer index --out` into it would refuse it); write it outside that folder"
        )
    assert sorted(p.name for p in idx.iterdir()) == before and _beside(idx) == []


def test_force_never_touches_the_run_folder(tmp_path: Path) -> None:
    """--out may not be the run folder, a folder inside it or one that holds it, --force or not."""
    run = _run_folder(tmp_path / "proj" / "run")
    (tmp_path / "proj" / "notes.txt").write_text("mine\n", encoding="utf-8")
    args = ["--model", "dsva", "--run", str(run), "--engine", "none", "--force", "--out"]
    for out, said in ((run, "or inside it"), (run / "bundle", "or inside it"), (tmp_path / "proj", "holds")):
        result = CliRunner().invoke(main, [*args, str(out)])
        assert result.exit_code == 2 and said in result.output and "an input of this export" in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert sorted(p.name for p in run.iterdir()) == [
        "config.yaml",
        "metrics.jsonl",
        "model.safetensors",
        "report.json",
    ]
    assert sorted(p.name for p in (tmp_path / "proj").iterdir()) == ["notes.txt", "run"]
    assert not (run / "bundle").exists() and _beside(run) == [] and _beside(tmp_path / "proj") == []


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "0"])
def test_gsd_must_be_finite_and_positive(value: str, tmp_path: Path) -> None:
    from dataclasses import replace

    result = CliRunner().invoke(
        main, ["--model", "dsva", "--run", str(tmp_path / "nope"), "--engine", "none", "--gsd", value]
    )
    assert (
        result.exit_code == 2 and f"--gsd {float(value)}: metres per pixel must be a finite" in result.output
    )
    with pytest.raises(RszError, match="must be a finite number above zero"):
        export_model(replace(_source(ToyModel(), tmp_path), gsd=float(value)), tmp_path / "b", engine="none")
    assert not (tmp_path / "b").exists()


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height (what Pillow and GDAL read before decoding) and holds one row."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\0" * (width + 1))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [11_000, 14_000])  # above --max-pixels; above Pillow's own bomb limit too
def test_huge_tile_is_skipped_in_one_line_before_decoding(side: int, tmp_path: Path, capsys) -> None:
    """--tiles / --calibration keep rsz-infer's --max-pixels rule: a header declaring more is skipped in one
    warning line naming the file (not Pillow's DecompressionBombError traceback, nor a 400 MB decode), and
    the good tile beside it is kept; with no good tile left, one error line names the folder and the file."""
    from PIL import Image

    from rsz_export.api import load_tiles

    tiles = tmp_path / "tiles"
    tiles.mkdir()
    Image.new("RGB", (SIZE, SIZE), (10, 20, 30)).save(tiles / "a.png")
    _png_header(tiles / "zz_big.png", side, side)
    assert load_tiles(tiles, PreprocessSpec(size=SIZE)).shape == (1, 3, SIZE, SIZE)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "skipped 1 of 2 check tiles" in err, err
    assert re.search(r"zz_big.png: image declares .*more than --max-pixels 100,000,000", err), err
    (tiles / "a.png").unlink()
    with pytest.raises(RszError, match=r"zz_big.png: image declares .*more than --max-pixels") as raised:
        load_tiles(tiles, PreprocessSpec(size=SIZE))
    assert "\n" not in str(raised.value) and str(tiles) in str(raised.value)


def test_check_and_calibration_tiles_are_decoded_as_rsz_infer_decodes_them(tmp_path: Path) -> None:
    """--tiles / --calibration read each file as rsz-infer labels it: a 16-bit TIFF is stretched, not clipped
    at 255 by Pillow's convert (calibrating INT8 on white tiles), and a 16-bit RGB TIFF, which Pillow cannot
    open, is read as rsz-infer reads it instead of stopping the export."""
    import rasterio
    from PIL import Image

    from rsz_export.api import load_tiles
    from rsz_infer.images import TileOptions, decode_tile, tile_from_record
    from rsz_infer.preprocess import to_model_input

    tiles = tmp_path / "tiles"
    tiles.mkdir()
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 4096, size=(SIZE, SIZE)).astype(np.uint16)  # 12-bit data, as sensors write
    Image.fromarray(grey).save(tiles / "a_grey16.tif")
    profile = {"driver": "GTiff", "width": SIZE, "height": SIZE, "count": 3, "dtype": "uint16"}
    with rasterio.open(tiles / "b_rgb16.tif", "w", **profile) as ds:
        ds.write(rng.integers(0, 4096, size=(3, SIZE, SIZE)).astype(np.uint16))
    spec = PreprocessSpec(size=SIZE)
    got = load_tiles(tiles, spec)
    options = TileOptions()
    for row, name in zip(got, ["a_grey16.tif", "b_rgb16.tif"], strict=True):
        rgb, _ = decode_tile(tile_from_record(str(tiles / name), None, options), options)
        np.testing.assert_array_equal(row, to_model_input(rgb, spec))


def test_a_killed_exports_leftovers_are_cleaned_up(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Staging folders of --out (tempfile.mkdtemp's .NAME.xxxxxxxx) left by a killed export are removed by the
    next export into --out (it holds the lock, so no running export owns them), in one line; other names stay.
    A kill between the replace's two renames leaves the old bundle as .NAME.old: it is put back."""
    source = _source(ToyModel(), tmp_path)
    out = tmp_path / "bundle"
    stale = tmp_path / ".bundle.k1ll3d_x"
    stale.mkdir()
    (stale / "image.onnx").write_bytes(b"half written")
    (tmp_path / ".bundle.mine").mkdir()
    export_model(source, out, engine="none")
    assert (
        "removed 1 staging folder(s) of an interrupted rsz-export: .bundle.k1ll3d_x"
        in capsys.readouterr().err
    )
    assert not stale.exists() and (tmp_path / ".bundle.mine").is_dir()

    before = (out / "manifest.json").read_text(encoding="utf-8")
    out.rename(tmp_path / ".bundle.old")  # as a kill after out.rename(old), before staging.rename(out)
    other = ToyModel()
    with torch.no_grad():
        other.image.head.bias.add_(0.5)
    with pytest.raises(RszError, match="a different bundle is already there"):  # the old one, put back
        export_model(_source(other, tmp_path), out, engine="none")
    assert "put back the bundle an interrupted rsz-export had moved to .bundle.old" in capsys.readouterr().err
    assert (out / "manifest.json").read_text(encoding="utf-8") == before
    assert _beside(out) == [".bundle.mine"]


_CTRL_C: dict = {}  # _ctrl_c_hook's plan: armed by a rename onto "armed_by", Ctrl-C once manifest.json went
_HOOKED: list = []  # audit hooks stay for the process: an empty _CTRL_C leaves it idle


def _ctrl_c_hook(event: str, args: tuple) -> None:
    """An audit hook: KeyboardInterrupt (what Ctrl-C or rsz's SIGTERM handler raises) at a set point."""
    plan = _CTRL_C
    if not plan:
        return
    if event == "os.rename" and Path(os.fsdecode(args[1])) == plan["armed_by"]:
        plan["armed"] = True
    elif event in ("os.remove", "os.rmdir") and plan.get("armed"):
        if plan.get("manifest_gone"):
            plan.clear()
            raise KeyboardInterrupt
        plan["manifest_gone"] = event == "os.remove" and Path(os.fsdecode(args[0])).name == "manifest.json"


def test_ctrl_c_while_the_replaced_bundle_is_deleted_leaves_nothing_in_the_way(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Ctrl-C (SIGTERM, a kill) while --force deletes the bundle it replaced, the new one at --out already:
    --out is the new bundle whole, and the next export into --out removes what is left and succeeds. (The
    old bundle was deleted in place as .NAME.old: once its manifest.json had gone it was no bundle, and every
    later export into --out stopped at "is in the way of rsz-export".)"""
    out = tmp_path / "bundle"
    export_model(_source(ToyModel(), tmp_path), out, engine="none")
    other = ToyModel()
    with torch.no_grad():
        other.image.head.bias.add_(0.5)
    source = _source(other, tmp_path)
    if not _HOOKED:
        sys.addaudithook(_ctrl_c_hook)
        _HOOKED.append(True)
    _CTRL_C.update(armed_by=out)
    try:
        with pytest.raises(KeyboardInterrupt):
            export_model(source, out, engine="none", force=True)
    finally:
        _CTRL_C.clear()
    new = load_manifest(out)
    assert all(sha256_file(out / name) == digest for name, digest in new.files.items())
    assert export_model(source, out, engine="none") == out  # the same bundle: kept
    assert "of an interrupted rsz-export" in capsys.readouterr().err
    assert load_manifest(out).files == new.files and _beside(out) == []


def test_bundle_folder_mode_follows_the_umask(tmp_path: Path) -> None:
    """Not mkdtemp's 0700: the bundle folder is made like any new folder of the user (others may read it)."""
    import os
    import stat

    source = _source(ToyModel(), tmp_path)
    for umask in (0o022, 0o002):
        old = os.umask(umask)
        try:
            out = export_model(source, tmp_path / f"b{umask:o}", engine="none")
        finally:
            os.umask(old)
        assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask


def test_a_second_export_into_the_same_out_waits_for_none(tmp_path: Path) -> None:
    from rsz_infer.locking import OutputLock

    out = tmp_path / "bundle"
    with OutputLock(out), pytest.raises(RszError, match="another rsz-export is writing it right now"):
        export_model(_source(ToyModel(), tmp_path), out, engine="none")
    assert not out.exists()
