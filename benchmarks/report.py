"""Benchmark results: one JSON document and one markdown table per run, written atomically.

Every result file carries the machine, the versions, the date and the command that produced it, so a table
pasted into RESULTS.md can always be traced back to how it was measured.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rsz_infer.errors import RszError
from rsz_infer.outputs import atomic_write


def machine_info() -> dict[str, Any]:
    """CPU, core count, OS, Python, the versions of rsz and of the engines this process loaded (versions),
    and (when a GPU is visible to torch) the GPU name."""
    info: dict[str, Any] = {
        "host": platform.node(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "gpu": None,
        "versions": versions(),
    }
    torch = sys.modules.get("torch")  # only asked when already imported: no torch import on edge devices
    if torch is not None and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    # kept at the top level too: results written before "versions" existed had them here
    for name in ("torch", "onnxruntime"):
        if name in info["versions"]:
            info[name] = info["versions"][name]
    return info


def versions() -> dict[str, str]:
    """rsz's version and those of the engines that made the figures: onnxruntime always (every command
    may run it), torch and tensorrt only when this process has imported them (no import on edge devices
    just to say a version), so a version listed is one that ran."""
    import rsz_infer

    found = {"rsz": rsz_infer.__version__}
    try:
        import onnxruntime

        found["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    for name in ("torch", "tensorrt", "tensorrt_rtx"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__version__", None):
            found[name] = str(module.__version__)
    return found


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


COMMAND_ARGS: list[str] = []  # set by rsz_bench.cli; empty when the functions are called from Python


def command_line() -> str:
    import shlex

    if COMMAND_ARGS:
        return shlex.join(["rsz-bench", *COMMAND_ARGS])
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


def atomic_write_text(path: Path, text: str) -> None:
    """Write next to the target and rename, so a reader never sees half a file; the file gets the mode of
    any new file (the umask's), as rsz-infer's outputs do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """rows as a GitHub markdown table; columns are (key, header) pairs."""
    lines = [
        "| " + " | ".join(h for _, h in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(k)) for k, _ in columns) + " |")
    return "\n".join(lines)


def header_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    return (
        f"Machine: {m['cpu']} ({m['cores']} cores){gpu}; {m['os']}; Python {m['python']}\n"
        f"Versions: {', '.join(f'{k} {v}' for k, v in m.get('versions', {}).items()) or 'not recorded'}\n"
        f"Date: {result['date']}\n"
        f"Command: `{result['command']}`\n"
    )


def model_identity(model: str | Path) -> str:
    """What a result is of: a ref: name as given, a bundle by its real path (as typed it is relative to
    wherever the command ran; a link such as models/default is the bundle it points to)."""
    model = str(model)
    return model if model.startswith("ref:") else str(Path(model).resolve())


def check_result_slot(out_dir: Path, stem: str, kind: str, model: str | Path) -> None:
    """out_dir/stem.json may be replaced by a result of the same kind and model only: re-running a command
    refreshes its table, but a/dsva and b/dsva (one folder name) would overwrite each other's figures,
    silently. Checked before the benchmark runs, as outputs.check_out_dir."""
    path = Path(out_dir) / f"{stem}.json"
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        theirs = old.get("model_path") or model_identity(old.get("model") or old["bundle"])
        same = old["kind"] == kind and theirs == model_identity(model)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise RszError(
            f"--out {out_dir}: {path} is there and is not a rsz-bench result; move it, or pass another --out"
        ) from None
    if not same:
        raise RszError(
            f"--out {out_dir}: {path} holds the {old['kind']} result of another model ({theirs}); "
            "pass another --out, or remove that file to replace it"
        )


def write_result(result: dict[str, Any], markdown_body: str, out_dir: Path, stem: str) -> tuple[Path, Path]:
    """Write out_dir/stem.json and out_dir/stem.md (header: machine, versions, date, command; the tables)."""
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    atomic_write_text(json_path, json.dumps(result, indent=2) + "\n")
    atomic_write_text(md_path, f"## {result['title']}\n\n{header_markdown(result)}\n{markdown_body}\n")
    return json_path, md_path


def new_result(kind: str, title: str, **fields: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "title": title,
        "machine": machine_info(),
        "date": now_utc(),
        "command": command_line(),
        **fields,
    }
