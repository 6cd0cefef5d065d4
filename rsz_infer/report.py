"""A self-contained HTML gallery of tiles (thumbnails inlined as base64 JPEG): opens in any browser,
can be mailed or attached as one file."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from rsz_infer.errors import RszError
from rsz_infer.images import TileError, TileOptions, decode_tile, local_file, tile_from_record
from rsz_infer.outputs import atomic_write, csv_text_read, polygons
from rsz_infer.trust import tile_is_the_embedded_one

THUMB_PX = 160
GALLERY_MAX = 500  # tiles in a labeling gallery: the page stays a few MB


@dataclass
class GalleryItem:
    title: str  # first line under the thumbnail (e.g. "#1  0.873")
    tile: dict  # an index or label row: tile, path, window (footprint optional)
    lines: list[str] = field(default_factory=list)  # labels, scores, footprint ...
    overlays: list[tuple[str, list]] = field(default_factory=list)  # (caption, attention map h x w) each
    # index rows: show the file only while it is the one the index embedded (see rsz_infer.trust)
    check_file: bool = False


def thumbnail_data_uri(rgb: np.ndarray, size: int = THUMB_PX) -> str:
    im = Image.fromarray(rgb)
    im.thumbnail((size, size), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _embedded_file(row: dict) -> str | None:
    """The file an index row's thumbnail is read from: its path (absolute since rows are written so), or
    else, when the input was a relative path, that spelling (the tile id less its window) read from the
    current folder: a project folder moved or copied whole, searched from its root. Either only while its
    sha256 is the one the index recorded; None when neither is."""
    typed = row["tile"].rsplit("@", 1)[0] if row.get("window") else row["tile"]
    local = local_file(typed)
    relative = local is not None and not os.path.isabs(local)
    for path in dict.fromkeys([row["path"], typed] if relative else [row["path"]]):
        if tile_is_the_embedded_one(row | {"path": path}):
            return path
    return None


def _decoded(tile: dict, options: TileOptions, check_file: bool = False) -> np.ndarray | None:
    path = _embedded_file(tile) if check_file else tile["path"]
    if path is None:
        return None  # a row naming another (or a remote) file: never embed what the index did not make
    try:
        rebuilt = tile_from_record(path, tile.get("window"), options)
        rgb, _ = decode_tile(rebuilt, options)
    except (TileError, OSError, ValueError):  # a moved or damaged file only loses its thumbnail
        return None
    return rgb


def heat_overlay(rgb: np.ndarray, attention: np.ndarray, size: int = THUMB_PX) -> np.ndarray:
    """The tile with an attention map over it as a heat map (black-red-yellow, opacity by attention)."""
    im = Image.fromarray(rgb)
    im.thumbnail((size, size), Image.BILINEAR)
    base = np.asarray(im, np.float32)
    heat = np.asarray(
        Image.fromarray(np.asarray(attention, np.float32), "F").resize(im.size, Image.BILINEAR), np.float32
    )
    heat = (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-12)
    colour = np.stack([np.clip(3 * heat, 0, 1), np.clip(3 * heat - 1, 0, 1), np.clip(3 * heat - 2, 0, 1)], -1)
    alpha = 0.15 + 0.6 * heat[..., None]
    return (base * (1 - alpha) + 255 * colour * alpha).astype(np.uint8)


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.3em}.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;width:176px;font-size:12px}
.card img{width:160px;height:160px;object-fit:contain;background:#eee;display:block}
.note{color:#a40}
.missing{width:160px;height:160px;background:#eee;color:#888;display:flex;align-items:center;justify-content:center}
.quicklook{display:inline-block;margin:0 1em 1em 0}.quicklook img{max-width:100%}
.overlay{margin:4px 0 0 0}.overlay figcaption{color:#a40}
.title{font-weight:600;margin-top:4px}.path{color:#666;word-break:break-all}
"""


