"""A CLIP bundle embeds a tile as the checkpoint's own pipeline does: open_clip's `preprocess`
(image_transform, is_train=False: shortest-side resize with the model's interpolation, bicubic by default;
centre crop; ToTensor; Normalize) + `encode_image`, on a real aerial picture, through rsz's Python and native
CPU preprocessing.

The picture: data/osbs_029_256.png, the centre 256 x 256 of deepforest 2.1.0's deepforest/data/OSBS_029.png
(a NEON aerial RGB tile; deepforest is MIT-licensed), the size of UC Merced's and NWPU-RESISC45's tiles.

open_clip's transforms are torchvision's, and torchvision cannot be installed beside this project's CPU torch
(rsz_train.models.clip). So open_clip's own image_transform_v2 builds the pipeline from the model's
preprocess config, and the four torchvision classes it uses are stood in for by the code torchvision runs on a
PIL image (torchvision 0.28 transforms.functional / _functional_pil: Resize -> Image.resize to the size
_compute_resized_output_size gives, CenterCrop -> Image.crop at round((H - h) / 2), to_tensor -> uint8 / 255,
Normalize -> (x - mean) / std in float32). With the real torchvision 0.28 the stand-ins gave the same tensors
on these tiles, bit for bit.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsz_infer.bundle import load_manifest
from rsz_infer.native import PLUGIN_DIR, NativePreprocessor
from rsz_infer.preprocess import to_model_input
from rsz_infer.runners.ort import OrtRunner
from rsz_infer.scoring import l2_normalize

from .helpers import random_open_clip

PICTURE = Path(__file__).parent / "data" / "osbs_029_256.png"
# A ViT small enough to export in seconds, at CLIP's real input size (224: a 256 px tile shrinks, where
# bilinear and bicubic differ). No preprocess config of its own: open_clip's defaults (bicubic, shortest).
TINY_VIT_224 = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


class _Compose:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


class _Resize:  # transforms.Resize(size, interpolation) of a PIL image
    def __init__(self, size, interpolation, **_):
        self.size = size
        self.filter = {"BILINEAR": Image.BILINEAR, "BICUBIC": Image.BICUBIC}[interpolation.name]

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        if isinstance(self.size, int) or len(self.size) == 1:  # the shortest side
            requested = self.size if isinstance(self.size, int) else self.size[0]
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = requested, int(requested * long / short)
            new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        else:
            new_h, new_w = self.size
        return img if (new_w, new_h) == (w, h) else img.resize((new_w, new_h), self.filter)


class _CenterCrop:
    def __init__(self, size):
        self.h, self.w = (size, size) if isinstance(size, int) else size

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        assert self.w <= w and self.h <= h  # (torchvision pads a smaller image: not needed here)
        top, left = int(round((h - self.h) / 2.0)), int(round((w - self.w) / 2.0))
        return img.crop((left, top, left + self.w, top + self.h))


class _ToTensor:
    def __call__(self, img: Image.Image) -> torch.Tensor:
        chw = torch.from_numpy(np.array(img, np.uint8)).permute(2, 0, 1).contiguous()
        return chw.to(torch.float32).div(255)


class _Normalize:
    def __init__(self, mean, std):
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.sub(self.mean).div(self.std)


def _open_clip_preprocess(open_clip, net, monkeypatch, **change):
    """open_clip's eval `preprocess` for `net` (what create_model_and_transforms returns), with `change`
    applied to its preprocess config."""
    from open_clip import transform

    if getattr(transform.Resize, "__module__", "").startswith("rsz_train"):  # the stand-ins that raise
        for name, cls in (("Compose", _Compose), ("Resize", _Resize), ("CenterCrop", _CenterCrop),
                          ("MaybeToTensor", _ToTensor), ("Normalize", _Normalize)):  # fmt: skip
            monkeypatch.setattr(transform, name, cls)
    cfg = transform.PreprocessCfg(**{**open_clip.get_model_preprocess_cfg(net), **change})
    return transform.image_transform_v2(cfg, is_train=False)


@pytest.fixture(scope="module")
def clip_224(tmp_path_factory):
    """(open_clip model, its bundle exported by rsz-export clip's export_clip, FP32, no engines)."""
    from rsz_export.clip import export_clip

    folder = tmp_path_factory.mktemp("clip224")
    open_clip, net = random_open_clip(folder, "rsz-tiny-vit224", TINY_VIT_224, seed=5)
    torch.save(net.state_dict(), folder / "tiny_vit224.pt")
    bundle, _ = export_clip(folder / "tiny_vit224.pt", folder / "bundle", engine="none")
    return open_clip, net, bundle


@pytest.fixture(scope="module")
def cpu_lib(tmp_path_factory) -> Path:
    if shutil.which("g++") is None or shutil.which("make") is None:
        pytest.skip("g++/make not installed")
    build = tmp_path_factory.mktemp("native")
    subprocess.run(["make", "-s", "-C", str(PLUGIN_DIR), "cpu", f"BUILD={build}"], check=True)
    return build / "librsz_preprocess.so"


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float((l2_normalize(a.astype(np.float64)) * l2_normalize(b.astype(np.float64))).sum(1).min())


def _embed(bundle: Path, inputs: np.ndarray) -> np.ndarray:
    return OrtRunner(bundle / "image.onnx").infer({"image": inputs.astype(np.float32)})["embedding"]


def test_clip_bundle_embeds_a_square_tile_as_open_clip_does(clip_224, cpu_lib, monkeypatch):
    """The 256 px tile: open_clip resizes its shortest side to 224 with bicubic and crops nothing off; the
    bundle (preprocess.resize bicubic, as the checkpoint's config says) gives the same input and embedding,
    by Pillow and by the native library. Bilinear, what every CLIP bundle resized with before, does not."""
    open_clip, net, bundle = clip_224
    spec = load_manifest(bundle).preprocess
    assert spec.resize == "bicubic" and spec.size == 224
    picture = Image.open(PICTURE).convert("RGB")
    theirs = _open_clip_preprocess(open_clip, net, monkeypatch)(picture)[None]
    with torch.no_grad():
        reference = net.encode_image(theirs).numpy()
    rgb = np.asarray(picture)
    native = NativePreprocessor(spec, "cpu", cpu_lib)
    for ours in (to_model_input(rgb, spec)[None], native([rgb])):
        assert np.abs(ours - theirs.numpy()).max() < 1e-6  # float32 rounding: x * (1/255) against x / 255
        # measured 1 - 3e-14; bilinear's input gave 1 - 2.2e-5 (random weights are not sensitive to it)
        assert _cos(_embed(bundle, ours), reference) > 1 - 1e-6
    bilinear = to_model_input(rgb, dataclasses.replace(spec, resize="bilinear"))[None]
    assert np.abs(bilinear - theirs.numpy()).max() > 0.1  # several 8-bit levels on the picture's edges


def test_clip_bundle_resizes_a_non_square_tile_whole(clip_224, cpu_lib, monkeypatch):
    """A 256 x 176 tile: open_clip's default crops its centre 224 x 224 after resizing the short side (the
    tile's top and bottom never reach the model); rsz resizes the whole tile to 224 x 224, so a label sees
    all of it. That is open_clip's own resize_mode "squash", with the same bicubic filter."""
    open_clip, net, bundle = clip_224
    spec = load_manifest(bundle).preprocess
    rgb = np.asarray(Image.open(PICTURE).convert("RGB"))[40:216]
    assert rgb.shape == (176, 256, 3)
    squash = _open_clip_preprocess(open_clip, net, monkeypatch, resize_mode="squash")(Image.fromarray(rgb))
    crop = _open_clip_preprocess(open_clip, net, monkeypatch)(Image.fromarray(rgb))
    with torch.no_grad():
        reference = net.encode_image(squash[None]).numpy()
    for ours in (to_model_input(rgb, spec)[None], NativePreprocessor(spec, "cpu", cpu_lib)([rgb])):
        assert np.abs(ours - squash.numpy()).max() < 1e-6
        assert _cos(_embed(bundle, ours), reference) > 1 - 1e-6
        assert np.abs(ours - crop.numpy()).max() > 0.5  # not what the centre crop gives
