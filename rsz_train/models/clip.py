"""CLIP checkpoints users already have (RemoteCLIP, GeoRSCLIP, SkyCLIP, OpenAI/LAION CLIP) as an rsz model.

Nothing is trained: `load_clip(path, arch)` reads an open_clip state dict (`.pt`/`.bin` through
torch.load(weights_only=True), or `.safetensors`) into open_clip's own model, or a Hugging Face
`CLIPModel` folder into transformers' model, and `ClipModel` hands their `image` and `text` towers to
export. open_clip's `encode_image` / `encode_text` (or transformers' `get_image_features` /
`get_text_features`) are both the exported modules and the reference the Comparator checks against.

Everything of the `clip` kind lives in this module (its rsz_train.models.registry entry: `trained=False`).
"""

from __future__ import annotations

import enum
import json
import math
import os
import pickle
import re
import sys
import traceback
import types
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsz_infer.errors import RszError, first_line
from rsz_infer.preprocess import PreprocessSpec
from rsz_train.models.base import ExportGraph, RszModel

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")

# ---------------------------------------------------------------- importing open_clip

# open_clip imports torchvision at module level for its training transforms and FrozenBatchNorm2d, neither
# of which a CLIP forward pass uses. PyPI's torchvision is a CUDA build that cannot load beside the CPU
# torch of this project (its import fails with "operator torchvision::nms does not exist", and once
# installed it also breaks transformers' CLIP imports), so the dev setup installs open_clip without it.
# Then these names stand in for torchvision during open_clip's import only; calling one raises.
_TORCHVISION_NAMES = {
    "torchvision": [],
    "torchvision.transforms": [
        "Normalize",
        "Compose",
        "RandomResizedCrop",
        "ToTensor",
        "Resize",
        "CenterCrop",
        "ColorJitter",
        "Grayscale",
    ],  # fmt: skip
    "torchvision.transforms.functional": [],
    "torchvision.ops": [],
    "torchvision.ops.misc": ["FrozenBatchNorm2d"],
}


class _NoTorchvision:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RszError("open_clip: this needs torchvision, which is not installed (rsz never needs it)")


def import_open_clip():  # the open_clip module
    """The open_clip package, importable with or without torchvision installed."""
    if "open_clip" in sys.modules:
        return sys.modules["open_clip"]
    import importlib.util

    if importlib.util.find_spec("open_clip") is None:
        raise RszError("open_clip is not installed (pip install 'rsz[export]')")
    if importlib.util.find_spec("torchvision") is not None:
        try:
            import open_clip

            return open_clip
        except (ImportError, RuntimeError, OSError) as err:
            # A torchvision that cannot load (PyPI's CUDA build beside a CPU torch fails with "operator
            # torchvision::nms does not exist"): forget the half-imported modules, use the stand-ins.
            frames = traceback.extract_tb(err.__traceback__)
            if not any(f"{os.sep}torchvision{os.sep}" in frame.filename for frame in frames):
                raise
            for name in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "open_clip")]:
                del sys.modules[name]
    try:
        import transformers  # noqa: F401 - imported before the stand-ins, so it sees no torchvision
    except ImportError:
        pass
    stand_ins = {}
    for name, attributes in _TORCHVISION_NAMES.items():
        module = types.ModuleType(name)
        for attribute in attributes:
            setattr(module, attribute, _NoTorchvision)
        stand_ins[name] = module
    # Used as default arguments at class definition, so it must be a real enum.
    stand_ins["torchvision.transforms"].InterpolationMode = enum.Enum(
        "InterpolationMode", ["NEAREST", "BILINEAR", "BICUBIC"]
    )
    sys.modules.update(stand_ins)
    try:
        import open_clip
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)
    return open_clip


# ---------------------------------------------------------------- reading checkpoints