def write_label_gallery(
    path: Path, heading: str, records: list[dict], options: TileOptions, class_maps: list[Path]
) -> tuple[int, int]:
    """The labeling gallery: class maps' quicklooks, then the first GALLERY_MAX tiles. Returns how many tiles
    it shows and how many of them have no preview (write_gallery)."""
    rows = records[:GALLERY_MAX]
    items = [
        GalleryItem(r["labels"][0], r, label_lines(r) + footprint_line(r), _attention_overlays(r))
        for r in rows
    ]
    pictures = [(m.name, m.with_suffix(".png")) for m in class_maps if m.with_suffix(".png").is_file()]
    missing = write_gallery(path, f"{heading} ({len(rows)} tiles)", items, options, pictures)
    return len(rows), missing


def _attention_overlays(record: dict) -> list[tuple[str, list]]:
    """--explain: (attribute and score, attention map) of the tile's top attributes."""
    pairs = zip(record.get("attributes") or [], record.get("attention") or [])
    return [(f"{name} {score:.2f}", attention) for (name, score), attention in pairs]


def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _text(text: str) -> str:
    """HTML-escaped and valid UTF-8: the bytes of a non-UTF-8 file name show as U+FFFD."""
    return html.escape(text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))


def write_gallery(
    path: Path | str,
    heading: str,
    items: list[GalleryItem],
    options: TileOptions | None = None,
    pictures: list[tuple[str, Path]] | None = None,
) -> int:
    """Write the gallery page atomically; `pictures` (title, PNG) go on top. Returns how many tiles have no
    preview: each has a "no preview" card, and the page says how many under its heading."""
    path = Path(path)
    options = options or TileOptions()
    top = "".join(
        f'<figure class="quicklook"><img src="{_png_data_uri(png)}" alt="class map quicklook">'
        f"<figcaption>{_text(title)}</figcaption></figure>"
        for title, png in pictures or []
    )
    cards = []
    missing = 0
    for item in items:
        rgb = _decoded(item.tile, options, item.check_file)
        missing += rgb is None
        picture = (
            f'<img src="{thumbnail_data_uri(rgb)}" alt="">'
            if rgb is not None
            else '<div class="missing">no preview</div>'
        )
        if rgb is not None:
            for caption, attention in item.overlays:
                uri = thumbnail_data_uri(heat_overlay(rgb, np.asarray(attention)))
                picture += (
                    f'<figure class="overlay"><img src="{uri}" alt="attention of {_text(caption)}">'
                    f"<figcaption>{_text(caption)}</figcaption></figure>"
                )
        lines = "".join(f"<div>{_text(line)}</div>" for line in item.lines)
        cards.append(
            f'<div class="card">{picture}<div class="title">{_text(item.title)}</div>{lines}'
            f'<div class="path">{_text(item.tile["tile"])}</div></div>'
        )
    note = f'<p class="note">{len(items)} tiles, {missing_previews(missing)}</p>' if missing else ""
    page = (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{_text(heading)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{_text(heading)}</h1>{note}{top}"
        f'<div class="grid">{"".join(cards)}</div></body></html>\n'
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, page)
    return missing


def missing_previews(missing: int) -> str:
    """What a gallery's page and summary line say of its tiles without a thumbnail."""
    return f"{missing} without a preview (the file is gone, changed or cannot be read)"


def gallery_line(tiles: int, missing: int, path: Path | str) -> str:
    """The summary line's part for a gallery (labeling and search): a card without a picture is easy to miss
    in a long gallery, so the line counts them."""
    why = f", {missing_previews(missing)}" if missing else ""
    return f"gallery of {tiles} tiles{why} -> {path}"


def _from_columns(row: dict) -> dict:
    """A label row from the shared output columns (label_i / score_i, window as "col,row,w,h")."""
    n = sum(1 for k in row if k.startswith("label_"))
    pairs = [(row[f"label_{i}"], row[f"score_{i}"]) for i in range(1, n + 1) if row[f"label_{i}"]]
    window = [int(v) for v in row["window"].split(",")] if row.get("window") else None
    return {
        "tile": row["tile"],
        "path": row["path"],
        "window": window,
        "labels": [p[0] for p in pairs],
        "scores": [float(p[1]) for p in pairs],
        "source_crs": row.get("source_crs") or None,
    }


def _csv_row(row: dict, line: int) -> dict:
    """A CSV row as written (csv_text undone); a row with more or fewer cells than the header is an error
    (csv.DictReader would give a None key or None cells)."""
    if None in row or None in row.values():
        raise ValueError(f"line {line}: not as many cells as the header has columns")
    return {k: csv_text_read(v) for k, v in row.items()}


def read_label_rows(path: Path | str) -> list[dict]:
    """Rows of an rsz-infer labels file (any --out format): tile, path, window, labels, scores, footprint."""
    path = Path(path)
    try:
        rows = _label_rows(path)
        bad = next((i for i, row in enumerate(rows, start=1) if not _is_label_row(row)), None)
        if bad is not None:
            raise ValueError(f"row {bad} is not a label row (tile, labels, scores)")
        return rows
    except (OSError, KeyError, ValueError, TypeError, AttributeError, RecursionError) as err:
        # TypeError, AttributeError: JSON of other shapes; RecursionError: nested too deep for json
        raise RszError(f"{path}: not a readable rsz-infer labels file ({err})") from None


def _label_rows(path: Path) -> list:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return [json.loads(line) for line in f if line.strip()]
    if suffix in (".geojson", ".json"):
        collection = json.loads(path.read_text(encoding="utf-8"))
        return [_from_columns(f["properties"]) | {"footprint": f["geometry"]} for f in collection["features"]]
    if suffix in (".parquet", ".gpkg", ".fgb"):
        return _read_vector_rows(path)
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f)
        return [_from_columns(_csv_row(row, reader.line_num)) for row in reader]


