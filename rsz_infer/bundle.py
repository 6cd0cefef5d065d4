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
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from rsz_infer.errors import RszError, first_line
from rsz_infer.preprocess import RESIZE_FILTERS, PreprocessSpec

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
# rsz-infer's --model default, relative to where it runs; `rsz-train demo` makes it its bundle
DEFAULT_MODEL = Path("models/default")
# every manifest.model_kind there is: rsz_train.models.registry.bundle_kinds() (not imported here: rsz-infer
# runs without rsz_train; a test keeps the two lists the same)
MODEL_KINDS = ("dsva", "mcfa", "msa", "clip")
CLASS_EMBEDDINGS = ("attributes", "semantic", "text", "templates")  # rules of rsz_infer.class_embeddings
SCORING_RULES = ("cosine", "dot")
MAX_HUBNESS_PENALTY = 10  # the correction is in cosine units: far past any useful weight, and finite logits
MAX_INPUT_PX = 4096  # preprocess.size: past any model's input side; a batch of it still fits in memory
TENSOR_DTYPES = ("float32", "float16", "int64", "int32", "bool", "uint8")


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
    model_kind: str  # one of MODEL_KINDS: "dsva" | "mcfa" | "msa" | "clip"
    rsz_version: str
    preprocess: PreprocessSpec
    # role -> graph: "image" always; "text", "semantic" (MCFA), "rerank" (MSA) where the model has them
    graphs: dict[str, GraphSpec]
    # How a class file becomes class embeddings, see rsz_infer.class_embeddings:
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
    # seen class -> the description it was trained with: a class-file line naming a seen class without a
    # description takes it (rsz_infer.classfile.with_training_descriptions)
    seen_descriptions: dict[str, str] = field(default_factory=dict)
    tokenizer: str = "tokenizer.json"
    max_text_length: int = 64
    text_prompt: str = "{description}"  # format string with {name} and {description}
    attribute_names: list[str] = field(default_factory=list)
    attribute_phrases: list[str] = field(default_factory=list)
    # "attributes" only: the phrase ridge of rsz_infer.semantics.attribute_vectors the model trained with
    phrase_ridge: float = 0.0
    # "attributes" only: descriptions read clause by clause (rsz_infer.semantics.description_clauses)
    description_clauses: bool = False
    # The hubness correction of the class scores (rsz_infer.scoring.hubness_offsets; DSVA's
    # model.hubness_penalty): each class's similarity minus hubness_penalty x the mean cosine of its
    # embedding to its hubness_neighbours nearest rows of trained_class_embeddings ([S, D], the class
    # embeddings of seen_classes in that order, as the run trained with them). 0 = off.
    hubness_penalty: float = 0.0
    hubness_neighbours: int = 3
    trained_class_embeddings: list[list[float]] = field(default_factory=list)
    # "templates" only (CLIP): the prompt ensemble, each template with one "{}" (rsz_infer.prompts)
    prompt_templates: list[str] = field(default_factory=list)
    # Ground sample distance (metres per pixel) of the training images, when known (the run's
    # rsz-train --gsd, or rsz-export --gsd): rsz-infer --gsd auto resamples scene windows to it
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
    """Read a bundle's manifest and check its values and the paths it names (one-line RszError otherwise).

    Every file the bundle uses (graphs, engines and their sidecars, the tokenizer) must be a plain name
    inside the bundle folder and be listed in `files`; with verify, each listed file's sha256 is checked.
    """
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise RszError(f"{bundle_dir}: not an rsz model bundle (no {MANIFEST}); make one with rsz-export")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        version = data.get("format_version", FORMAT_VERSION)
        if type(version) is not int or version != FORMAT_VERSION:
            raise RszError(f"{path}: bundle format {version!r}, this rsz reads {FORMAT_VERSION}")
        manifest = Manifest.from_dict(data)
        problem = manifest_problem(manifest)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise RszError(f"{path}: malformed manifest ({first_line(err, limit=200)})") from None
    except RecursionError:  # json's parser recurses: arrays or objects nested too deep
        raise RszError(f"{path}: malformed manifest (nested too deep)") from None
    if problem:
        raise RszError(f"{path}: malformed manifest ({problem})")
    used = used_files(manifest)
    for name in sorted(set(manifest.files) | set(used)):
        bundle_path(bundle_dir, name)
    unlisted = [name for name in used if name not in manifest.files]
    if unlisted:
        raise RszError(
            f"{path}: {unlisted[0]} is used by the bundle but not listed (with its sha256) in files"
        )
    if verify:
        verify_files(bundle_dir, manifest)
    check_external_data(bundle_dir, manifest)
    return manifest


