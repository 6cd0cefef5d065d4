"""INT8 export (rsz_export.int8): candidates measured on tiles, the check that refuses a bad graph, the
manifest record, a TensorRT-RTX engine from the QDQ graph, and rsz-infer's --precision choice."""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from rsz_export.api import export_model, int8_tiles
from rsz_export.int8 import int8_ops
from rsz_infer.backend import choose_precision, open_runner
from rsz_infer.bundle import load_manifest
from rsz_infer.errors import RszError
from rsz_infer.preprocess import PreprocessSpec
from rsz_infer.runners.ort import OrtRunner
from rsz_infer.trt_lib import sidecar_path

from .test_export import SIZE, ToyModel, _Image, _source


class _Outlier(_Image):
    """A middle layer whose weights INT8 cannot hold: one input column of 1e4 (fed by an input that is
    always 0, so FP32 never sees it) sets every channel's scale, and the real weights round to zero."""

    def __init__(self) -> None:
        super().__init__()
        self.mid = nn.Linear(9, 8)
        with torch.no_grad():
            self.mid.weight[:, 0] = 1e4

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(image)).mean(dim=(2, 3))
        x = self.mid(torch.cat([x[:, :1] * 0.0, x], dim=1))
        return F.normalize(self.head(x), dim=1)


def _int8_source(model, tmp: Path):
    source = _source(model, tmp)
    rng = np.random.default_rng(3)
    source.calibration = rng.standard_normal((48, 3, SIZE, SIZE)).astype(np.float32)
    source.int8_check = rng.standard_normal((24, 3, SIZE, SIZE)).astype(np.float32)
    source.calibration_info = {"source": "toy", "tiles": 48, "sha256": "ab" * 32, "check_source": "toy"}
    return source


@pytest.fixture(scope="session")
def int8_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("int8")
    return export_model(_int8_source(ToyModel(), tmp), tmp / "bundle", engine="trt", batch="1:4:8")


