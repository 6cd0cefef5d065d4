"""CLIP checkpoints -> bundles (rsz-export clip): real open_clip and transformers models with random weights,
written to disk by the tests in every format users hold; export, token ids, embedding parity against
open_clip's encode_image/encode_text (transformers' CLIPModel), labeling and search end to end.

The architectures exported are tiny open_clip configs (registered from JSON here) so the suite stays fast;
shape inference is checked on the real ViT-B-32, ViT-B-16, ViT-L-14 and RN50 shapes (meta tensors).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from contextlib import chdir
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from rsz_export.cli import main as export_main
from rsz_infer.bundle import load_manifest
from rsz_infer.errors import RszError
from rsz_infer.preprocess import to_model_input
from rsz_infer.prompts import DEFAULT_TEMPLATES, read_templates
from rsz_infer.runners.ort import OrtRunner
from rsz_infer.scoring import l2_normalize, softmax
from rsz_infer.tokenizer import Tokenizer
from rsz_train.models.clip import ClipSource, infer_arch, load_clip, read_state_dict

from .helpers import TINY_VIT, register_arch

TINY_RN = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def open_clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("open_clip_configs")
    register_arch(folder, "rsz-tiny-vit", TINY_VIT)
    return register_arch(folder, "rsz-tiny-rn", TINY_RN)


def _random_clip(open_clip, arch: str, seed: int):
    torch.manual_seed(seed)
    net = open_clip.create_model(arch, pretrained=None).eval()
    with torch.no_grad():  # a non-default temperature, so the test sees it come from the checkpoint
        net.logit_scale.fill_(np.log(42.0))
    return net


@pytest.fixture(scope="module")
def checkpoints(open_clip, tmp_path_factory):
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("clip_checkpoints")
    net = _random_clip(open_clip, "rsz-tiny-vit", 0)
    state = net.state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, folder / "tiny_vit.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "tiny_vit.safetensors"))
    return {"net": net, "pt": folder / "tiny_vit.pt", "safetensors": folder / "tiny_vit.safetensors"}


@pytest.fixture(scope="module")
def vit_bundle(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("clip_bundles") / "tiny_vit"
    tiles = out.parent / "check_tiles"
    tiles.mkdir()
    for i, tile in enumerate(_tiles(4, 56, seed=9)):  # the Comparator checks the image graph on these too
        Image.fromarray(tile).save(tiles / f"{i}.png")
    args = [
        "clip",
        "--checkpoint",
        str(checkpoints["pt"]),
        "--fp16",
        "--out",
        str(out),
        "--tiles",
        str(tiles),
    ]
    result = CliRunner().invoke(export_main, args)
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture(scope="module")
def fp32_bundle(checkpoints, tmp_path_factory):
    """The safetensors file with --arch given, FP32 graphs only (no engines)."""
    from rsz_export.clip import export_clip

    out = tmp_path_factory.mktemp("clip_bundles") / "tiny_vit_fp32"
    bundle, model = export_clip(checkpoints["safetensors"], out, arch="rsz-tiny-vit", engine="none")
    return bundle, model


def _tiles(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (n, 1, 1, 3))
    return [
        np.clip(base[i] + rng.integers(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8) for i in range(n)
    ]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (l2_normalize(a.astype(np.float64)) * l2_normalize(b.astype(np.float64))).sum(1)


TEXTS = ["a satellite photo of a harbour.", "dense residential area", "Café, 12 runways & 3 piers!", ""]


def test_export_open_clip_checkpoint_matches_open_clip(open_clip, checkpoints, vit_bundle):
    out, output = vit_bundle
    assert "open_clip rsz-tiny-vit (inferred from the weights' shapes" in output
    manifest = load_manifest(out)
    assert manifest.model_kind == "clip" and manifest.class_embedding == "templates"
    assert manifest.logit_scale == pytest.approx(42.0, rel=1e-5)  # from the checkpoint
    assert manifest.prompt_templates == list(DEFAULT_TEMPLATES) and manifest.max_text_length == 77
    assert manifest.extra["source"]["arch_inferred"] is True
    assert manifest.extra["checks"]["image.fp16"]["tiles"] == 4
    assert {g.precision for g in manifest.graphs.values()} == {"fp16"}
    assert all(g.engines for g in manifest.graphs.values())  # TensorRT-RTX engines, built on the CPU

    net = checkpoints["net"]
    images = np.stack([to_model_input(t, manifest.preprocess) for t in _tiles(5, 48)])
    with torch.no_grad():
        ref_image = net.encode_image(torch.from_numpy(images)).numpy()
        ref_text = net.encode_text(open_clip.tokenize(TEXTS)).numpy()
    tokens = Tokenizer(out / "tokenizer.json", manifest.max_text_length).encode(TEXTS)
    for variant, least in (("fp32", 0.9999), ("fp16", 0.999)):
        image = OrtRunner(out / manifest.extra["variants"]["image"][variant]).infer({"image": images})
        text = OrtRunner(out / manifest.extra["variants"]["text"][variant]).infer(tokens)
        assert _cos(image["embedding"], ref_image).min() >= least, variant
        assert _cos(text["embedding"], ref_text).min() >= least, variant


def test_safetensors_with_arch_gives_the_same_graphs(checkpoints, vit_bundle, fp32_bundle):
    bundle, model = fp32_bundle
    assert model.source.inferred is False and model.source.arch == "rsz-tiny-vit"
    tokens = Tokenizer(bundle / "tokenizer.json", 77).encode(TEXTS)
    ours = OrtRunner(bundle / "text.onnx").infer(tokens)["embedding"]
    theirs = OrtRunner(vit_bundle[0] / "text.onnx").infer(tokens)["embedding"]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    # a wrong --arch: the line also says which architecture the weights are
    fits = r"; the weights are open_clip rsz-tiny-vit's \(leave out --arch, or pass --arch rsz-tiny-vit\)$"
    with pytest.raises(RszError, match=r"does not fit open_clip rsz-tiny-rn: it has .*" + fits) as err:
        load_clip(checkpoints["safetensors"], arch="rsz-tiny-rn")
    assert len(str(err.value)) < 600  # not torch's list of every missing key


def test_weights_past_protobufs_limit_go_to_one_external_data_file(
    checkpoints, fp32_bundle, tmp_path, monkeypatch
):
    """ViT-H-14's image tower (GeoRSCLIP's RS5M_ViT-H-14.pt) is 2.5 GB in FP32, past the 2 GiB protobuf
    writes in one piece: such a graph keeps its weights in <graph>.onnx.data, listed in the manifest. The
    limit is lowered here so a tiny model takes that path (a 2.3 GB graph was exported, checked, converted
    to FP16 and run through ONNX Runtime by hand; it was "invalid ONNX graph (Failed to serialize proto)")."""
    from rsz_export import onnx_export
    from rsz_export.clip import export_clip

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 100_000)
    bundle, _ = export_clip(
        checkpoints["safetensors"], tmp_path / "b", "rsz-tiny-vit", fp16=True, engine="none"
    )
    manifest = load_manifest(bundle, verify=True)  # every external-data file listed, with its sha256
    for name in ("image.onnx", "image.fp16.onnx", "text.onnx", "text.fp16.onnx"):
        data = bundle / f"{name}.data"
        assert data.name in manifest.files and (bundle / name).stat().st_size < data.stat().st_size
        mode = data.stat().st_mode & 0o777
        assert mode == (bundle / name).stat().st_mode & 0o777  # not onnx's 0600: others read a bundle too
    images = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    tokens = Tokenizer(bundle / "tokenizer.json", 77).encode(TEXTS)
    for role, feeds in (("image", {"image": images}), ("text", tokens)):
        ours = OrtRunner(bundle / f"{role}.onnx").infer(feeds)["embedding"]
        np.testing.assert_allclose(ours, OrtRunner(fp32_bundle[0] / f"{role}.onnx").infer(feeds)["embedding"])
        assert _cos(OrtRunner(bundle / f"{role}.fp16.onnx").infer(feeds)["embedding"], ours).min() >= 0.999


def test_resnet_tower_exports_and_matches(open_clip, tmp_path):
    from rsz_export.clip import export_clip

    net = _random_clip(open_clip, "rsz-tiny-rn", 1)
    torch.save(net.state_dict(), tmp_path / "rn.bin")
    bundle, model = export_clip(tmp_path / "rn.bin", tmp_path / "rn", engine="none")
    assert model.source.arch == "rsz-tiny-rn"
    manifest = load_manifest(bundle)
    images = np.stack([to_model_input(t, manifest.preprocess) for t in _tiles(3, 70)])
    with torch.no_grad():
        ref = net.encode_image(torch.from_numpy(images)).numpy()
    got = OrtRunner(bundle / "image.onnx").infer({"image": images})["embedding"]
    assert _cos(got, ref).min() >= 0.9999


@pytest.mark.parametrize("arch", ["ViT-B-32", "ViT-B-16", "ViT-L-14", "RN50"])
def test_arch_inferred_from_real_shapes(open_clip, arch):
    with torch.device("meta"):
        state = open_clip.create_model(arch, pretrained=None, device="meta").state_dict()
    name, same = infer_arch(state)
    assert name == arch
    if arch != "RN50":
        assert f"{arch}-quickgelu" in same  # the activation is not in the weights: said, not guessed


def test_georsclip_b32_is_told_to_take_quickgelu(open_clip):
    """GeoRSCLIP's authors build RS5M_ViT-B-32 as OpenAI's QuickGELU model (om-ai-lab/RS5M
    inference/inference.py, build_model: create_model_and_transforms("ViT-B/32", pretrained="openai")); the
    shapes read as plain ViT-B-32, so the export line names the --arch to pass. RemoteCLIP's file is not."""
    from rsz_export.clip import arch_note

    with torch.device("meta"):
        state = open_clip.create_model("ViT-B-32", pretrained=None, device="meta").state_dict()
    name, same = infer_arch(state)

    def note(path: str) -> str:
        return arch_note(ClipSource(path, "open_clip", name, inferred=True, same_shapes=tuple(same)))

    assert "pass --arch ViT-B-32-quickgelu" in note("/ckpt/RS5M_ViT-B-32.pt")
    assert "GeoRSCLIP" not in note("/ckpt/RemoteCLIP-ViT-B-32.pt")
    told = ClipSource("/ckpt/RS5M_ViT-B-32.pt", "open_clip", "ViT-B-32-quickgelu")  # --arch given
    assert "GeoRSCLIP" not in arch_note(told)


