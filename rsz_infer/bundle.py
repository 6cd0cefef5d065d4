"""The deployable bundle written by `rsz-export` and read by `rsz-infer` (no PyTorch).

A bundle is a folder:
    manifest.json        this module's Manifest, as JSON
    image.onnx           image encoder (+ heads); more graphs below, by role
    text.onnx            text encoder (stock or fine-tuned MiniLM), when the model needs text
    ...                  engines (*.engine + *.engine.json sidecars), tokenizer.json, *.npy
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rsz_infer.errors import RszError
from rsz_infer.preprocess import PreprocessSpec

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
# rsz-infer's --model default, relative to where it runs; `rsz-train demo` makes it its bundle
DEFAULT_MODEL = Path("models/default")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_sha256(bundle_dir: Path | str) -> str:
    """The bundle's identity: sha256 of its manifest (which lists every file's own sha256)."""
    return hashlib.sha256((Path(bundle_dir) / MANIFEST).read_bytes()).hexdigest()


@dataclass
class TensorSpec:
    name: str
    shape: list  # ints, or strings for dynamic axes ("batch", "seq")
    dtype: str  # numpy dtype name: "float32", "float16", "int64"


@dataclass
class GraphSpec:
    """One ONNX graph of the bundle and the engines built from it."""

    onnx: str  # file name inside the bundle
    precision: str  # "fp32" | "fp16"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    engines: list[str] = field(default_factory=list)  # TensorRT engine files (each with a .json sidecar)


@dataclass
class Manifest:
    model_kind: str  # "dsva" | "mcfa" | "msa" | "clip"
    rsz_version: str
    preprocess: PreprocessSpec
    # role -> graph: "image" always; "text", "semantic" (MCFA), "rerank" (MSA) where the model has them
    graphs: dict[str, GraphSpec]
    # How a class file becomes class embeddings, see rsz_infer.classes:
    #   "attributes": text graph on descriptions -> similarity to attribute phrases (DSVA)
    #   "semantic":   text graph on descriptions -> semantic graph (MCFA)
    #   "text":       text graph on prompts is the class embedding (MSA)
    #   "templates":  mean text embedding over prompt_templates filled with each class (CLIP)
    class_embedding: str
    scoring_rule: str  # "cosine" | "dot", see rsz_infer.scoring.class_logits
    logit_scale: float
    embedding_dim: int
    seen_classes: list[str]  # classes the model was trained on (GZSL calibration applies to them)
    seen_calibration: float  # default lambda for calibrated stacking, chosen on the validation split
    tokenizer: str = "tokenizer.json"
    max_text_length: int = 64
    text_prompt: str = "{description}"  # format string with {name} and {description}
    attribute_names: list[str] = field(default_factory=list)
    attribute_phrases: list[str] = field(default_factory=list)
    # "attributes" only: the phrase ridge of rsz_infer.semantics.attribute_vectors the model trained with
    phrase_ridge: float = 0.0
    # "templates" only (CLIP): the prompt ensemble, each template with one "{}" (rsz_infer.prompts)
    prompt_templates: list[str] = field(default_factory=list)
    # Ground sample distance (metres per pixel) of the training images, when known (rsz-export --gsd):
    # rsz-infer --gsd auto resamples scene windows to it
    gsd: float | None = None
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    extra: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        d = dict(d)
        d["preprocess"] = PreprocessSpec.from_dict(d["preprocess"])
        graphs = {}
        for role, g in d["graphs"].items():
            g = dict(g)
            g["inputs"] = [TensorSpec(**t) for t in g["inputs"]]
            g["outputs"] = [TensorSpec(**t) for t in g["outputs"]]
            graphs[role] = GraphSpec(**g)
        d["graphs"] = graphs
        return cls(**d)


def load_manifest(bundle_dir: Path | str, verify: bool = True) -> Manifest:
    """Read a bundle's manifest; with verify, check that every listed file exists with its sha256."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise RszError(f"{bundle_dir}: not an rsz model bundle (no {MANIFEST}); make one with rsz-export")
    try:
        manifest = Manifest.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise RszError(f"{path}: malformed manifest ({err})") from None
    if manifest.format_version != FORMAT_VERSION:
        raise RszError(f"{path}: bundle format {manifest.format_version}, this rsz reads {FORMAT_VERSION}")
    if verify:
        verify_files(bundle_dir, manifest)
    return manifest


def bundles_near(folder: Path = Path()) -> list[Path]:
    """Bundle folders under `folder`/models and `folder`/*/models (the demo's): for "did you mean" hints."""
    found = sorted(folder.glob(f"models/*/{MANIFEST}")) + sorted(folder.glob(f"*/models/*/{MANIFEST}"))
    return [p.parent for p in found]


def open_bundle(model: Path | str) -> Manifest:
    """The bundle at `model`, verified; when there is none, the error names the bundles that do exist."""
    model = Path(model)
    if not model.exists():
        near = bundles_near()
        if near:
            hint = f"; pass --model {near[0]}" + (
                f" (bundles here: {', '.join(map(str, near))})" if len(near) > 1 else ""
            )
        else:
            hint = " (the README demo writes it: rsz-train demo)" if model == DEFAULT_MODEL else ""
            hint += "; pass --model models/NAME"
        raise RszError(f"{model}: no model bundle here{hint}")
    return load_manifest(model)


def verify_files(bundle_dir: Path, manifest: Manifest) -> None:
    for name, digest in manifest.files.items():
        f = bundle_dir / name
        if not f.is_file():
            raise RszError(f"{f}: listed in the manifest but missing")
        if sha256_file(f) != digest:
            raise RszError(f"{f}: sha256 does not match the manifest (file changed or corrupted)")