def _is_label_row(row: object) -> bool:
    """What the gallery captions read: a tile id, and labels with their scores."""
    if not isinstance(row, dict):
        return False
    labels, scores = row.get("labels"), row.get("scores")
    return (
        isinstance(row.get("tile"), str)
        and isinstance(labels, list)
        and isinstance(scores, list)
        and len(labels) == len(scores)
        and all(isinstance(v, str) for v in labels)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores)
    )


def _read_vector_rows(path: Path) -> list[dict]:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        names = [n for n in table.column_names if n not in ("geometry", "bbox")]
        columns = {n: table.column(n).to_pylist() for n in names}
    else:
        import pyogrio.raw

        meta, _, _, fields = pyogrio.raw.read(path, read_geometry=False)
        columns = {n: list(v) for n, v in zip(meta["fields"], fields)}
    count = len(next(iter(columns.values()), []))
    return [_from_columns({n: v[i] for n, v in columns.items()}) for i in range(count)]


def load_labels(path: Path | str) -> dict[str, dict]:
    """Tile id -> label row, for gallery captions."""
    return {row["tile"]: row for row in read_label_rows(path)}


def footprint_line(tile: dict) -> list[str]:
    """ "lat, lon" of the footprint's centre, for georeferenced tiles."""
    footprint = tile.get("footprint")
    if not footprint:
        return []
    ring = [p for polygon in polygons(footprint) for p in polygon[0][:-1]]
    lons = [p[0] for p in ring]
    if max(lons) - min(lons) > 180:  # cut at the antimeridian: the centre of the two sides joined
        lons = [x + 360 if x < 0 else x for x in lons]
    lon = (sum(lons) / len(lons) + 180) % 360 - 180
    lat = sum(p[1] for p in ring) / len(ring)
    return [f"{lat:.5f}, {lon:.5f}"]


def label_lines(record: dict | None, top: int = 3) -> list[str]:
    if not record:
        return []
    return [f"{name} {score:.2f}" for name, score in list(zip(record["labels"], record["scores"]))[:top]]