# torch.load's refusal messages wrap the reason in advice ("Weights only load failed. ...", "(1) In PyTorch
# 2.6, ...", "(2) Alternatively, ...", "Please file an issue ...", "Check the documentation ..."): these lines
# are the advice, not the reason; the reason is the "WeightsUnpickler error: ..." line, or the first other.
_TORCH_ADVICE = (
    "Weights only load failed", "Please file an issue", "Check the documentation", "(1) ", "(2) ",
)  # fmt: skip


def _reason(err: BaseException, limit: int = 160) -> str:
    """The useful first line of a loader's error: torch's advice skipped, one sentence, at most `limit`."""
    lines = [line.strip().removeprefix("WeightsUnpickler error: ") for line in str(err).splitlines()]
    lines = [line for line in lines if line]
    useful = [line for line in lines if not line.startswith(_TORCH_ADVICE)]
    text = (useful or lines or [type(err).__name__])[0]
    text = re.split(r"(?<=[a-z)])\. (?=[A-Z])", text, maxsplit=1)[0]  # "... directory. This is an internal"
    return text[:limit].rstrip(".")


def _torch_load_problem(path: Path, err: BaseException) -> str:
    """What a file torch.load(weights_only=True) could not read is not, in words (no path)."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        head = b""
    if head != b"PK" and head[:1] != b"\x80":  # neither torch.save's zip nor any pickle
        return "not a PyTorch checkpoint: neither a torch.save zip archive nor a pickle"
    reason = _reason(err)
    if head == b"PK" and not zipfile.is_zipfile(path):
        return f"not a PyTorch checkpoint: a zip archive cut short or damaged ({reason})"
    if head == b"PK" and _is_torchscript(path):
        # OpenAI's own CLIP files; torch's refusal of them is about weights_only defaults, not the way out
        return (
            "a TorchScript archive (OpenAI's original CLIP .pt), which rsz does not run: save a state dict, "
            f"torch.save(open_clip.load_openai_model('{path.name}').state_dict(), 'clip.pt'), and export "
            "that with --arch <arch>-quickgelu (OpenAI's activation)"
        )
    if isinstance(err, pickle.UnpicklingError) and str(err).startswith("Weights only load failed"):
        return (
            "not a PyTorch checkpoint of plain tensors: torch.load(weights_only=True) refused it "
            f"({reason}; rsz never unpickles anything else)"
        )
    return f"not a PyTorch checkpoint: {reason}"


def _is_torchscript(path: Path) -> bool:
    """A torch.jit.save archive: its zip holds the module's code and constants beside the tensors."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(name.endswith("/constants.pkl") or "/code/" in name for name in names)


