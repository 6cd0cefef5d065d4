"""Run configuration: one dataclass for the training loop, one per model kind, loaded from YAML.

A config file has up to three top-level keys, each optional:

    kind: dsva            # must match the command (rsz-train dsva ...)
    model: {...}          # fields of the model's config dataclass (e.g. DSVAConfig)
    train: {...}          # fields of TrainConfig

Unknown keys are errors (a typo must not silently fall back to a default).
So is a number outside its setting's range, e.g. `image_size: 0` (each dataclass's `ranges`, check_range).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from rsz_infer.errors import RszError, first_line
from rsz_infer.outputs import atomic_write

# Configs shipped with rsz (e.g. the papers' sizes), found by bare name: `--config dsva_vit_b16`.
PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"

# Ranges of numeric settings, where the setting's meaning fixes one: (lowest, whether the lowest itself is
# allowed, highest or None). A config dataclass lists its own in a ClassVar `ranges` {name: range}; _update
# checks them when the YAML is read, so a bad value is one error line before any work, not a traceback
# from PIL or torch (or a half-written run folder) later. Every number must be finite (YAML has .inf, .nan).
ABOVE_ZERO = (0, False, None)  # sizes, counts, learning rates, temperatures, scales
ZERO_OR_MORE = (0, True, None)  # loss weights, decay, counts where 0 means "off" or "auto"
PROBABILITY = (0, True, 1)  # dropout and mixing probabilities


def check_range(value: Any, allowed: tuple | None, where: str) -> None:
    """RszError "{where} {value}: must be ..." when a number is not finite or outside `allowed`; anything
    else (None, a string: the type check's business) passes."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if not math.isfinite(value):
        raise RszError(f"{where} {value!r}: must be a finite number")
    if allowed is None:
        return
    low, low_allowed, high = allowed
    if (value < low if low_allowed else value <= low) or (high is not None and value > high):
        if high is not None:
            rule = f"between {low} and {high}"
        elif isinstance(value, int) and not low_allowed:
            rule = f"at least {low + 1}"  # integers: "above 0" reads as "at least 1"
        else:
            rule = f"at least {low}" if low_allowed else f"above {low}"
        raise RszError(f"{where} {value!r}: must be {rule}")


@dataclass
class TrainConfig:
    """The training loop; defaults train the small CPU models on the embedded 64 px benchmark."""

    epochs: int = 12
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 1  # linear warm-up, then cosine decay to 0 over the remaining epochs
    # Keep the last epoch instead of the best on validation (validation still scores every epoch and
    # chooses the GZSL lambda): with few val classes the per-epoch score is noisy (DSVA, RESULTS.md).
    select_last_epoch: bool = False
    grad_clip: float = 1.0  # max gradient norm; 0 turns clipping off
    seed: int = 0
    image_size: int = 64  # every image is resized to image_size x image_size (rsz_infer.preprocess)
    augment: bool = True  # random flips and 90-degree rotations (tiles have no "up")
    # Class attribute vectors: "text" (from descriptions) | "matrix" (ground truth) | "images" (DSVA's
    # generation: training classes from their training images under dual_encoder_run, the others from text)
    semantics: str = "text"
    # semantics "images": an msa run folder, a clip (or msa) bundle, or a CLIP checkpoint (open_clip file or
    # Hugging Face CLIPModel folder); rsz_train.attribute_generation.dual_encoder
    dual_encoder_run: str | None = None
    # Text route of the attribute vectors: ridge that decorrelates the attribute phrases, 0 = plain cosines
    # (rsz_infer.semantics.attribute_vectors); the bundle manifest carries it so inference does the same.
    phrase_ridge: float = 0.0
    # Text route: attribute vectors of each description's clauses, the best clause per phrase
    # (rsz_infer.semantics.description_clauses), instead of the whole sentence's; the manifest carries it.
    # It shapes ClassSemantics.attributes (DSVA's class embedding, MCFA's semantic_source "attributes").
    # Off by default: on the demo benchmark it lowered DSVA's val ZSL (RESULTS.md, the ninth round).
    description_clauses: bool = False
    # Batches: "auto" (the model's own: random for DSVA and MSA, class-balanced episodes for MCFA), "random"
    # or "class_balanced" (classes_per_batch x images_per_class, DSVA's authors' 8 x 3)
    sampler: str = "auto"
    classes_per_batch: int = 0  # class-balanced sampler only: classes per episode, 0 = all training classes
    images_per_class: int = 8  # class-balanced sampler only: images of each class per episode
    batches_per_epoch: int = 0  # class-balanced sampler only: 0 = about one pass over the training images
    # Schedule of a pretrained backbone (every parameter under a module named "backbone"): frozen for the
    # first frozen_backbone_epochs epochs (only heads and prototypes learn: DSVA's authors' pretrain
    # epochs), then trained at lr * backbone_lr_factor beside the rest at lr.
    frozen_backbone_epochs: int = 0
    backbone_lr_factor: float = 1.0
    amsgrad: bool = False  # AdamW's AMSGrad variant (MCFA's authors: Adam, amsgrad=True)
    eval_batch_size: int = 256
    amp: bool = True  # mixed precision (bf16, or fp16 with loss scaling) on GPU; ignored on CPU
    # Metres per pixel of the training images when known (rsz-train --gsd): not used by training; rsz-export
    # copies it into the bundle manifest so that rsz-infer --gsd auto resamples scenes to it
    gsd: float | None = None

    ranges: ClassVar[dict] = {
        "epochs": ABOVE_ZERO,  # also the rule of rsz-train --epochs (train.resolve_config)
        "batch_size": ABOVE_ZERO,
        "lr": ABOVE_ZERO,
        "weight_decay": ZERO_OR_MORE,
        "warmup_epochs": ZERO_OR_MORE,
        "grad_clip": ZERO_OR_MORE,
        "seed": ZERO_OR_MORE,  # numpy's generators take no negative seed
        "image_size": ABOVE_ZERO,
        "phrase_ridge": ZERO_OR_MORE,
        "classes_per_batch": ZERO_OR_MORE,
        "images_per_class": ABOVE_ZERO,
        "batches_per_epoch": ZERO_OR_MORE,
        "frozen_backbone_epochs": ZERO_OR_MORE,
        "backbone_lr_factor": ZERO_OR_MORE,
        "eval_batch_size": ABOVE_ZERO,
        # gsd: __post_init__ (its default is None, so it has no type check here either)
    }

    def __post_init__(self) -> None:
        if self.gsd is not None:
            if isinstance(self.gsd, bool) or not isinstance(self.gsd, (int, float)) or not self.gsd > 0:
                raise RszError(f"train.gsd {self.gsd!r}: metres per pixel must be a number above zero")
            self.gsd = float(self.gsd)


@dataclass
class RunConfig:
    kind: str
    model: Any  # the model kind's config dataclass
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        """Plain YAML-safe values (tuples become lists)."""
        return _plain(
            {
                "kind": self.kind,
                "model": dataclasses.asdict(self.model),
                "train": dataclasses.asdict(self.train),
            }
        )


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


_EXPONENT_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")  # 1e-4, 5E3, 2.5e+2


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Check a YAML value against the type of the field's default (int is accepted for float)."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise RszError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, float) and isinstance(value, str) and _EXPONENT_FLOAT.match(value.strip()):
        return float(value)  # `lr: 1e-4` is a float in YAML 1.2; PyYAML (YAML 1.1) reads the string '1e-4'
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(default)(value)
    if not isinstance(value, type(default)) or isinstance(value, bool) != isinstance(default, bool):
        raise RszError(f"{where}: expected {type(default).__name__}, got {value!r}")
    return value


def _type_name(default: Any) -> str:
    return "true or false" if isinstance(default, bool) else type(default).__name__


def _update(obj: Any, values: dict, where: str) -> Any:
    if not isinstance(values, dict):
        raise RszError(f"{where}: expected a mapping of settings, got {values!r}")
    known = {f.name: f for f in dataclasses.fields(obj)}
    ranges = getattr(obj, "ranges", {})
    changes = {}
    for key, value in values.items():
        if key not in known:
            raise RszError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        default = getattr(obj, key)
        if value is None and default is not None and "None" not in str(known[key].type):
            # `epochs: null` (or `epochs:` with no value): only an optional setting takes null
            raise RszError(f"{where}.{key}: expected {_type_name(default)}, got null (no value)")
        changes[key] = _coerce(value, default, f"{where}.{key}")
        check_range(changes[key], ranges.get(key), f"{where}.{key}")  # as coerced: lr -1 is -1.0, "above 0"
    return dataclasses.replace(obj, **changes)


def model_config_class(kind: str) -> type:
    from rsz_train.models.registry import model_entry

    try:
        return model_entry(kind).config_cls
    except KeyError as err:
        raise RszError(str(err.args[0])) from None


def config_from_dict(kind: str, data: dict, where: str = "config") -> RunConfig:
    """Defaults of `kind`, updated by a dict shaped like the YAML file."""
    if not isinstance(data, dict):
        raise RszError(f"{where}: expected a mapping with keys kind, model, train")
    unknown = set(data) - {"kind", "model", "train"}
    if unknown:
        raise RszError(f"{where}: unknown top-level key {sorted(unknown)[0]!r} (known: kind, model, train)")
    if data.get("kind", kind) != kind:
        raise RszError(f"{where}: config is for model kind {data['kind']!r}, not {kind!r}")
    model_cls = model_config_class(kind)
    model = _update(model_cls(), data.get("model") or {}, f"{where}: model")
    # A model config may carry its own training defaults (ClassVar train_defaults), e.g. fewer epochs.
    train = _update(TrainConfig(), dict(getattr(model_cls, "train_defaults", {})), f"{kind} train defaults")
    train = _update(train, data.get("train") or {}, f"{where}: train")
    return RunConfig(kind=kind, model=model, train=train)


def packaged_configs() -> list[str]:
    return sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))