def onnx_files(manifest: Manifest) -> list[str]:
    """The ONNX graphs of the bundle: one per role, and the FP16 / INT8 variants."""
    names = [graph.onnx for graph in manifest.graphs.values()]
    for by_precision in manifest.extra.get("variants", {}).values():
        names += by_precision.values()
    return sorted(set(names))


def check_external_data(bundle_dir: Path, manifest: Manifest) -> None:
    """Every external-data file a graph names (ONNX Runtime opens it beside the graph) must be inside the
    bundle and listed in `files`, so it is hash-checked like the graph itself."""
    from rsz_infer.onnx_external import external_data_locations

    where = bundle_dir / MANIFEST
    for name in onnx_files(manifest):
        graph_file = bundle_path(bundle_dir, name)
        if not graph_file.is_file():
            continue  # a missing graph fails where it is loaded (or in verify_files), with its name
        for location in external_data_locations(graph_file):
            data_name = str(PurePosixPath(name).parent / location)  # relative to the graph's folder
            try:
                bundle_path(bundle_dir, data_name)
            except RszError as err:
                raise RszError(f"{err} (external data of {name})") from None
            if data_name not in manifest.files:
                raise RszError(
                    f"{where}: {data_name} (external data of {name}) is not listed (with its sha256) in files"
                )


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


def used_files(manifest: Manifest) -> list[str]:
    """Every file rsz reads from the bundle: graphs, engines + sidecars, the tokenizer of a text graph."""
    names = []
    for graph in manifest.graphs.values():
        names.append(graph.onnx)
        for engine in graph.engines:
            names += [engine, engine + ".json"]
    for by_precision in manifest.extra.get("variants", {}).values():  # FP16 / INT8 graphs of a role
        names += by_precision.values()
    names += manifest.extra.get("torch", {}).values()  # the run's weights, config and classes (safetensors)
    if "text" in manifest.graphs:
        names.append(manifest.tokenizer)
    return names