def torch_load_weights(path: Path) -> Any:
    """torch.load(path, weights_only=True), torch's warnings silenced (a plain pickle of protocol 4 warns
    on stderr before it is refused); raises RszError naming the file and what it is not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused, truncated file, not a checkpoint at all, ...
        raise RszError(f"{path}: {_torch_load_problem(path, err)}") from None


def safetensors_weights(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # SafetensorError (truncated, bad header), ...
        raise RszError(f"{path}: not a safetensors file: {_reason(err)}") from None


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of an open_clip checkpoint file: safetensors, or torch.load(weights_only=True) only.

    A training checkpoint's {"state_dict": ...} is unwrapped and DDP's "module." prefix dropped."""
    if path.suffix not in STATE_DICT_SUFFIXES:
        raise RszError(
            f"{path}: expected a {', '.join(STATE_DICT_SUFFIXES)} checkpoint or a CLIPModel folder"
        )
    obj = safetensors_weights(path) if path.suffix == ".safetensors" else torch_load_weights(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        # a wrapper of another trainer ({"model": ..., "epoch": ...}): its keys say where the weights are
        keys = f" (its keys: {', '.join(map(str, list(obj)[:8]))})" if isinstance(obj, dict) and obj else ""
        raise RszError(f"{path}: holds no state dict of tensors{keys}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _plain_clip_configs(open_clip) -> dict[str, dict]:
    """open_clip's shipped architectures that are a plain CLIP (own towers, own tokenizer)."""
    configs = {}
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name) or {}
        vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
        if "multimodal_cfg" in cfg or "timm_model_name" in vision or "hf_model_name" in text:
            continue
        if "hf_tokenizer_name" in text or text.get("tokenizer_kwargs"):
            continue
        configs[name] = cfg
    return configs


def _meta_shapes(open_clip, name: str) -> dict[str, tuple[int, ...]]:
    """State-dict shapes of an open_clip architecture, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = _create_model(open_clip, name, device="meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _create_model(open_clip, name: str, **kwargs: Any) -> nn.Module:
    """open_clip.create_model without weights, quietly: it warns "No pretrained weights loaded" through
    the root logger, and none are wanted."""
    import logging

    logging.getLogger().disabled = True
    try:
        return open_clip.create_model(name, pretrained=None, **kwargs)
    finally:
        logging.getLogger().disabled = False


def _signature(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """What the shapes say about the architecture, comparable with an open_clip model config."""
    sig: dict[str, Any] = {}
    if "visual.proj" in shapes and "visual.conv1.weight" in shapes:  # ViT tower
        width, _, patch, _ = shapes["visual.conv1.weight"]
        tokens = shapes["visual.positional_embedding"][0]
        sig.update(vision="vit", width=width, patch_size=patch, image_size=patch * round((tokens - 1) ** 0.5))
        sig["layers"] = 1 + max(
            int(k.split(".")[3]) for k in shapes if k.startswith("visual.transformer.res")
        )
        sig["embed_dim"] = shapes["visual.proj"][1]
    elif "visual.attnpool.c_proj.weight" in shapes:  # ModifiedResNet tower (RN50, RN101, ...)
        sig.update(vision="resnet", width=shapes["visual.conv1.weight"][0] * 2)
        sig["layers"] = [
            1 + max((int(k.split(".")[2]) for k in shapes if k.startswith(f"visual.layer{i}.")), default=-1)
            for i in range(1, 5)
        ]
        sig["embed_dim"] = shapes["visual.attnpool.c_proj.weight"][0]
    if "token_embedding.weight" in shapes:
        sig["text_width"] = shapes["token_embedding.weight"][1]
        sig["context_length"] = shapes["positional_embedding"][0]
        sig["text_layers"] = 1 + max(int(k.split(".")[2]) for k in shapes if k.startswith("transformer.res"))
    return sig


def _config_signature(cfg: dict) -> dict[str, Any]:
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    sig: dict[str, Any] = {"embed_dim": cfg["embed_dim"], "text_width": text.get("width", 512)}
    sig["context_length"] = text.get("context_length", 77)
    sig["text_layers"] = text.get("layers", 12)
    if isinstance(vision.get("layers"), list | tuple):
        sig.update(vision="resnet", width=vision.get("width", 64), layers=list(vision["layers"]))
    else:
        sig.update(vision="vit", width=vision.get("width", 768), layers=vision.get("layers", 12))
        sig.update(patch_size=vision.get("patch_size", 16), image_size=vision.get("image_size", 224))
    return sig


def infer_arch(state: dict[str, Tensor]) -> tuple[str, list[str]]:
    """The open_clip architecture whose state dict has exactly these keys and shapes.

    Returns (name, other names with the same shapes); QuickGELU variants, for one, differ only in the
    activation, which no weight records: the plain name is preferred, the others listed."""
    open_clip = import_open_clip()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    wanted = _signature(shapes)
    if not wanted:  # no --arch can help: name a key, so a foreign model or a key prefix shows
        raise RszError(
            f"holds no open_clip CLIP tensors ({len(shapes)} tensor{'s' * (len(shapes) != 1)}, "
            f"e.g. {min(shapes)}; open_clip's are visual.*, token_embedding.weight, ...)"
        )
    candidates = [n for n, cfg in _plain_clip_configs(open_clip).items() if _config_signature(cfg) == wanted]
    exact = sorted((n for n in candidates if _meta_shapes(open_clip, n) == shapes), key=_preference)
    if not exact and candidates:  # the towers' sizes are an architecture's, some tensors are not
        closest = min(candidates, key=_preference)
        raise RszError(
            "no open_clip architecture has exactly these tensors, the closest is "
            f"{closest}: {_difference(shapes, _meta_shapes(open_clip, closest), closest)}"
        )
    if not exact:
        summary = ", ".join(f"{k} {v}" for k, v in wanted.items())
        raise RszError(f"no open_clip architecture has these weights' shapes ({summary}); pass --arch NAME")
    return exact[0], exact[1:]


def _preference(name: str) -> tuple:
    return ("quickgelu" in name.lower(), len(name), name)


def _difference(
    shapes: dict[str, tuple[int, ...]], arch_shapes: dict[str, tuple[int, ...]], arch: str
) -> str:
    """How a checkpoint's tensors differ from an architecture's, in words (the first of each kind)."""

    def first(keys: list[str]) -> str:
        return keys[0] + (f" (and {len(keys) - 1} more)" if len(keys) > 1 else "")

    words = []
    extra = sorted(shapes.keys() - arch_shapes.keys())
    missing = sorted(arch_shapes.keys() - shapes.keys())
    changed = sorted(k for k in shapes.keys() & arch_shapes.keys() if shapes[k] != arch_shapes[k])
    if extra:
        words.append(f"it has {first(extra)}, which {arch} has not")
    if missing:
        words.append(f"it lacks {first(missing)}")
    if changed:
        key, more = changed[0], first(changed).removeprefix(changed[0])
        words.append(f"its {key} is {list(shapes[key])}, {arch}'s {list(arch_shapes[key])}{more}")
    return "; ".join(words)


# ---------------------------------------------------------------- the model


class _ImageTower(nn.Module):
    def __init__(self, net: nn.Module, hf: bool) -> None:
        super().__init__()
        self.net = net
        self.hf = hf

    def forward(self, image: Tensor) -> Tensor:
        if self.hf:
            return _features(self.net.get_image_features(pixel_values=image))
        return self.net.encode_image(image)


class _OpenClipText(nn.Module):
    """open_clip's encode_text on ids padded to its context length (its positional table is that long).

    Pad positions become 0, the id open_clip.tokenize pads with, whatever the caller padded with."""

    def __init__(self, net: nn.Module, context_length: int) -> None:
        super().__init__()
        self.net = net
        self.context_length = context_length

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        ids = input_ids * attention_mask
        ids = F.pad(ids, (0, self.context_length - ids.shape[1]))
        return self.net.encode_text(ids)


class _HfText(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return _features(self.net.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def hf_tokenizer_json(folder: Path) -> Path | None:
    """A Hugging Face CLIP folder's tokenizer.json when it has no vocab.json + merges.txt pair (transformers 5
    saves a CLIP tokenizer as only that), else None: one rule for the PyTorch tokenizer and the exported one
    (rsz_export.clip_tokenizer)."""
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return None
    path = folder / "tokenizer.json"
    return path if path.is_file() else None


def _hf_tokenizer(folder: Path) -> Any:
    """The folder's CLIPTokenizer files (vocab.json + merges.txt), or its tokenizer.json (the same rule)."""
    from transformers import CLIPTokenizer, PreTrainedTokenizerFast

    tokenizer_json = hf_tokenizer_json(folder)
    if tokenizer_json is not None:
        return PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json), pad_token="<|endoftext|>")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


