"""A training run on disk (runs/NAME) and how to load it back.

config.yaml        the full RunConfig (model kind included)
model.safetensors  weights of the best epoch on validation, or the last (train.select_last_epoch)
classes.json       class names, descriptions, seen (training) / unseen / val lists, the class
                   semantics used, the TaskInfo the model was built with, the GZSL calibration
metrics.jsonl      one line per epoch
report.json        final test scores (scored once, after selection on validation)
last.pt            resume state (weights, optimizer, scheduler, epoch)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from rsz_infer.errors import RszError, first_line
from rsz_infer.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec
from rsz_train.config import RunConfig, config_from_dict, model_config_class
from rsz_train.models.base import ClassSemantics, RszModel, TaskInfo
from rsz_train.models.registry import create_model

CONFIG = "config.yaml"
WEIGHTS = "model.safetensors"
CLASSES = "classes.json"
METRICS = "metrics.jsonl"
REPORT = "report.json"
LAST = "last.pt"
SELECTION = "selection"  # --protocol paper's sub-run folder (it chooses epochs and lambda on validation)


@dataclass
class RunInfo:
    """Everything about a run that export and evaluation need besides the weights."""

    run_dir: Path
    kind: str
    config: RunConfig
    class_names: list[str]  # all classes of the benchmark
    seen: list[str]  # the classes the model was trained on (GZSL calibration applies to them)
    unseen: list[str]
    val: list[str]
    semantics: ClassSemantics  # of all classes, in class_names order
    seen_calibration: float  # calibrated-stacking lambda chosen on the validation split
    preprocess: PreprocessSpec
    task: TaskInfo
    semantics_source: str = "text"  # "text" (descriptions) | "matrix" (ground truth) | "images" (dual enc.)
    # The text route's phrase ridge (rsz_infer.semantics.attribute_vectors); runs written before the
    # option have none in classes.json and used plain cosines, whatever today's default is.
    phrase_ridge: float = 0.0
    description_clauses: bool = False  # the text route clause by clause (classes.json; older runs: no)
    report: dict = field(default_factory=dict)  # report.json, empty while the run is unfinished


def preprocess_spec(model: RszModel, image_size: int) -> PreprocessSpec:
    """The run's preprocessing: size from the config, mean/std from the model (CLIP and geoembed
    backbones set image_mean/image_std; ImageNet statistics otherwise)."""
    mean = tuple(float(v) for v in getattr(model, "image_mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in getattr(model, "image_std", IMAGENET_STD))
    return PreprocessSpec(size=image_size, mean=mean, std=std)  # type: ignore[arg-type]


_TEMPORARY = re.compile(r"^\.(.+)\.tmp(\d+)$")  # write_atomic/save_weights/save_resume_state's names


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Remove the run folder's own temporary files (.NAME.tmp<PID>) left by a process killed mid-write:
    those whose PID is not alive (a live one may be another process writing now). Returns them."""
    removed = []
    for path in sorted(run_dir.glob(".*.tmp*")) if run_dir.is_dir() else []:
        match = _TEMPORARY.match(path.name)
        if not match or not path.is_file() or _pid_alive(int(match.group(2))):
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process writes one file at a time and never leaves one while it runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's process, or unknowable: leave its file
    return True


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def save_weights(model: RszModel, path: Path, kind: str) -> None:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    # written by Python, as the run's other files: safetensors' save_file makes its files owner-only (0600),
    # so the weights alone were unreadable to a colleague exporting a run from a shared folder
    tmp.write_bytes(save(state, metadata={"kind": kind}))
    tmp.replace(path)


def classes_record(
    names: list[str],
    seen: list[str],
    unseen: list[str],
    val: list[str],
    semantics: ClassSemantics,
    semantics_source: str,
    task: TaskInfo,
    preprocess: PreprocessSpec,
    seen_calibration: float,
) -> dict:
    return {
        "class_names": names,
        "descriptions": semantics.descriptions,
        "seen": seen,
        "unseen": unseen,
        "val": val,
        "semantics_source": semantics_source,
        "attributes": np.asarray(semantics.attributes, dtype=np.float32).tolist(),
        "sentence": np.asarray(semantics.sentence, dtype=np.float32).tolist(),
        "glove": None if semantics.glove is None else np.asarray(semantics.glove, dtype=np.float32).tolist(),
        "task": dataclasses.asdict(task),
        "preprocess": preprocess.to_dict(),
        "seen_calibration": float(seen_calibration),
    }


