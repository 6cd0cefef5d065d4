"""Label outputs: a crash-safe run log, then CSV / JSONL / GeoJSON (+ errors.csv, class-index GeoTIFF).

While a run goes, every finished tile (labeled or skipped) is one JSON line appended to `<out>.part`
and fsync'd per batch, so a killed run loses at most the batch in flight and `--resume` knows exactly
what is done. At the end (or on Ctrl-C) the requested format is rendered from the log into a temporary
file and renamed over the output: the output file is always complete and valid. The log is removed
once the run has finished every tile.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

from rsz_infer.errors import RszError

FORMATS = (".csv", ".jsonl", ".geojson")


def output_format(out: Path) -> str:
    suffix = out.suffix.lower()
    if suffix == ".json":
        suffix = ".geojson" if out.name.lower().endswith(".geo.json") else suffix
    if suffix not in FORMATS:
        raise RszError(f"--out {out}: unknown format {suffix!r}; use .csv, .jsonl or .geojson")
    return suffix


def part_path(out: Path) -> Path:
    return out.with_name(out.name + ".part")


def errors_path(out: Path) -> Path:
    return out.with_name(out.stem + ".errors.csv")


def atomic_write(path: Path, text: str) -> None:
    """Write a temporary file beside the target, fsync, rename: readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunLog:
    """Append-only log of finished tiles, one JSON object per line; the first line describes the run."""

    def __init__(self, out: Path, header: dict, resume: bool) -> None:
        self.out = out
        self.path = part_path(out)
        self.done: set[str] = set()
        try:
            self._open(header, resume)
        except OSError as err:
            raise RszError(f"{self.path}: cannot write the run log ({err.strerror})") from None

    def _open(self, header: dict, resume: bool) -> None:
        out = self.out
        if resume and self.path.is_file():
            self._reopen(header)
        else:
            if resume and out.exists():
                raise RszError(f"{out}: already complete (no {self.path.name} to resume); delete it to rerun")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "w", encoding="utf-8")
            self._write([{"run": header}])

    def _reopen(self, header: dict) -> None:
        complete_bytes = 0
        first = None
        with open(self.path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break  # the line being written when the run died
                try:
                    record = json.loads(raw)
                except json.JSONDecodeError:
                    break
                complete_bytes += len(raw)
                if first is None:
                    first = record.get("run")
                elif "tile" in record:
                    self.done.add(record["tile"])
        if first != header:
            raise RszError(
                f"{self.path}: made with another model, class file or settings; delete it to start over"
            )
        self._file = open(self.path, "r+", encoding="utf-8")
        self._file.truncate(complete_bytes)
        self._file.seek(complete_bytes)

    def append(self, records: list[dict]) -> None:
        self._write(records)
        self.done.update(r["tile"] for r in records)

    def _write(self, records: list[dict]) -> None:
        self._file.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def records(self) -> Iterator[dict]:
        """Every tile record once (the last one wins), in the order they finished."""
        latest: dict[str, dict] = {}
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                if "tile" in record:
                    latest.pop(record["tile"], None)
                    latest[record["tile"]] = record
        return iter(latest.values())


# ---------------------------------------------------------------- rendering


def _window_text(record: dict) -> str:
    return ",".join(map(str, record["window"])) if record.get("window") else ""


def render_csv(records: list[dict], top_k: int) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["tile", "path", "window"]
    for i in range(1, top_k + 1):
        header += [f"label_{i}", f"score_{i}"]
    writer.writerow(header + ["preprocess"])
    for r in records:
        row = [r["tile"], r["path"], _window_text(r)]
        for i in range(top_k):
            if i < len(r["labels"]):
                row += [r["labels"][i], f"{r['scores'][i]:.6f}"]
            else:
                row += ["", ""]
        writer.writerow(row + [r["rule"]])
    return buf.getvalue()


def _public(record: dict) -> dict:
    keys = ("tile", "path", "window", "labels", "scores", "rule", "footprint")
    return {k: record[k] for k in keys if record.get(k) is not None}


def render_jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(_public(r)) + "\n" for r in records)


def render_geojson(records: list[dict]) -> str:
    features = []
    for r in records:
        props = {k: v for k, v in _public(r).items() if k != "footprint"}
        props["label"] = r["labels"][0]
        props["score"] = r["scores"][0]
        features.append({"type": "Feature", "geometry": r.get("footprint"), "properties": props})
    return json.dumps({"type": "FeatureCollection", "features": features})


def render_errors(records: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["tile", "reason"])
    for r in records:
        writer.writerow([r["tile"], r["skipped"]])
    return buf.getvalue()


def write_outputs(log: RunLog, out: Path, top_k: int, class_names: list[str], class_map: Path | None) -> dict:
    """Render the requested output (and errors.csv, class map) from the log; returns counts."""
    labeled, errors, nodata = [], [], 0
    for r in log.records():
        if "labels" in r:
            labeled.append(r)
        elif r.get("nodata"):
            nodata += 1
        else:
            errors.append(r)
    fmt = output_format(out)
    if fmt == ".csv":
        atomic_write(out, render_csv(labeled, top_k))
    elif fmt == ".jsonl":
        atomic_write(out, render_jsonl(labeled))
    else:
        atomic_write(out, render_geojson(labeled))
    if errors:
        atomic_write(errors_path(out), render_errors(errors))
    elif errors_path(out).exists():
        errors_path(out).unlink()  # from an earlier run of the same output
    if class_map is not None:
        write_class_maps(labeled, class_map, class_names)
    return {"labeled": len(labeled), "errors": len(errors), "nodata": nodata}


def write_class_maps(records: list[dict], target: Path, class_names: list[str]) -> list[Path]:
    """Top-1 class index per scene pixel, in each scene's own grid (windows written one at a time).

    One scene: `target` itself; several: `<target stem>.<scene stem>.tif` beside it. Pixels of skipped
    windows are nodata (255, or 65535 for more than 254 classes); the class names are in the tags.
    """
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    by_scene: dict[str, list[dict]] = {}
    for r in records:
        if r.get("window"):
            by_scene.setdefault(r["path"], []).append(r)
    if not by_scene:
        raise RszError(f"--class-map {target}: no GeoTIFF scene among the inputs")
    dtype, nodata = ("uint8", 255) if len(class_names) < 255 else ("uint16", 65535)
    written = []
    for scene_path, scene_records in by_scene.items():
        path = (
            target if len(by_scene) == 1 else target.with_name(f"{target.stem}.{Path(scene_path).stem}.tif")
        )
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.tif")
        with rasterio.open(scene_path) as scene:
            profile = {
                "driver": "GTiff", "width": scene.width, "height": scene.height, "count": 1, "dtype": dtype,
                "crs": scene.crs, "transform": scene.transform, "nodata": nodata, "compress": "deflate",
                "tiled": True, "blockxsize": 256, "blockysize": 256,
            }  # fmt: skip
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.update_tags(classes=json.dumps(class_names))
            for r in scene_records:
                col, row, width, height = r["window"]
                block = np.full((height, width), r["class_index"], dtype=dtype)
                dst.write(block, 1, window=Window(col, row, width, height))
        os.replace(tmp, path)
        written.append(path)
    return written