def _features(out: Any) -> Tensor:
    """transformers 5 returns a model output from get_*_features; 4.x a tensor."""
    if isinstance(out, Tensor):
        return out
    return out.pooler_output


@dataclass
class ClipSource:
    """Where a ClipModel came from, for the manifest and the export message."""

    path: str
    format: str  # "open_clip" | "hf"
    arch: str  # open_clip architecture name, or the HF config's model_type
    inferred: bool = False  # arch inferred from the weights' shapes (no --arch)
    same_shapes: tuple[str, ...] = ()  # other architectures with identical shapes


class ClipModel(RszModel):
    """A CLIP image tower and text tower; classes are text prompts (class_embedding "templates")."""

    kind: ClassVar[str] = "clip"
    scoring_rule: ClassVar[str] = "cosine"
    class_embedding: ClassVar[str] = "templates"

    def __init__(
        self, net: nn.Module, source: ClipSource, preprocess: PreprocessSpec, context_length: int
    ) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.source = source
        self.preprocess = preprocess
        self.context_length = context_length

    @property
    def is_hf(self) -> bool:
        return self.source.format == "hf"

    def encode_images(self, images: Tensor) -> Tensor:
        return _ImageTower(self.net, self.is_hf)(images)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self._text_module()(input_ids, attention_mask)

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        """The checkpoint's own tokenizer: open_clip.tokenize (padded with 0 to the context), or the
        CLIPTokenizer of the Hugging Face folder."""
        if self.is_hf:
            tokenizer = _hf_tokenizer(Path(self.source.path))
            out = tokenizer(list(texts), padding=True, truncation=True, max_length=self.context_length)
            return {k: torch.tensor(out[k], dtype=torch.int64) for k in ("input_ids", "attention_mask")}
        ids = import_open_clip().tokenize(list(texts), context_length=self.context_length)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def encode_classes(self, class_inputs: dict[str, Tensor]) -> Tensor:
        return self.encode_text(class_inputs["input_ids"], class_inputs["attention_mask"])

    def logit_scale(self) -> float:
        return float(self.net.logit_scale.detach().exp())

    def _text_module(self) -> nn.Module:
        return _HfText(self.net) if self.is_hf else _OpenClipText(self.net, self.context_length)

    def export_graphs(self) -> list[ExportGraph]:
        size = self.preprocess.size
        image = _ImageTower(self.net, self.is_hf)
        ids = torch.tensor([[1, 5, 6, 7, 2, 0, 0, 0], [1, 9, 10, 11, 12, 13, 14, 2]], dtype=torch.int64)
        if not self.is_hf:  # the ids open_clip.tokenize gives: start 49406-ish, end = the largest id
            vocab = self.net.token_embedding.num_embeddings
            ids = torch.where(ids == 1, vocab - 2, torch.where(ids == 2, vocab - 1, ids))
        mask = torch.tensor([[1] * 5 + [0] * 3, [1] * 8], dtype=torch.int64)
        # ONNX Runtime 1.32's full CPU graph optimisation crashes (segfault) on the FP16 attention of
        # open_clip's nn.MultiheadAttention with FP16 Transposes; FP32 Transposes (a Cast on each side) load.
        keep = ("Transpose",)
        return [
            ExportGraph(
                "image", image, (torch.zeros(2, 3, size, size),), ["image"], ["embedding"],
                {"image": {0: "batch"}, "embedding": {0: "batch"}}, keep,
            ),
            ExportGraph(
                "text", self._text_module(), (ids, mask), ["input_ids", "attention_mask"], ["embedding"],
                {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                 "embedding": {0: "batch"}}, keep,
            ),
        ]  # fmt: skip