# Runs written before the calibration lambda had one name keep it as "calibration" (selection/report.json,
# the "val" scores of metrics.jsonl and report.json) or "lambda" (their "gzsl" scores); they still load.
OLD_SEEN_CALIBRATION_KEYS = ("calibration", "lambda")


def read_seen_calibration(record: dict) -> float:
    """The GZSL calibration lambda of a run's JSON record: "seen_calibration", or an old run's name for it."""
    for key in ("seen_calibration", *OLD_SEEN_CALIBRATION_KEYS):
        if key in record:
            return float(record[key])
    raise KeyError("seen_calibration")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise RszError(f"{path}: missing (is {path.parent} a finished rsz-train run?)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RszError(f"{path}: not valid JSON ({err})") from None


def read_config(run_dir: Path | str, kind: str | None = None) -> RunConfig:
    """A run's config.yaml as a RunConfig; `kind`, when given, must match the run's model kind."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG
    if not config_path.is_file():
        raise RszError(f"{config_path}: missing (is {run_dir} an rsz-train run?)")
    try:
        raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        raise RszError(f"{config_path}: not valid YAML") from None
    if not isinstance(raw, dict) or "kind" not in raw:
        raise RszError(f"{config_path}: no model kind in the config")
    run_kind = str(raw["kind"])
    if kind is not None and run_kind != kind:
        raise RszError(f"{run_dir}: is a {run_kind} run, not {kind}")
    model = raw.get("model")
    if isinstance(model, dict):
        # a setting added after the run was written: the run trained without it, whatever today's default
        older = getattr(model_config_class(run_kind), "absent_in_older_runs", {})
        raw = {**raw, "model": {**older, **model}}
    return config_from_dict(run_kind, raw, str(config_path))


def training_progress(run_dir: Path, config: RunConfig, report: dict) -> dict:
    """How far the run's training went: finished, epochs_done, epochs, best_epoch (1-based; None when no
    epoch was kept). report.json is written only after the last epoch and the test scores, so a run without
    it was stopped (a kill; `rsz-train --resume` continues it): its epochs done are metrics.jsonl's epoch
    lines (one cut short by the kill does not count), its best epoch the last line marked best, the one
    model.safetensors holds."""
    epochs = int(report.get("epochs", config.train.epochs))
    if report:
        return {
            "finished": True,
            "epochs_done": epochs,
            "epochs": epochs,
            "best_epoch": report.get("best_epoch"),
        }
    done, best = 0, None
    metrics = run_dir / METRICS
    for line in metrics.read_text(encoding="utf-8").splitlines() if metrics.is_file() else []:
        try:
            record = json.loads(line)
            epoch = int(record["epoch"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        done = max(done, epoch)
        best = epoch if record.get("best") else best
    return {"finished": False, "epochs_done": done, "epochs": epochs, "best_epoch": best}


def split_runs(run_dir: Path) -> list[str]:
    """The per-split runs (OUT/<split name>/) of a `--split-id all` run folder, in split id order."""
    names = [
        p.name for p in run_dir.iterdir() if p.is_dir() and p.name != SELECTION and (p / CONFIG).is_file()
    ]
    # gzsl_6_5split_2 before gzsl_6_5split_10, as the trainer takes them
    return sorted(names, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])


def load_run(run_dir: Path | str, kind: str | None = None, device: str = "cpu") -> tuple[RszModel, RunInfo]:
    """The best checkpoint of a run (eval mode, on `device`) and its RunInfo.

    `kind`, when given, must match the run's model kind.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RszError(f"{run_dir}: run folder not found")
    splits = split_runs(run_dir) if not (run_dir / CLASSES).is_file() else []
    if splits:  # --split-id all's OUT: its report averages the splits; no model of its own
        names = splits[0] if len(splits) == 1 else f"{splits[0]}, ..., {splits[-1]}"
        # (load_run serves rsz-export and rsz-bench alike: both name the run with --run)
        raise RszError(
            f"{run_dir} holds one run per split ({names}): pass one of them, e.g. --run {run_dir / splits[0]}"
        )
    config = read_config(run_dir, kind)
    run_kind, config_path = config.kind, run_dir / CONFIG
    record = _read_json(run_dir / CLASSES)
    report_path = run_dir / REPORT
    report = _read_json(report_path) if report_path.is_file() else {}

    try:
        task = TaskInfo(**record["task"])
        glove = record.get("glove")
        semantics = ClassSemantics(
            names=list(record["class_names"]),
            descriptions=list(record["descriptions"]),
            attributes=np.asarray(record["attributes"], dtype=np.float32),
            sentence=np.asarray(record["sentence"], dtype=np.float32),
            glove=None if glove is None else np.asarray(glove, dtype=np.float32),
        )
        info = RunInfo(
            run_dir=run_dir,
            kind=run_kind,
            config=config,
            class_names=list(record["class_names"]),
            seen=list(record["seen"]),
            unseen=list(record["unseen"]),
            val=list(record["val"]),
            semantics=semantics,
            seen_calibration=float(report.get("seen_calibration", record["seen_calibration"])),
            preprocess=PreprocessSpec.from_dict(record["preprocess"]),
            task=task,
            semantics_source=str(record.get("semantics_source", "text")),
            phrase_ridge=float(record.get("phrase_ridge", 0.0)),
            description_clauses=bool(record.get("description_clauses", False)),
            report=report,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise RszError(f"{run_dir / CLASSES}: malformed ({err})") from None

    model = create_model(run_kind, config.model, task)
    weights = run_dir / WEIGHTS
    if not weights.is_file():
        raise RszError(f"{weights}: missing (the run has not finished a validated epoch yet)")
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(weights), framework="pt") as f:
            saved_kind = (f.metadata() or {}).get("kind")
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise RszError(f"{weights}: not a readable safetensors file ({err})") from None
    if saved_kind is not None and saved_kind != run_kind:
        raise RszError(f"{weights}: checkpoint of a {saved_kind} model, but {config_path} says {run_kind}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        why = state_dict_misfit(model.state_dict(), state) or first_line(err, "shape mismatch")
        raise RszError(f"{weights}: does not fit the {run_kind} model of {config_path} ({why})") from None
    return model.to(device).eval(), info


def state_dict_misfit(expected: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> str:
    """The first tensor by which `saved` misses the model's `expected` state dict, named, with how many more
    ("" when none): torch's own message starts with a line that names none ("Error(s) in loading ...")."""
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    wrong = [k for k in expected if k in saved and saved[k].shape != expected[k].shape]

    def more(keys: list[str]) -> str:
        return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""

    parts = []
    if missing:
        parts.append(f"it lacks {missing[0]}{more(missing)}")
    if wrong:
        k = wrong[0]
        parts.append(f"its {k} is {list(saved[k].shape)}, the model's {list(expected[k].shape)}{more(wrong)}")
    if unexpected:
        parts.append(f"it has {unexpected[0]}, which the model has not{more(unexpected)}")
    return "; ".join(parts)


RESUME_KEYS = ("epoch", "model", "optimizer", "scheduler", "scaler", "best_score", "best_epoch")


def load_resume_state(path: Path, device: torch.device | str = "cpu") -> dict:
    """last.pt read with torch's weights-only unpickler: tensors, numbers and containers, never code.

    A run folder may come from elsewhere; weights_only=True refuses any pickled object that is not
    plain data, so a crafted last.pt cannot run anything.
    """
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note on pickle protocols: the error says it all
            state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:  # torch's advice (weights_only=False) is exactly what must not happen
        raise RszError(
            f"{path}: not a plain resume state, refused (holds pickled objects, not only data)"
        ) from None
    except Exception as err:  # RuntimeError/EOFError for damaged files
        # rsz-train replaces last.pt atomically, so a cut one was damaged afterwards (a copy, a full disk):
        # there is no older state to fall back on, and a silent restart would throw the epochs away
        reason = first_line(err, limit=200).split(". ")[0]  # torch's first sentence; the rest is advice
        raise RszError(
            f"{path}: damaged or incomplete, cannot resume from it ({reason}); restore it from a copy, "
            "or train again without --resume into another --out"
        ) from None
    if not isinstance(state, dict) or any(key not in state for key in RESUME_KEYS):
        raise RszError(f"{path}: not an rsz resume state (needs {', '.join(RESUME_KEYS)})")
    return state


def save_resume_state(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    tmp.replace(path)