def test_skyclip_folders_and_renamed_files_are_told_the_quickgelu_arch(open_clip):
    """SkyCLIP ships open_clip training checkpoints as epoch_20.pt inside a folder named after the model
    (SkyScript's README); its ViT-L14 ones start from OpenAI's ViT-L-14 and its authors evaluate them with
    --force-quick-gelu (test_scene_and_fine_grained_classification.ipynb), so the folder name is read too.
    A renamed file tells nothing but its shapes: the line says the activation is not in the weights and
    names the --arch to pass."""
    from rsz_export.clip import arch_note

    def note(path: str, arch: str) -> str:
        with torch.device("meta"):
            state = open_clip.create_model(arch, pretrained=None, device="meta").state_dict()
        name, same = infer_arch(state)
        return arch_note(ClipSource(path, "open_clip", name, inferred=True, same_shapes=tuple(same)))

    for folder in ("SkyCLIP_ViT_L14_top30pct", "SkyCLIP_ViT_L14_top50pct", "CLIP_ViT_L14_LAION_RS"):
        line = note(f"/ckpt/{folder}/epoch_20.pt", "ViT-L-14")
        assert f"{folder} is named as SkyScript's" in line and line.endswith("pass --arch ViT-L-14-quickgelu")
    in_run = note("/logs/SkyCLIP_ViT_L14_top30pct/checkpoints/epoch_20.pt", "ViT-L-14")  # open_clip's layout
    assert in_run.endswith("run by its authors with QuickGELU: pass --arch ViT-L-14-quickgelu")
    assert "SkyScript" not in note("/ckpt/SkyCLIP_ViT_B32_top50pct/epoch_20.pt", "ViT-B-32")  # from LAION
    renamed = note("/ckpt/georsclip.pt", "ViT-B-32")  # RS5M_ViT-B-32.pt under another name
    assert "the activation is not in the weights" in renamed and "--arch ViT-B-32-quickgelu" in renamed
    assert "QuickGELU" in renamed and "GeoRSCLIP" not in renamed