# ---------------------------------------------------------------- loading


def _open_clip_preprocess(open_clip, net: nn.Module) -> PreprocessSpec:
    """The model's preprocess config (open_clip's PreprocessCfg): its size, mean, std, and its resize filter
    as open_clip's image_transform picks it for inference: bilinear when the config says "bilinear", else
    bicubic (the PreprocessCfg default, and what "random" means at inference). Its resize_mode and centre
    crop are not used: rsz resizes each whole tile."""
    cfg = open_clip.get_model_preprocess_cfg(net)
    size = cfg.get("size", 224)
    size = size[0] if isinstance(size, list | tuple) else size
    resize = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
    return PreprocessSpec(
        size=int(size), resize=resize, mean=tuple(cfg.get("mean", CLIP_MEAN)),
        std=tuple(cfg.get("std", CLIP_STD)),
    )  # fmt: skip


def load_open_clip(path: Path, arch: str | None = None) -> ClipModel:
    """An open_clip state dict into open_clip's model of `arch` (inferred from the shapes when None)."""
    open_clip = import_open_clip()
    state = read_state_dict(path)
    inferred, same = arch is None, ()
    if arch is None:
        try:
            arch, others = infer_arch(state)
        except RszError as err:  # infer_arch sees tensors only: name the file they came from
            raise RszError(f"{path}: {err}") from None
        same = tuple(others)
    elif arch not in (configs := _plain_clip_configs(open_clip)):
        if arch.replace("/", "-") in configs:  # OpenAI's spelling, as GeoRSCLIP's and RemoteCLIP's code use
            raise RszError(f"--arch {arch}: open_clip spells it {arch.replace('/', '-')}")
        known = "ViT-B-32, ViT-B-16, ViT-L-14, RN50, ... (open_clip.list_models())"
        raise RszError(f"--arch {arch}: not a plain open_clip CLIP architecture (known: {known})")
    # Compared here, not by load_state_dict, whose error lists every missing key (kilobytes on one line).
    shapes, arch_shapes = {k: tuple(v.shape) for k, v in state.items()}, _meta_shapes(open_clip, arch)
    if shapes != arch_shapes:
        raise RszError(
            f"{path}: does not fit open_clip {arch}: {_difference(shapes, arch_shapes, arch)}"
            f"{_fitting_arch(state)}"
        )
    net = _create_model(open_clip, arch)
    net.load_state_dict(state, strict=True)
    source = ClipSource(str(path), "open_clip", arch, inferred, same)
    return ClipModel(net, source, _open_clip_preprocess(open_clip, net), int(net.context_length))


