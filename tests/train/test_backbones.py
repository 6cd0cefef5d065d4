"""Backbones: shapes, the geoembed conversion against geoembed's own forward, CLIP loaders, ONNX export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from rsz_infer.errors import RszError
from rsz_train.models.backbones import (
    GEOEMBED_IMAGE_SIZE,
    GEOEMBED_MEAN,
    GEOEMBED_STD,
    GeoEmbedHead,
    ResNetStages,
    ViT,
    create_resnet,
    create_vit,
    load_clip_vision,
    pooled_features,
    vit_from_clip_checkpoint,
)
from rsz_train.models.resnet import geoembed_state_dict, geoembed_weights_path

torch.manual_seed(0)


# ---------------------------------------------------------------------------------------------- shapes


def test_vit_tiny_tokens_shape_and_size_change() -> None:
    vit = create_vit("vit_tiny").eval()
    assert (vit.width, vit.grid, vit.patch_size) == (192, (8, 8), 8)
    with torch.no_grad():
        tokens = vit(torch.randn(2, 3, 64, 64))
    assert tokens.shape == (2, 65, 192)
    # After the final LayerNorm (no affine change at init): every token has ~zero mean, unit variance.
    assert torch.allclose(tokens.mean(-1), torch.zeros(2, 65), atol=1e-4)
    bigger = create_vit("vit_tiny", image_size=96)
    assert bigger.grid == (12, 12) and bigger.pos_embed.shape == (145, 192)
    with torch.no_grad():
        assert bigger(torch.randn(1, 3, 96, 96)).shape == (1, 145, 192)
    with pytest.raises(RszError, match="vit_huge"):
        create_vit("vit_huge")


def test_vit_b16_parameter_count() -> None:
    vit = create_vit("vit_b16")
    count = sum(p.numel() for p in vit.parameters())
    assert 85e6 < count < 87e6, count
    assert vit.grid == (14, 14)


@pytest.mark.parametrize(
    "name, channels", [("resnet_tiny", [16, 32, 64, 128]), ("resnet18", [64, 128, 256, 512])]
)
def test_resnet_stage_shapes(name: str, channels: list[int]) -> None:
    net = create_resnet(name).eval()
    assert net.stage_channels == channels
    with torch.no_grad():
        stages = net(torch.randn(2, 3, 64, 64))
    assert [tuple(s.shape) for s in stages] == [
        (2, c, 16 // 2**i, 16 // 2**i) for i, c in enumerate(channels)
    ]
    pooled = pooled_features(stages)
    assert [tuple(p.shape) for p in pooled] == [(2, c) for c in channels]
    assert torch.allclose(pooled[-1], stages[-1].mean(dim=(2, 3)))


def test_resnet_loads_torchvision_style_state_dict(tmp_path: Path) -> None:
    source = create_resnet("resnet_tiny")
    state = {**source.state_dict(), "fc.weight": torch.zeros(10, 128), "fc.bias": torch.zeros(10)}
    torch.save(state, tmp_path / "tiny.pth")
    loaded = create_resnet("resnet_tiny", pretrained=str(tmp_path / "tiny.pth")).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[-1], source.eval()(x)[-1])
    with pytest.raises(RszError, match="tiny.pth: not a matching torchvision ResNet"):
        create_resnet("resnet18", pretrained=str(tmp_path / "tiny.pth"))


def test_resnet50_parameter_count() -> None:
    net = create_resnet("resnet50")
    assert net.stage_channels == [256, 512, 1024, 2048]
    assert 23.4e6 < sum(p.numel() for p in net.parameters()) < 23.6e6


# -------------------------------------------------------------------------------------------- geoembed


def _aerial_like_tile(path: Path, size: int) -> Path:
    """A nadir-view tile drawn like an orthophoto (fields, a road, roofs, trees), saved as a real PNG.

    No real orthophoto ships with any installed package, so the test draws one.
    """
    rng = np.random.default_rng(7)
    img = Image.new("RGB", (size, size), (96, 120, 60))
    draw = ImageDraw.Draw(img)
    for i in range(4):  # crop strips
        x0 = i * size // 4
        draw.rectangle([x0, 0, x0 + size // 4 - 2, size // 2], fill=(150 + 20 * i, 140, 70 + 10 * i))
    draw.line([(0, size * 0.6), (size, size * 0.55)], fill=(110, 110, 115), width=max(3, size // 16))
    for _ in range(6):  # roofs
        x, y = rng.integers(0, size - 20, 2)
        draw.rectangle([x, y + size // 2, x + 14, y + size // 2 + 10], fill=(170, 70, 50))
    for _ in range(25):  # tree crowns
        x, y = rng.integers(0, size, 2)
        draw.ellipse([x, y, x + 7, y + 7], fill=(40, 80, 35))
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, 6, (size, size, 3))
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="session")
def geoembed_model():
    return create_resnet("resnet18", pretrained="geoembed").eval()


def test_geoembed_npz_every_tensor_used_once() -> None:
    with np.load(geoembed_weights_path()) as data:
        npz = {k: data[k] for k in data.files}
    state, used = geoembed_state_dict(npz)
    assert set(used) == set(npz) and all(n == 1 for n in used.values())
    weights = sum(v.size for k, v in npz.items() if k not in ("embed_dim", "base_channels", "pool_size"))
    assert sum(t.numel() for t in state.values()) == weights


def test_geoembed_matches_reference_forward(geoembed_model, tmp_path: Path) -> None:
    from geoembed import Model

    assert (GEOEMBED_MEAN, GEOEMBED_STD) == ((0.5,) * 3, (0.5,) * 3)
    tile = Image.open(_aerial_like_tile(tmp_path / "tile.png", GEOEMBED_IMAGE_SIZE)).convert("RGB")
    reference = Model.v3(device="cpu").encode(tile)  # geoembed's own (numpy) forward of its V3 encoder

    pixels = np.asarray(tile, dtype=np.float32) / 255.0
    x = torch.from_numpy(((pixels - 0.5) / 0.5).transpose(2, 0, 1)).unsqueeze(0)
    untrained = ResNetStages("basic", (2, 2, 2, 2), 64, stem="cifar")
    untrained.head = GeoEmbedHead(512, pool_size=4, embed_dim=256)
    with torch.no_grad():
        ours = geoembed_model.embed(x)[0].numpy()
        random_init = untrained.eval().embed(x)[0].numpy()
        small_stages = geoembed_model(x[..., :32, :32])
    assert ours.shape == (256,)
    np.testing.assert_allclose(ours, reference, atol=1e-4)
    assert float(random_init @ reference) < 0.9  # the same network with random weights is elsewhere
    # CIFAR stem: stride 1, so the stage maps are 1, 1/2, 1/4, 1/8 of the input.
    assert [tuple(s.shape[1:]) for s in small_stages] == [
        (64, 32, 32),
        (128, 16, 16),
        (256, 8, 8),
        (512, 4, 4),
    ]


def test_geoembed_rejects_resnet50() -> None:
    with pytest.raises(RszError, match="resnet50"):
        create_resnet("resnet50", pretrained="geoembed")


# ------------------------------------------------------------------------------------------------ CLIP

TINY = dict(
    hidden_size=128,  # 64-wide heads, as every CLIP ViT (open_clip files do not record the head count)
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
    projection_dim=16,
    hidden_act="quick_gelu",
)


@pytest.fixture(scope="session")
def hf_clip(tmp_path_factory):
    """A tiny random CLIPVisionModelWithProjection saved the Hugging Face way, and the model itself."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(1)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY)).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a swapped tensor cannot go unnoticed
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    folder = tmp_path_factory.mktemp("hf_clip")
    model.save_pretrained(folder)
    return folder, model