def test_open_clip_training_checkpoint_loads_exactly_its_weights(checkpoints, tmp_path):
    """SkyCLIP's files are open_clip training checkpoints: epoch, name, a DDP-prefixed state_dict, AdamW's
    state and the AMP scaler's, all plain data that torch.load(weights_only=True) reads; every tensor of
    the model comes from the file (module. dropped), none left at its random initialisation."""
    state = checkpoints["net"].state_dict()
    params = [v.detach().clone().requires_grad_() for v in state.values() if v.is_floating_point()]
    optimizer = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
              "_growth_tracker": 7}  # fmt: skip
    path = tmp_path / "SkyCLIP_ViT_B32_top50pct" / "epoch_20.pt"
    path.parent.mkdir()
    ddp = {f"module.{k}": v for k, v in state.items()}
    torch.save({"epoch": 20, "name": path.parent.name, "state_dict": ddp, "optimizer": optimizer.state_dict(),
                "scaler": scaler}, path)  # fmt: skip
    loaded = load_clip(path).net.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def test_default_bundle_of_an_epoch_checkpoint_is_named_after_its_run_folder(checkpoints, tmp_path):
    """open_clip training checkpoints (SkyCLIP's among them) are all epoch_20.pt: the default bundle takes
    the model's folder name, so a second model does not land on the first one's models/epoch_20."""
    from rsz_export.clip import default_out

    sub = tmp_path / "SkyCLIP_ViT_B32_top50pct"
    sub.mkdir()
    (sub / "epoch_20.pt").write_bytes(checkpoints["pt"].read_bytes())
    assert default_out(Path("x/RemoteCLIP-ViT-B-32.pt")) == Path("models/RemoteCLIP-ViT-B-32")
    assert default_out(Path("logs/run/checkpoints/epoch_latest.pt")) == Path("models/run")
    assert default_out(Path("SkyCLIP_ViT_L14/epoch_20.pt")) == Path("models/SkyCLIP_ViT_L14")
    with chdir(tmp_path):
        assert default_out(Path("epoch_3.pt")) == Path("models") / tmp_path.name  # the folder it is in
        args = ["clip", "--checkpoint", "SkyCLIP_ViT_B32_top50pct/epoch_20.pt", "--engine", "none"]
        result = CliRunner().invoke(export_main, args)
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["SkyCLIP_ViT_B32_top50pct"]