def bundle_path(bundle_dir: Path | str, name: str) -> Path:
    """The path of a file named by the manifest; RszError unless it stays inside the bundle folder.

    Refused: empty names, absolute paths (POSIX or Windows), any `..` part, and names whose resolved path
    (through symlinks) lands outside the folder.
    """
    bundle_dir = Path(bundle_dir)
    where = bundle_dir / MANIFEST
    if not isinstance(name, str) or not name or "\0" in name:
        raise RszError(f"{where}: file name {name!r} is not a file name")
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in windows.parts:
        raise RszError(f"{where}: {name!r} points outside the bundle (absolute or '..' paths are refused)")
    full = bundle_dir / name
    if not full.resolve().is_relative_to(bundle_dir.resolve()):
        raise RszError(f"{where}: {name!r} is a link that points outside the bundle")
    return full


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def manifest_problem(m: Manifest) -> str | None:
    """What is wrong with the manifest's values (types and ranges), or None when they are usable."""
    p = m.preprocess
    checks = [
        (
            isinstance(m.model_kind, str) and m.model_kind in MODEL_KINDS,
            f"model_kind {m.model_kind!r} is none of {', '.join(MODEL_KINDS)}",
        ),
        (isinstance(m.rsz_version, str), "rsz_version must be a string"),
        (
            type(p.size) is int and 1 <= p.size <= MAX_INPUT_PX,
            f"preprocess.size must be a positive integer up to {MAX_INPUT_PX}",
        ),
        (len(p.mean) == 3 and all(_is_number(v) for v in p.mean), "preprocess.mean must be 3 numbers"),
        (
            len(p.std) == 3 and all(_is_number(v) and v > 0 for v in p.std),
            "preprocess.std must be 3 numbers above zero",
        ),
        (
            isinstance(p.resize, str) and p.resize in RESIZE_FILTERS,
            f"preprocess.resize {p.resize!r:.60} is none of {', '.join(RESIZE_FILTERS)}",
        ),
        (p.band_order == "RGB" and p.layout == "NCHW", "preprocess: RGB NCHW"),
        (isinstance(m.graphs, dict) and "image" in m.graphs, "graphs must hold an 'image' graph"),
        (
            m.class_embedding in CLASS_EMBEDDINGS,
            f"class_embedding must be one of {', '.join(CLASS_EMBEDDINGS)}",
        ),
        (m.scoring_rule in SCORING_RULES, f"scoring_rule must be one of {', '.join(SCORING_RULES)}"),
        (_is_number(m.logit_scale) and m.logit_scale > 0, "logit_scale must be a number above zero"),
        (type(m.embedding_dim) is int and m.embedding_dim >= 1, "embedding_dim must be a positive integer"),
        (_is_str_list(m.seen_classes), "seen_classes must be a list of names"),
        (_is_number(m.seen_calibration), "seen_calibration must be a number"),
        (
            isinstance(m.seen_descriptions, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in m.seen_descriptions.items()),
            "seen_descriptions must map class names to strings",
        ),
        (isinstance(m.tokenizer, str), "tokenizer must be a file name"),
        (
            type(m.max_text_length) is int and m.max_text_length >= 2,
            "max_text_length must be an integer >= 2",
        ),
        (_is_str_list(m.attribute_names) and _is_str_list(m.attribute_phrases), "attributes must be strings"),
        (_is_number(m.phrase_ridge) and m.phrase_ridge >= 0, "phrase_ridge must be a number >= 0"),
        (isinstance(m.description_clauses, bool), "description_clauses must be true or false"),
        (
            _is_number(m.hubness_penalty) and 0 <= m.hubness_penalty <= MAX_HUBNESS_PENALTY,
            f"hubness_penalty must be a number from 0 to {MAX_HUBNESS_PENALTY} (cosine units)",
        ),
        (
            type(m.hubness_neighbours) is int and m.hubness_neighbours >= 1,
            "hubness_neighbours must be a positive integer",
        ),
        (
            isinstance(m.trained_class_embeddings, list)
            and all(
                isinstance(row, list) and len(row) == m.embedding_dim and all(_is_number(v) for v in row)
                for row in m.trained_class_embeddings
            ),
            "trained_class_embeddings must be rows of embedding_dim numbers",
        ),
        (
            not m.hubness_penalty
            or (m.scoring_rule == "cosine" and len(m.trained_class_embeddings) == len(m.seen_classes) > 0),
            "hubness_penalty needs scoring_rule cosine and one trained_class_embeddings row per seen class",
        ),
        (
            m.gsd is None or (_is_number(m.gsd) and m.gsd > 0),
            "gsd must be null or metres per pixel above zero",
        ),
        (
            _is_str_list(m.prompt_templates) and all(t.count("{}") == 1 for t in m.prompt_templates),
            "prompt_templates must be strings with one {} each",
        ),
        (
            m.class_embedding != "templates" or bool(m.prompt_templates),
            "class_embedding 'templates' needs prompt_templates",
        ),
        (
            isinstance(m.files, dict) and all(isinstance(v, str) and len(v) == 64 for v in m.files.values()),
            "files must map file names to sha256 hex digests",
        ),
        (isinstance(m.extra, dict), "extra must be an object"),
        (
            isinstance(m.extra, dict)
            and isinstance(m.extra.get("variants", {}), dict)
            and all(
                isinstance(v, dict) and all(isinstance(n, str) for n in v.values())
                for v in m.extra.get("variants", {}).values()
            )
            and isinstance(m.extra.get("torch", {}), dict)
            and all(isinstance(n, str) for n in m.extra.get("torch", {}).values()),
            "extra.variants and extra.torch must map names to file names",
        ),
    ]
    for ok, problem in checks:
        if not ok:
            return problem
    for role, g in m.graphs.items():
        tensors = g.inputs + g.outputs
        if not (isinstance(g.onnx, str) and _is_str_list(g.engines) and isinstance(g.precision, str)):
            return f"graph {role!r}: onnx, precision and engines must be strings"
        if not tensors or not all(
            isinstance(t.name, str)
            and isinstance(t.shape, list)
            and all(isinstance(d, str) or (type(d) is int and d >= 0) for d in t.shape)
            and t.dtype in TENSOR_DTYPES
            for t in tensors
        ):
            return f"graph {role!r}: tensors need a name, a shape of sizes or axis names and a dtype"
    if not isinstance(m.text_prompt, str):
        return "text_prompt must be a string"
    try:
        m.text_prompt.format(name="", description="")
    except (KeyError, IndexError, ValueError) as err:
        reason = first_line(err, limit=200)
        return f"text_prompt {m.text_prompt!r} takes only {{name}} and {{description}} ({reason})"
    return None


def verify_files(bundle_dir: Path, manifest: Manifest) -> None:
    for name, digest in manifest.files.items():
        f = bundle_path(bundle_dir, name)
        if not f.is_file():
            raise RszError(f"{f}: listed in the manifest but missing")
        if sha256_file(f) != digest:
            raise RszError(f"{f}: sha256 does not match the manifest (file changed or corrupted)")