def _fitting_arch(state: dict[str, Tensor]) -> str:
    """For a wrong --arch: the architecture the weights do fit, as the end of its error line."""
    try:
        name, _ = infer_arch(state)
    except RszError:
        return ""
    return f"; the weights are open_clip {name}'s (leave out --arch, or pass --arch {name})"


def _hf_weights(folder: Path) -> tuple[list[Path], bool]:
    """The weight files of a CLIPModel folder, and whether they are safetensors (else torch pickles)."""
    for index_name, single, is_safetensors in (
        ("model.safetensors.index.json", "model.safetensors", True),
        ("pytorch_model.bin.index.json", "pytorch_model.bin", False),
    ):
        index = folder / index_name
        if index.is_file():  # a sharded checkpoint
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                names = sorted(set(weight_map.values()))
            except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
                raise RszError(f"{index}: not a shard index ({first_line(err, limit=120)})") from None
            if not names or not all(isinstance(n, str) and n == Path(n).name for n in names):
                raise RszError(f"{index}: weight_map must name shard files in this folder")
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                raise RszError(f"{index}: shard {missing[0]} is not in the folder")
            return [folder / n for n in names], is_safetensors
        if (folder / single).is_file():
            return [folder / single], is_safetensors
    raise RszError(f"{folder}: a Hugging Face CLIP folder needs model.safetensors or pytorch_model.bin")


def _finite_numbers(path: Path, cfg: dict, field: str, default: tuple, positive: bool) -> tuple:
    """preprocessor_config.json's image_mean / image_std: 3 finite numbers (one number: all three)."""
    value = cfg.get(field, default)
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = [value] * 3
    ok = (
        isinstance(value, list | tuple) and len(value) == 3
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )  # fmt: skip
    if not ok:
        raise RszError(f"{path}: {field} must be 3 finite numbers, got {json.dumps(value)[:60]}")
    if positive and min(value) <= 0:
        raise RszError(f"{path}: {field} must be 3 numbers above 0, got {json.dumps(value)[:60]}")
    return tuple(float(v) for v in value)