def test_a_different_clip_bundle_at_out_is_refused_saying_what_differs(checkpoints, fp32_bundle, tmp_path):
    """An FP16 export onto an FP32 CLIP bundle is refused before any graph is built, saying why (the late
    fingerprint check would refuse it too, after the minutes of building, without the reason)."""
    out = tmp_path / "tiny_vit_fp32"
    shutil.copytree(fp32_bundle[0], out)
    args = ["clip", "--checkpoint", str(checkpoints["safetensors"]), "--arch", "rsz-tiny-vit", "--fp16"]
    result = CliRunner().invoke(export_main, [*args, "--engine", "none", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        f"error: {out}: a different bundle is already there (its default precision is fp32, this export's is "
        "fp16); pass --force to replace it"
    )


def test_bad_checkpoints_are_one_line_errors(open_clip, checkpoints, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(RszError, match="junk.pt: not a PyTorch checkpoint: neither a torch.save zip archive"):
        read_state_dict(junk)
    pickled = tmp_path / "object.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "config": Path("/")}, pickled)  # needs unpickling
    with pytest.raises(RszError, match="object.pt: not a PyTorch checkpoint of plain tensors"):
        read_state_dict(pickled)
    state = read_state_dict(checkpoints["safetensors"])
    del state["visual.proj"]
    with pytest.raises(RszError, match="no open_clip architecture has these weights' shapes"):
        infer_arch(state)
    result = CliRunner().invoke(export_main, ["clip", "--checkpoint", str(tmp_path / "missing.pt")])
    assert result.exit_code == 2 and "missing.pt: no such checkpoint" in result.output
    assert "Traceback" not in result.output


def _varied_strings(n: int) -> list[str]:
    rng = np.random.default_rng(7)
    words = [
        "harbour", "Runway", "dense", "résidentiel", "Ñandú", "straße", "forêt", "café", "naïve", "São",
        "Paulo", "river", "crossing", "farmland", "ISS", "NDVI", "it's", "they're", "we'll", "o'clock",
        "x-ray", "e-mail", "10km", "3.14", "1,000", "#tag", "@home", "(parks)", "[a]", "{b}", "50%",
        "über", "Ægir", "ørsted", "ﬁeld", "“quoted”", "‘single’", "a&amp;b", "日本", "город", "🚀",
        "UPPER", "MiXeD", "tab\there", "new\nline", "--", "...", "?!", "$5", "C#", "0", "42",
    ]  # fmt: skip
    texts = []
    for i in range(n):
        length = int(rng.integers(1, 12)) if i % 10 else int(rng.integers(80, 140))  # some past 77 tokens
        texts.append(" ".join(rng.choice(words, size=length)))
    return texts + ["", "   ", "a" * 400, "<end_of_text> inside", "12345678901234567890"]


def test_tokenizer_json_gives_open_clip_token_ids(open_clip, vit_bundle):
    texts = _varied_strings(300)
    ref = open_clip.tokenize(texts).numpy()  # [N, 77], padded with 0
    got = Tokenizer(vit_bundle[0] / "tokenizer.json", 77).encode(texts)
    ids, mask = got["input_ids"], got["attention_mask"]
    padded = np.zeros_like(ref)
    padded[:, : ids.shape[1]] = ids * mask
    mismatched = [t for t, a, b in zip(texts, padded, ref) if not np.array_equal(a, b)]
    assert not mismatched, mismatched[:3]
    assert (ref[:, -1] == 49407).sum() >= 30  # long texts were cut, keeping the end token


def test_hf_clip_folder_exports_and_matches_transformers(open_clip, tmp_path):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from rsz_export.clip import export_clip

    simple = open_clip.tokenizer.SimpleTokenizer()
    folder = tmp_path / "hf_clip"
    config = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "eos_token_id": 49407,
                     "bos_token_id": 49406, "pad_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=24,
    )  # fmt: skip
    torch.manual_seed(3)
    net = CLIPModel(config).eval()
    net.save_pretrained(folder)
    # The tokenizer files a CLIP folder ships, written from open_clip's vocabulary in CLIPTokenizer's names.
    vocab = {k.replace("<start_of_text>", "<|startoftext|>").replace("<end_of_text>", "<|endoftext|>"): v
             for k, v in simple.encoder.items()}  # fmt: skip
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    merges = sorted(simple.bpe_ranks, key=simple.bpe_ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges), "utf-8")

    bundle, model = export_clip(folder, tmp_path / "hf_bundle", fp16=True, engine="none")
    manifest = load_manifest(bundle)
    scale = float(net.logit_scale.detach().exp())
    assert model.is_hf and manifest.logit_scale == pytest.approx(scale, rel=1e-6)

    hf_tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    texts = TEXTS[:3] + ["Aerial view of São Paulo's 2 airports."]
    ours = Tokenizer(bundle / "tokenizer.json", 77).encode(texts)
    theirs = hf_tok(texts, padding=True, return_tensors="np")
    np.testing.assert_array_equal(ours["input_ids"], theirs["input_ids"])
    images = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref_t = net.get_text_features(
            input_ids=torch.from_numpy(theirs["input_ids"]).long(),
            attention_mask=torch.from_numpy(theirs["attention_mask"]).long(),
        )
        ref_i = net.get_image_features(pixel_values=torch.from_numpy(images))  # fmt: skip
    ref_t = ref_t if isinstance(ref_t, torch.Tensor) else ref_t.pooler_output
    ref_i = ref_i if isinstance(ref_i, torch.Tensor) else ref_i.pooler_output
    for variant, least in (("fp32", 0.9999), ("fp16", 0.999)):
        text = OrtRunner(bundle / manifest.extra["variants"]["text"][variant]).infer(ours)["embedding"]
        image = OrtRunner(bundle / manifest.extra["variants"]["image"][variant]).infer({"image": images})
        assert _cos(text, ref_t.numpy()).min() >= least
        assert _cos(image["embedding"], ref_i.numpy()).min() >= least