def _hf_reference(model, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = model.vision_model(pixel_values=pixels)
        tokens = model.vision_model.post_layernorm(out.last_hidden_state)
        return tokens, model.visual_projection(out.pooler_output)


def _open_clip_state(model) -> dict[str, torch.Tensor]:
    """The same weights under open_clip's names (what open_clip's VisionTransformer.state_dict() holds)."""
    sd = model.state_dict()
    v, out = "vision_model.", {}
    out["visual.conv1.weight"] = sd[v + "embeddings.patch_embedding.weight"]
    out["visual.class_embedding"] = sd[v + "embeddings.class_embedding"]
    out["visual.positional_embedding"] = sd[v + "embeddings.position_embedding.weight"]
    for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        for kind in ("weight", "bias"):
            out[f"visual.{ours}.{kind}"] = sd[f"{v}{theirs}.{kind}"]
    out["visual.proj"] = sd["visual_projection.weight"].t().contiguous()
    for i in range(TINY["num_hidden_layers"]):
        src, dst = f"{v}encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [sd[f"{src}self_attn.{n}_proj.{kind}"] for n in "qkv"]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv)
            for theirs, ours in (
                ("self_attn.out_proj", "attn.out_proj"),
                ("layer_norm1", "ln_1"),
                ("layer_norm2", "ln_2"),
                ("mlp.fc1", "mlp.c_fc"),
                ("mlp.fc2", "mlp.c_proj"),
            ):
                out[f"{dst}{ours}.{kind}"] = sd[f"{src}{theirs}.{kind}"]
    out["text_projection"] = torch.randn(16, 16)  # text tower keys are ignored
    return {k: v.clone() for k, v in out.items()}


def _check_matches(vit: ViT, model, pixels: torch.Tensor) -> None:
    ref_tokens, ref_embed = _hf_reference(model, pixels)
    with torch.no_grad():
        tokens = vit.eval()(pixels)
        embed = vit.project(tokens[:, 0])
    torch.testing.assert_close(tokens, ref_tokens, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(embed, ref_embed, atol=1e-5, rtol=1e-4)


def test_clip_hf_folder(hf_clip) -> None:
    folder, model = hf_clip
    pixels = torch.randn(2, 3, 32, 32)
    vit = vit_from_clip_checkpoint(folder)
    shape = (vit.width, vit.depth, vit.heads, vit.patch_size, vit.grid, vit.act)
    assert shape == (128, 2, 2, 8, (4, 4), "quick_gelu")
    _check_matches(vit, model, pixels)
    # and into a ViT the caller built
    built = ViT(32, 8, 128, 2, 2, 2.0, pre_norm=True, act="quick_gelu", patch_bias=False, norm_eps=1e-5)
    _check_matches(load_clip_vision(built, folder), model, pixels)


def test_clip_hf_full_clipmodel_folder(tmp_path: Path) -> None:
    from transformers import CLIPConfig, CLIPModel

    vision = {k: v for k, v in TINY.items() if k != "projection_dim"}
    text = dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50
    )
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    model.save_pretrained(tmp_path)
    vit = vit_from_clip_checkpoint(tmp_path)
    _check_matches(vit, model, torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("fmt", ["pt", "pt_training", "safetensors"])
def test_clip_open_clip_files(hf_clip, tmp_path: Path, fmt: str) -> None:
    from safetensors.torch import save_file

    _, model = hf_clip
    state = _open_clip_state(model)
    if fmt == "safetensors":
        path = tmp_path / "open_clip.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "open_clip.pt"
        obj = (
            state if fmt == "pt" else {"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}}
        )
        torch.save(obj, path)
    pixels = torch.randn(2, 3, 32, 32)
    _check_matches(vit_from_clip_checkpoint(path), model, pixels)
    # into a caller-built ViT (default LayerNorm eps: the loader sets CLIP's)
    built = ViT(32, 8, 128, 2, 2, 2.0, pre_norm=True, act="quick_gelu", patch_bias=False)
    _check_matches(load_clip_vision(built, path), model, pixels)


def test_clip_open_clip_extra_visual_key_is_refused(hf_clip, tmp_path: Path) -> None:
    state = _open_clip_state(hf_clip[1])
    state["visual.transformer.resblocks.0.ls_1.gamma"] = torch.ones(128)  # a key the mapping does not consume
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(RszError, match="unexpected CLIP vision tensors.*ls_1"):
        vit_from_clip_checkpoint(tmp_path / "extra.pt")


def test_clip_other_image_size_resamples_positions(hf_clip) -> None:
    folder, _ = hf_clip
    vit = vit_from_clip_checkpoint(folder, image_size=48)
    assert vit.grid == (6, 6) and vit.pos_embed.shape == (37, 128)
    with torch.no_grad():
        assert vit(torch.randn(1, 3, 48, 48)).shape == (1, 37, 128)


def test_clip_bad_checkpoints(hf_clip, tmp_path: Path) -> None:
    folder, _ = hf_clip
    garbage_pt = tmp_path / "garbage.pt"
    garbage_pt.write_bytes(b"\x00not a checkpoint" * 10)
    garbage_st = tmp_path / "garbage.safetensors"
    garbage_st.write_bytes(b"{broken")
    truncated = tmp_path / "hf_truncated"
    truncated.mkdir()
    (truncated / "config.json").write_text((folder / "config.json").read_text())
    (truncated / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:500])
    no_weights = tmp_path / "hf_empty"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"hidden_size": 32}))
    not_clip = tmp_path / "resnet.pt"
    torch.save(create_resnet("resnet_tiny").state_dict(), not_clip)
    for path, why in [
        (garbage_pt, "not a readable checkpoint"),
        (garbage_st, "not a readable checkpoint"),
        (truncated, "not a readable checkpoint"),
        (no_weights, "needs config.json and model.safetensors"),
        (not_clip, "no visual"),
        (tmp_path / "missing.pt", "no such"),
    ]:
        with pytest.raises(RszError, match=why) as info:
            vit_from_clip_checkpoint(path)
        message = str(info.value)
        assert "\n" not in message and path.name in message
    wrong_width = ViT(32, 8, 64, 2, 2, pre_norm=True, act="quick_gelu", patch_bias=False)
    with pytest.raises(RszError, match="width is 128 but the ViT has 64"):
        load_clip_vision(wrong_width, folder)
    plain = ViT(32, 8, 128, 2, 2, 2.0)
    with pytest.raises(RszError, match="pre_norm=True"):
        load_clip_vision(plain, folder)


# ------------------------------------------------------------------------------------------------ ONNX


def test_vit_tiny_onnx_export_matches_onnxruntime(tmp_path: Path) -> None:
    import onnxruntime as ort

    vit = create_vit("vit_tiny").eval()
    path = tmp_path / "vit_tiny.onnx"
    torch.onnx.export(
        vit,
        (torch.randn(2, 3, 64, 64),),
        str(path),
        input_names=["image"],
        output_names=["tokens"],
        dynamic_axes={"image": {0: "batch"}, "tokens": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image = torch.randn(3, 3, 64, 64)  # another batch size than exported with
    (got,) = session.run(None, {"image": image.numpy()})
    with torch.no_grad():
        want = vit(image).numpy()
    assert got.shape == (3, 65, 192)
    np.testing.assert_allclose(got, want, atol=1e-4)
