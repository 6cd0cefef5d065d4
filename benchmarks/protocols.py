"""Today's protocol beside --protocol paper: a JSON and a markdown table from finished run folders.

    python benchmarks/protocols.py RUNS --out protocols.json

RUNS holds one folder per run named <kind>_<protocol>_s<seed> (report.json inside), as made by
`rsz-train KIND --data DIR --config seedS.yaml [--protocol paper] --out RUNS/<kind>_<protocol>_s<seed>`.
Each row is one (kind, protocol): mean and population std over the seeds of test ZSL, GZSL U/S/H and
retrieval mR, with the epochs and lambda each run selected on validation.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

NAME = re.compile(r"^(?P<kind>[a-z]+)_(?P<protocol>rsz|paper)_s(?P<seed>\d+)$")


def collect(runs: Path) -> list[dict]:
    rows = []
    for folder in sorted(runs.iterdir()):
        match = NAME.match(folder.name)
        if not match or not (folder / "report.json").is_file():
            continue
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        test = report["test"]
        rows.append(
            {
                **match.groupdict(),
                "zsl": test.get("zsl"),
                "U": test.get("gzsl", {}).get("U"),
                "S": test.get("gzsl", {}).get("S"),
                "H": test.get("gzsl", {}).get("H"),
                "mR": test.get("retrieval", {}).get("mR"),
                "best_epoch": report.get("best_epoch"),
                "seen_calibration": report.get("seen_calibration"),
                "seconds": report.get("seconds"),
                "selection": report.get("selection"),
            }
        )
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["kind"], row["protocol"]), []).append(row)
    out = []
    for (kind, protocol), members in sorted(groups.items()):
        entry = {"kind": kind, "protocol": protocol, "seeds": [int(m["seed"]) for m in members]}
        for key in ("zsl", "U", "S", "H", "mR"):
            values = [m[key] for m in members if m[key] is not None]
            if values:
                entry[key] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}
        entry["best_epochs"] = [m["best_epoch"] for m in members]
        out.append(entry)
    return out


def markdown(summary: list[dict]) -> str:
    lines = [
        "| model | protocol | seeds | test ZSL % | GZSL U % | GZSL S % | GZSL H % | mR | epochs kept |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(entry: dict, key: str, scale: float) -> str:
        if key not in entry:
            return "-"
        v = entry[key]
        return f"{scale * v['mean']:.1f} +- {scale * v['std']:.1f}"

    for e in summary:
        lines.append(
            f"| {e['kind']} | {e['protocol']} | {','.join(map(str, e['seeds']))} | {cell(e, 'zsl', 100)} | "
            f"{cell(e, 'U', 100)} | {cell(e, 'S', 100)} | {cell(e, 'H', 100)} | {cell(e, 'mR', 1)} | "
            f"{','.join(map(str, e['best_epochs']))} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = collect(args.runs)
    summary = summarise(rows)
    args.out.write_text(json.dumps({"runs": rows, "summary": summary}, indent=2), encoding="utf-8")
    print(markdown(summary))


if __name__ == "__main__":
    main()