def test_hf_folder_with_only_tokenizer_json_exports(open_clip, tmp_path):
    """transformers 5 saves a CLIP tokenizer as tokenizer.json alone (no vocab.json / merges.txt)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from rsz_export.clip import export_clip

    simple = open_clip.tokenizer.SimpleTokenizer()
    files = tmp_path / "tokenizer_files"
    files.mkdir()
    vocab = {k.replace("<start_of_text>", "<|startoftext|>").replace("<end_of_text>", "<|endoftext|>"): v
             for k, v in simple.encoder.items()}  # fmt: skip
    (files / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    merges = sorted(simple.bpe_ranks, key=simple.bpe_ranks.get)
    (files / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges), "utf-8")
    hf_tok = CLIPTokenizer(str(files / "vocab.json"), str(files / "merges.txt"))

    folder = tmp_path / "hf_clip"
    config = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
        projection_dim=16,
    )  # fmt: skip
    CLIPModel(config).save_pretrained(folder)
    hf_tok.save_pretrained(folder)
    for name in ("vocab.json", "merges.txt"):  # what transformers 4 also wrote
        (folder / name).unlink(missing_ok=True)
    assert (folder / "tokenizer.json").is_file()

    bundle, _ = export_clip(folder, tmp_path / "bundle", engine="none")
    texts = TEXTS[:3] + ["Aerial view of São Paulo's 2 airports."]
    ours = Tokenizer(bundle / "tokenizer.json", 77).encode(texts)
    theirs = hf_tok(texts, padding=True, return_tensors="np")
    np.testing.assert_array_equal(ours["input_ids"], theirs["input_ids"])
    np.testing.assert_array_equal(ours["attention_mask"], theirs["attention_mask"])
    in_torch = load_clip(folder).tokenize(texts)  # rsz-train's dual encoder tokenizes in PyTorch
    np.testing.assert_array_equal(in_torch["input_ids"].numpy(), theirs["input_ids"])


def _expected_scores(open_clip, net, spec, tiles, classes: dict[str, str], templates) -> np.ndarray:
    """Softmax over classes as CLIP's prompt ensemble defines it, computed with open_clip eagerly."""
    class_emb = []
    for name, description in classes.items():
        phrases = [name.replace("_", " ")] + ([description] if description else [])
        prompts = [t.replace("{}", p) for p in phrases for t in templates]
        with torch.no_grad():
            emb = l2_normalize(net.encode_text(open_clip.tokenize(prompts)).numpy())
        class_emb.append(emb.mean(0))
    images = np.stack([to_model_input(t, spec) for t in tiles])
    with torch.no_grad():
        image_emb = l2_normalize(net.encode_image(torch.from_numpy(images)).numpy())
    return image_emb @ l2_normalize(np.stack(class_emb)).T