def load_config(kind: str, path: Path | str | None = None, overrides: dict | None = None) -> RunConfig:
    """The run config of `kind`: defaults, then the YAML file at `path`, then `overrides`.

    `path` is a YAML file, or the bare name of a config shipped in rsz_train/configs (packaged_configs()).

    `overrides` maps dotted keys to values, e.g. {"train.epochs": 2, "model.depth": 2}.
    """
    data: dict = {}
    where = "config"
    if path is not None:
        path = Path(path)
        if not path.is_file() and (PACKAGED_CONFIGS / f"{path}.yaml").is_file():
            path = PACKAGED_CONFIGS / f"{path}.yaml"
        where = str(path)
        if not path.is_file():
            shipped = ", ".join(packaged_configs())
            raise RszError(f"{path}: config file not found (or a shipped config name: {shipped})")
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
        except yaml.YAMLError as err:
            raise RszError(f"{path}: not valid YAML ({first_line(err)})") from None
    config = config_from_dict(kind, data, where)
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        if section not in ("model", "train") or not name:
            raise RszError(f"override {key!r}: expected model.<name> or train.<name>")
        target = getattr(config, section)
        setattr(config, section, _update(target, {name: value}, f"override {section}"))
    return config


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping: PyYAML keeps the last silently, so a
    second `train:` section (or `lr:` line) would drop the first without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def save_config(config: RunConfig, path: Path) -> None:
    """config.yaml, replaced atomically: a kill while a resumed run rewrites it leaves the old one."""
    atomic_write(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