def test_int8_graph_is_checked_recorded_and_close_to_pytorch(int8_bundle: Path) -> None:
    manifest = load_manifest(int8_bundle)
    info = manifest.extra["int8"]["image"]
    name = manifest.extra["variants"]["image"]["int8"]
    assert name == "image.int8.onnx" and name in manifest.files
    assert info["calibration"]["sha256"] == "ab" * 32 and info["method"] in ("dynamic", "static")
    assert {c["method"] for c in info["candidates"]} == {"dynamic", "static", "static-mixed-ends"}
    check = manifest.extra["checks"]["image.int8"]
    assert check["min_cosine"] >= 0.995 and check["tiles"] == 24
    assert int8_ops(int8_bundle / name) > 0  # really INT8 inside
    # the shipped graph against PyTorch on tiles it was not calibrated on
    model = ToyModel().eval()
    x = np.random.default_rng(9).standard_normal((6, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        ref = model.image(torch.from_numpy(x)).numpy()
    got = OrtRunner(int8_bundle / name).infer({"image": x})["embedding"]
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() > 0.99
    assert set(manifest.extra["speed"]["cpu"]) >= {"fp32", "int8", "batch"}


def test_int8_tensorrt_rtx_engine_from_the_qdq_graph(int8_bundle: Path) -> None:
    manifest = load_manifest(int8_bundle)
    info = manifest.extra["int8"]["image"]
    assert "image.int8.engine" in manifest.graphs["image"].engines, info.get("engine_note")
    side = json.loads(sidecar_path(int8_bundle / "image.int8.engine").read_text(encoding="utf-8"))
    assert side["precision"] == "int8" and side["onnx"] == info["qdq_graph"]
    assert info["qdq_graph"] in manifest.files


def test_a_graph_int8_breaks_is_not_shipped(tmp_path: Path, capsys) -> None:
    from rsz_export.cli import _report

    bundle = export_model(_int8_source(ToyModel(_Outlier()), tmp_path), tmp_path / "b", engine="none")
    manifest = load_manifest(bundle)
    info = manifest.extra["int8"]["image"]
    assert info["method"] is None and "no candidate passed" in info["note"]
    assert all(not c["passed"] and c["reason"] for c in info["candidates"]), info["candidates"]
    # the note (the line rsz-export prints) says why each candidate failed: the measured value, the limit
    _report(bundle)
    printed = capsys.readouterr().out
    reasons = "; ".join(f"{c['method']}: {c['reason']}" for c in info["candidates"])
    assert f"int8 image: no INT8 graph shipped: no candidate passed the check ({reasons})\n" in printed
    assert "dynamic: embedding cosine " in printed and " < 0.995" in printed, printed
    assert "int8" not in manifest.extra["variants"]["image"] and not list(bundle.glob("*int8*"))
    with pytest.raises(RszError, match="--precision int8: the bundle has no int8 image graph"):
        open_runner(bundle, manifest, "image", "ort", "cpu", precision="int8")


def test_precision_auto_takes_the_measured_fastest_on_cpu(int8_bundle: Path) -> None:
    manifest = load_manifest(int8_bundle)
    manifest.extra["speed"]["cpu"] = {"batch": 8, "fp32": 5.0, "int8": 2.0}
    assert choose_precision(manifest, "image", "auto", "cpu") == "int8"
    manifest.extra["speed"]["cpu"]["fp32"] = 1.0
    assert choose_precision(manifest, "image", "auto", "cpu") == "fp32"
    manifest.extra["speed"]["cpu"] = {"batch": 8, "fp32": 2.1, "int8": 2.0}  # 5% is not clearly faster
    assert choose_precision(manifest, "image", "auto", "cpu") == "fp32"
    assert choose_precision(manifest, "image", "int8", "cpu") == "int8"
    assert choose_precision(manifest, "text", "int8", "cpu") == "fp32"  # no INT8 text graph: its default
    runner = open_runner(int8_bundle, load_manifest(int8_bundle), "image", "ort", "cpu", precision="int8")
    assert runner.precision == "int8"


def test_cuda_without_gpu_provider_names_what_to_install(int8_bundle: Path, monkeypatch) -> None:
    from rsz_infer import backend

    manifest = load_manifest(int8_bundle)
    if not backend.gpu_present():  # this machine: no GPU, so the GPU build would not help
        with pytest.raises(RszError, match=r"no GPU provider.*; and no NVIDIA GPU is visible here: use cpu"):
            open_runner(int8_bundle, manifest, "image", "ort", "cuda")
    # a GPU machine (its device nodes are hardware this test cannot add) with the CPU-only onnxruntime
    monkeypatch.setattr(backend, "gpu_present", lambda: True)
    with pytest.raises(RszError, match=r"no GPU provider.*pip install 'rsz\[gpu\]' \(onnxruntime-gpu"):
        open_runner(int8_bundle, manifest, "image", "ort", "cuda")
    monkeypatch.undo()
    notes: list[str] = []
    open_runner(int8_bundle, manifest, "image", "auto", "auto", notes)
    assert any(n.startswith("auto: device cpu") and "CPUExecutionProvider" in n for n in notes), notes


def test_calibration_folder_holds_out_check_tiles_and_is_hashed(tmp_path: Path) -> None:
    folder = tmp_path / "cal"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / f"t{i}.png")
    spec = PreprocessSpec(size=SIZE)
    calibration, check, info = int8_tiles(tmp_path, {}, spec, folder)
    assert calibration.shape == (6, 3, SIZE, SIZE) and check.shape == (2, 3, SIZE, SIZE)
    assert "held out" in info["check_source"] and info["tiles"] == 6
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "t0.png")
    assert int8_tiles(tmp_path, {}, spec, folder)[2]["sha256"] != info["sha256"]
    with pytest.raises(RszError, match="report.json names no rsz-layout data folder .*--calibration DIR"):
        int8_tiles(tmp_path, {"data": str(tmp_path / "moved"), "split": "zsl_36_6"}, spec, None)
    # a run killed before its report.json: not a data folder that moved, a run that has not finished
    with pytest.raises(RszError, match=r"no report.json, the run has not finished .*pass --calibration DIR$"):
        int8_tiles(tmp_path, {}, spec, None)