BLOCK_TORCH = "import sys; sys.modules['torch'] = None\nimport rsz_infer.cli\n"


def _rsz_infer(*args) -> subprocess.CompletedProcess:
    """rsz-infer in a process where torch cannot be imported."""
    code = BLOCK_TORCH + "rsz_infer.cli.main(sys.argv[1:])"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=120
    )


def test_labeling_and_search_on_a_clip_bundle(open_clip, checkpoints, fp32_bundle, tmp_path):
    bundle = fp32_bundle[0]
    manifest = load_manifest(bundle)
    tiles = _tiles(6, 40, seed=5)
    for i, tile in enumerate(tiles):
        Image.fromarray(tile).save(tmp_path / f"tile{i}.png")
    classes = {"dense_forest": "tall trees in rows", "river": "", "parking_lot": ""}
    class_file = tmp_path / "classes.txt"
    class_file.write_text("\n".join(f"{n}: {d}" if d else n for n, d in classes.items()), encoding="utf-8")
    out = tmp_path / "labels.jsonl"
    proc = _rsz_infer(tmp_path, "--classes", class_file, "--model", bundle, "--out", out, "--quiet",
                      "--backend", "ort", "--top-k", "3")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {Path(r["path"]).name: r for r in map(json.loads, out.read_text().splitlines())}

    sims = _expected_scores(
        open_clip, checkpoints["net"], manifest.preprocess, tiles, classes, DEFAULT_TEMPLATES
    )
    probs = softmax(manifest.logit_scale * sims)
    names = list(classes)
    for i in range(len(tiles)):
        row = rows[f"tile{i}.png"]
        # per class, not by rank: random weights can put two classes within rounding of each other
        order = [names.index(label) for label in row["labels"]]
        assert sorted(order) == [0, 1, 2] and row["scores"] == sorted(row["scores"], reverse=True)
        np.testing.assert_allclose(row["scores"], probs[i][order], atol=1e-5)
        np.testing.assert_allclose(row["similarities"], sims[i][order], atol=1e-5)  # raw cosines

    index = tmp_path / "index"
    proc = _rsz_infer("index", *(tmp_path / f"tile{i}.png" for i in range(6)), "--model", bundle,
                      "--out", index, "--quiet", "--backend", "ort")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = _rsz_infer("search", index, "--text", "a satellite photo of a river.", "-k", "6", "--json",
                      "--backend", "ort")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    hits = [json.loads(line) for line in proc.stdout.splitlines()]
    with torch.no_grad():
        query = l2_normalize(
            checkpoints["net"].encode_text(open_clip.tokenize(["a satellite photo of a river."])).numpy()
        )
        images = np.stack([to_model_input(t, manifest.preprocess) for t in tiles])
        image_emb = l2_normalize(checkpoints["net"].encode_image(torch.from_numpy(images)).numpy())
    expected = image_emb @ query[0]
    found = [int(Path(h["path"]).stem.removeprefix("tile")) for h in hits]
    assert sorted(found) == list(range(6)) and [h["rank"] for h in hits] == list(range(1, 7))
    np.testing.assert_allclose([h["score"] for h in hits], expected[found], atol=1e-5)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    proc = _rsz_infer("search", index, "--image", tmp_path / "tile3.png", "-k", "2", "--json",
                      "--backend", "ort")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    first = json.loads(proc.stdout.splitlines()[0])
    assert Path(first["path"]).name == "tile3.png" and first["score"] == pytest.approx(1.0, abs=1e-3)


def test_templates_file(checkpoints, tmp_path):
    from rsz_export.clip import export_clip

    good = tmp_path / "templates.txt"
    good.write_text("# mine\na photo of {}.\n\nan image showing {} from above\n", encoding="utf-8")
    assert read_templates(good) == ["a photo of {}.", "an image showing {} from above"]
    bundle, _ = export_clip(checkpoints["safetensors"], tmp_path / "b", templates=good, engine="none")
    assert load_manifest(bundle).prompt_templates == read_templates(good)
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of {}.\nno placeholder here\n", encoding="utf-8")
    with pytest.raises(RszError, match=r"bad.txt:2: a template needs exactly one \{\}"):
        read_templates(bad)


def test_open_clip_imports_beside_a_broken_torchvision(tmp_path):
    """PyPI's CUDA torchvision beside the CPU torch raises at import; open_clip must still import."""
    broken = tmp_path / "torchvision"
    broken.mkdir()
    (broken / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from rsz_train.models.clip import import_open_clip\n"
        "ids = import_open_clip().tokenize(['a satellite photo of a harbour.'])\n"
        "assert ids.shape == (1, 77) and 'torchvision' not in sys.modules, sorted(sys.modules)[:5]\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