# preprocessor_config.json's `resample` (a PIL.Image.Resampling number) -> PreprocessSpec.resize.
HF_RESAMPLE = {2: "bilinear", 3: "bicubic"}


def _hf_resample(path: Path, cfg: dict) -> str:
    """The resize filter of preprocessor_config.json: `resample` 2 bilinear, 3 bicubic (CLIPImageProcessor's
    default, so also when the key is missing). Another filter (nearest, lanczos, box, hamming) is refused:
    rsz has only these two, and resizing otherwise than the checkpoint's own pipeline would change its
    embeddings without a word."""
    value = cfg.get("resample", 3)
    if type(value) is int and value in HF_RESAMPLE:
        return HF_RESAMPLE[value]
    names = {0: "NEAREST", 1: "LANCZOS", 4: "BOX", 5: "HAMMING"}
    what = f" (Pillow's {names[value]})" if type(value) is int and value in names else ""
    raise RszError(
        f"{path}: resample {json.dumps(value)[:40]}{what}: rsz resizes with 2 (bilinear) or 3 (bicubic) only"
    )


def _hf_preprocess(folder: Path, size: Any) -> PreprocessSpec:
    """The folder's preprocessing: config.json's vision image_size; mean/std and the resize filter
    (`resample`) from preprocessor_config.json when there is one, else OpenAI CLIP's (bicubic, as
    CLIPImageProcessor's defaults). Its shortest-edge resize and crop_size are not used: rsz resizes each
    whole tile to the model's input size (a centre crop would cut off a tile's edges)."""
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise RszError(f"{folder / 'config.json'}: vision_config.image_size must be a positive integer")
    mean, std, resize = CLIP_MEAN, CLIP_STD, "bicubic"
    path = folder / "preprocessor_config.json"
    if path.is_file():
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise RszError(f"{path}: not readable JSON ({first_line(err, limit=120)})") from None
        if not isinstance(cfg, dict):
            raise RszError(f"{path}: expected a JSON object")
        mean = _finite_numbers(path, cfg, "image_mean", CLIP_MEAN, positive=False)
        std = _finite_numbers(path, cfg, "image_std", CLIP_STD, positive=True)
        resize = _hf_resample(path, cfg)
    return PreprocessSpec(size=size, resize=resize, mean=mean, std=std)


def _quiet_transformers():
    """transformers' load report and progress bar off (stderr gets rsz's one line, nothing else)."""
    import contextlib

    from transformers.utils import logging as hf_logging

    @contextlib.contextmanager
    def quiet():
        verbosity = hf_logging.get_verbosity()
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()

    return quiet()