def test_a_calibration_path_that_is_no_folder_says_so(tmp_path: Path) -> None:
    # a mistyped --calibration said "no PNG/JPEG/TIFF tiles", as if the folder were there but empty
    spec = PreprocessSpec(size=SIZE)
    with pytest.raises(
        RszError, match=r"^--calibration .*nope: no such folder \(it takes a folder of tiles\)$"
    ):
        int8_tiles(tmp_path, {}, spec, tmp_path / "nope")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "one.png")
    with pytest.raises(RszError, match=r"one.png: is a file \(it takes a folder of tiles\)$"):
        int8_tiles(tmp_path, {}, spec, tmp_path / "one.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RszError, match=r"empty: no image tiles \(\.jpg, .*, \.bmp\) to calibrate INT8 on$"):
        int8_tiles(tmp_path, {}, spec, tmp_path / "empty")


def test_tiles_and_calibration_folders_take_the_image_files_rsz_infer_labels(tmp_path: Path, capsys) -> None:
    """--tiles / --calibration read .png/.jpg/.tif only: a folder of .bmp/.gif/.webp/.jp2 tiles, which
    rsz-infer labels and rsz-train trains on, was "no PNG/JPEG/TIFF tiles". Now they read rsz-train's set,
    each decoded as rsz-infer decodes it; a GDAL-only raster (.vrt) and a hidden AppleDouble copy are left
    out, the .vrt said in one note."""
    from rsz_export.api import load_tiles
    from rsz_infer.images import TileOptions, decode_image_file
    from rsz_infer.preprocess import to_model_input

    folder = tmp_path / "cal"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"t{i}{s}" for i, s in enumerate([".bmp", ".gif", ".webp", ".jp2"] * 2)]
    for name in names:
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / name)
    (folder / "._t0.bmp").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (folder / "scene.vrt").write_text("<VRTDataset/>")
    spec = PreprocessSpec(size=SIZE)
    calibration, check, info = int8_tiles(tmp_path, {}, spec, folder)
    assert (info["tiles"], info["skipped"], info["check_tiles"], info["check_skipped"]) == (6, 0, 2, 0)
    got = load_tiles(folder, spec)
    want = [to_model_input(decode_image_file(folder / n, TileOptions())[0], spec) for n in names]
    np.testing.assert_array_equal(got, np.stack(want))
    notes = capsys.readouterr().err.splitlines()
    assert len(notes) == 2 and all(n == notes[0] for n in notes), notes  # one per folder read, no warning
    assert notes[0].startswith(f"note: {folder}: left out 1 files read by GDAL only (.vrt, e.g. scene.vrt)")


def test_an_undecodable_calibration_or_check_tile_is_skipped_not_fatal(tmp_path: Path, capsys) -> None:
    """A corrupt .jpg among good PNGs stopped the whole INT8 step: now it is skipped with one warning line,
    counted in the manifest's INT8 record and left out of its hash; no tile left is the one error."""
    from click.testing import CliRunner

    from rsz_export.cli import main
    from rsz_export.int8 import tiles_hash

    folder = tmp_path / "cal"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / f"t{i}.png")
    (folder / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG after all")  # a calibration tile
    (folder / "t2.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")  # a held-out check tile
    spec = PreprocessSpec(size=SIZE)
    calibration, check, info = int8_tiles(tmp_path, {}, spec, folder)
    assert calibration.shape == (6, 3, SIZE, SIZE) and check.shape == (1, 3, SIZE, SIZE)
    assert (info["tiles"], info["skipped"], info["check_tiles"], info["check_skipped"]) == (6, 1, 1, 1)
    good = [folder / f"t{i}.png" for i in (0, 1, 3, 4, 5, 7)]
    assert info["sha256"] == tiles_hash(good, folder)
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 2 and all(w.startswith(f"warning: {folder}: skipped 1 of ") for w in warnings)
    assert "calibration tiles" in warnings[0] and "bad.jpg: cannot decode image" in warnings[0]
    assert "check tiles" in warnings[1] and "t2.png: cannot decode image" in warnings[1]

    source = _int8_source(ToyModel(), tmp_path)
    source.calibration, source.int8_check, source.calibration_info = calibration, check, info
    bundle = export_model(source, tmp_path / "bundle", engine="none")
    recorded = load_manifest(bundle).extra["int8"]["image"]["calibration"]
    assert (recorded["skipped"], recorded["check_skipped"]) == (1, 1)
    shown = CliRunner().invoke(main, ["inspect", str(bundle)]).output
    assert f"6 tiles of {folder} sha256 {info['sha256'][:16]}; 2 skipped (cannot be decoded)" in shown

    for path in folder.iterdir():
        if path.name != "bad.jpg":
            path.unlink()
    for i in range(4):
        (folder / f"c{i}.jpg").write_bytes(b"corrupt")
    nothing_left = rf"^{re.escape(str(folder))}: none of its 4 calibration tiles can be decoded \(first: "
    with pytest.raises(RszError, match=nothing_left):
        int8_tiles(tmp_path, {}, spec, folder)


def test_a_multi_page_tiff_among_calibration_tiles_is_skipped_with_its_reason(tmp_path: Path, capsys) -> None:
    """rsz-export reads one image per file: a multi-page TIFF is left out, said as such, not read as its first
    page alone (rsz-infer labels every page)."""
    folder = tmp_path / "cal"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)) for _ in range(11)]
    for i, image in enumerate(images[:8]):
        image.save(folder / f"t{i}.png" if i else folder / "t0.tif")  # one plain TIFF: read as before
    images[8].save(folder / "stack.tif", save_all=True, append_images=images[9:])
    calibration, check, info = int8_tiles(tmp_path, {}, PreprocessSpec(size=SIZE), folder)
    assert (info["tiles"], info["skipped"], info["check_tiles"], info["check_skipped"]) == (6, 1, 2, 0)
    warning = capsys.readouterr().err
    assert f"{folder / 'stack.tif'}: a multi-page TIFF (3 pages): read as one image per file here" in warning


def test_static_qdq_quantizes_only_the_weighted_ops(int8_bundle: Path) -> None:
    """INT8 activations only at MatMul/Gemm/Conv (a tensor between other ops, such as the adds, softmax and
    normalisations, stays float: what let a static graph pass the check on real models), and the `ends`
    candidate keeps its first and last weighted op in float."""
    import onnx

    from rsz_export.int8 import WEIGHTED_OPS, _excluded_nodes

    qdq = onnx.load(str(int8_bundle / load_manifest(int8_bundle).extra["int8"]["image"]["qdq_graph"]))
    nodes = qdq.graph.node
    producer = {o: n.op_type for n in nodes for o in n.output}
    readers: dict[str, set[str]] = {}
    for n in nodes:
        for i in n.input:
            readers.setdefault(i, set()).add(n.op_type)
    dequantized = {n.input[0]: n.output[0] for n in nodes if n.op_type == "DequantizeLinear"}
    quantized = [(n.input[0], dequantized[n.output[0]]) for n in nodes if n.op_type == "QuantizeLinear"]
    assert quantized  # (float tensor, its dequantized copy) of every INT8 activation
    for tensor, copy in quantized:
        assert producer.get(tensor) in WEIGHTED_OPS or readers.get(copy, set()) & set(WEIGHTED_OPS), tensor
    weighted = [n.name for n in nodes if n.op_type in WEIGHTED_OPS]
    assert _excluded_nodes(qdq, "static-mixed-ends") == [weighted[0], weighted[-1]]
    assert _excluded_nodes(qdq, "static") == []


def test_cpu_sessions_do_not_spin(int8_bundle: Path) -> None:
    """Idle ONNX Runtime threads sleep: rsz-infer's decode threads share the cores (spinning threads cost
    the labeling loop about a fifth of its rate on 2 cores, benchmarks/RESULTS.md)."""
    runner = OrtRunner(int8_bundle / "image.onnx")
    options = runner.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_int8_temporaries_live_in_the_staging_folder_not_tmpdir(tmp_path: Path, monkeypatch) -> None:
    """The INT8 candidates (rsz's and ONNX Runtime's, each the size of the image graph) are built inside the
    bundle's staging folder: a SIGKILL mid-quantization leaves them there, removed by the next export into
    --out, never in $TMPDIR where nothing removes them."""
    tmpdir = tmp_path / "TMPDIR"
    tmpdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    made: list[str] = []
    recording = [True]

    def hook(event: str, args: tuple) -> None:
        if recording[0] and event in ("tempfile.mkdtemp", "tempfile.mkstemp"):
            made.append(str(args[0]))

    sys.addaudithook(hook)  # cannot be removed: it stops recording at the end of the test
    try:
        out = tmp_path / "out" / "bundle"
        out.parent.mkdir()
        export_model(_int8_source(ToyModel(), tmp_path), out, engine="none")
    finally:
        recording[0] = False
    assert any("rsz-int8-" in p for p in made)
    stray = [p for p in made if not Path(p).is_relative_to(out.parent)]
    assert stray == []
    assert sorted(p.name for p in out.parent.iterdir()) == ["bundle"]