def load_hf_clip(folder: Path) -> ClipModel:
    """A Hugging Face CLIPModel folder (config.json + model.safetensors or pytorch_model.bin, or shards).

    The weight files are read here (safetensors, or pickled .bin files by torch.load(weights_only=True), never
    by transformers, whose pickle safety depends on its version) and handed to it as one state dict. Every
    tensor of CLIPModel must come from the folder: missing ones would be random weights."""
    if not (folder / "config.json").is_file():
        # a downloaded model repository of open_clip files (RemoteCLIP's holds one per architecture)
        files = sorted(f.name for f in folder.iterdir() if f.suffix in STATE_DICT_SUFFIXES and f.is_file())
        if files:
            shown = ", ".join(files[:4]) + (", ..." if len(files) > 4 else "")
            raise RszError(
                f"{folder}: no config.json, so no Hugging Face CLIP folder; it holds {shown}: "
                "pass one of those files as --checkpoint"
            )
        raise RszError(f"{folder}: a Hugging Face CLIP folder needs config.json")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        reason = first_line(err, limit=120)
        raise RszError(f"{folder / 'config.json'}: not readable JSON ({reason})") from None
    if not isinstance(config, dict) or config.get("model_type") != "clip":
        model_type = config.get("model_type") if isinstance(config, dict) else None
        raise RszError(f"{folder / 'config.json'}: model_type {model_type!r}, expected 'clip'")
    vision = config.get("vision_config")
    spec = _hf_preprocess(folder, (vision if isinstance(vision, dict) else {}).get("image_size", 224))
    files, is_safetensors = _hf_weights(folder)
    from transformers import CLIPConfig, CLIPModel

    cannot = f"{folder}: cannot load this CLIPModel"
    load = safetensors_weights if is_safetensors else torch_load_weights
    state: dict[str, Tensor] = {}
    for file in files:  # read here, so a truncated or refused file is named, then handed to transformers
        try:
            obj = load(file)
        except RszError as err:
            raise RszError(f"{cannot} ({file.name}: {str(err).removeprefix(f'{file}: ')})") from None
        if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
            raise RszError(f"{cannot} ({file.name} holds no state dict of tensors)")
        state.update(obj)
    # Tensors that do not fit the config come back in mismatched_keys (transformers 5 raises with the
    # details only in its logged report otherwise); they are refused below, like missing ones.
    checked = {"output_loading_info": True, "ignore_mismatched_sizes": True}
    try:
        with _quiet_transformers():
            hf_config = CLIPConfig.from_pretrained(str(folder), local_files_only=True)
            net, info = CLIPModel.from_pretrained(None, config=hf_config, state_dict=state, **checked)
    except Exception as err:  # shapes that do not fit the config, a config transformers rejects, ...
        raise RszError(f"{cannot} ({_reason(err)})") from None
    # Buffers transformers rebuilds itself (position_ids: non-persistent, or ignored on load) are no weights.
    names = ", ".join(f.name for f in files)
    mismatched = sorted((k, tuple(a), tuple(b)) for k, a, b in info.get("mismatched_keys", ()))
    if mismatched:
        key, theirs, ours = mismatched[0]
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise RszError(
            f"{folder}: {key} is {list(theirs)} in {names}, but config.json makes it {list(ours)}{more}"
        )
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.endswith("position_ids"))
    if missing:
        expected = [k for k in net.state_dict() if not k.endswith("position_ids")]
        if len(missing) >= len(expected):
            found = sorted(info.get("unexpected_keys", ()))
            what = f"{len(found)} other tensor{'s' * (len(found) != 1)}, e.g. {found[0]}" if found else "none"
            raise RszError(f"{folder}: {names} holds no CLIPModel tensors ({what})")
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise RszError(
            f"{folder}: {names} lacks {len(missing)} of CLIPModel's {len(expected)} tensors ({shown}); "
            "refusing to export random weights"
        )
    context = int(net.config.text_config.max_position_embeddings)
    return ClipModel(net.float().eval(), ClipSource(str(folder), "hf", "clip"), spec, context)


def load_clip(path: Path | str, arch: str | None = None) -> ClipModel:
    """An open_clip checkpoint file or a Hugging Face CLIPModel folder (--arch applies to open_clip)."""
    path = Path(path)
    if not path.exists():
        raise RszError(f"{path}: no such checkpoint")
    if path.is_dir():
        if arch is not None:
            raise RszError(f"--arch {arch}: a Hugging Face folder names its architecture in config.json")
        return load_hf_clip(path)
    return load_open_clip(path, arch)


# ---------------------------------------------------------------- registry entry (rsz_train.models.registry)


@dataclass
class ClipConfig:
    """A pretrained CLIP checkpoint (nothing is trained: rsz-export clip reads it directly)."""

    checkpoint: str = ""
    arch: str | None = None


def build_clip(config: ClipConfig, task: Any = None) -> ClipModel:
    if not config.checkpoint:
        raise RszError("clip: needs a checkpoint (rsz-export clip --checkpoint PATH)")
    return load_clip(config.checkpoint, config.arch)
