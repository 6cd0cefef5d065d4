"""The embedded benchmark: procedural remote-sensing scenes built from visual attributes.

No real remote-sensing data can be fetched where rsz is developed, so this module draws a zero-shot problem
worth solving: 42 scene classes named after UCM / AID / NWPU-RESISC45 categories, each a set of the 46
visual attributes below (ground-cover materials, shapes and structures, layout and density). Every
attribute is one consistent primitive (a texture, a colour, a shape) and a tile draws its class's
attributes with instance variation (position, rotation, scale, counts, colours, illumination, noise, now
and then an attribute of another class), so classes are confusable in pairs yet learnable. Unseen classes
are new combinations of attributes that training classes carry, so zero-shot transfer has to go through
the semantic side. Each tile gets five captions describing its own instance (what, where, how many).

`write_benchmark` writes the layout of docs/DESIGN.md ("Embedded benchmark on disk"), the same layout a
user's real data can take, so one loader (rsz_train.data.formats) serves both:

    DIR/images/<class>/<class>_<NNNN>.png   (class names use underscores: dense_residential)
    DIR/classes.txt  attributes.txt  attribute_matrix.csv  captions.json  synth.json
    DIR/splits/<split>/{seen,unseen,val}.txt and {train,val_seen,val_unseen,test_seen,test_unseen}.txt

Splits: the three seen/unseen ratios of the RSSDIVCS papers (60/10, 50/20, 40/30 of 70 classes) scaled to
42 classes; each carves validation classes (a sixth of the seen side) out of training for model selection:

    zsl_36_6   36 seen (30 train + 6 val), 6 unseen   <- DEFAULT_SPLIT, the 60/10 ratio
    zsl_30_12  30 seen (25 train + 5 val), 12 unseen  (50/20)
    zsl_24_18  24 seen (20 train + 4 val), 18 unseen  (40/30)

Class lists are fixed (chosen once by a seeded search so that every attribute, hence every attribute of
every unseen and val class, is carried by some training class); per-image lists come from
formats.make_split (holdout 0.2 of each training class for val_seen and again for test_seen).

Every tile is drawn from its own seed (seed, class, index), so output bytes do not depend on `workers`.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from rsz_infer.errors import RszError, one_line_errors

GENERATOR_VERSION = 1


@dataclass(frozen=True)
class Attribute:
    name: str
    group: str
    phrase: str


COVER, STRUCTURE, LAYOUT = "colour and material", "shape and structure", "layout and density"

ATTRIBUTES: tuple[Attribute, ...] = (
    # Ground covers: the first of a class fills the tile, others appear as patches (or fill structures).
    Attribute("water", COVER, "dark blue water"),
    Attribute("grass", COVER, "bright green grass"),
    Attribute("trees", COVER, "dark green tree canopy"),
    Attribute("bare_soil", COVER, "brown bare soil"),
    Attribute("sand", COVER, "pale yellow sand"),
    Attribute("snow", COVER, "white snow"),
    Attribute("rock", COVER, "grey rocky ground"),
    Attribute("asphalt", COVER, "dark grey asphalt"),
    Attribute("concrete", COVER, "light grey concrete"),
    Attribute("crops", COVER, "golden crops"),
    Attribute("red_roofs", COVER, "red roofs"),
    Attribute("white_roofs", COVER, "bright white roofs"),
    Attribute("blue_roofs", COVER, "blue metal roofs"),
    # Shapes and structures: drawn once per tile (linear features, regions, terrain).
    Attribute("curved_river", STRUCTURE, "a curved river"),
    Attribute("lake", STRUCTURE, "a lake with an irregular shore"),
    Attribute("coastline", STRUCTURE, "a shoreline"),
    Attribute("island", STRUCTURE, "an island ringed by sand"),
    Attribute("straight_road", STRUCTURE, "a straight road"),
    Attribute("road_grid", STRUCTURE, "roads in a grid"),
    Attribute("crossroads", STRUCTURE, "two roads crossing"),
    Attribute("highway", STRUCTURE, "a wide multi-lane highway"),
    Attribute("ring_road", STRUCTURE, "a ring-shaped road"),
    Attribute("railway_tracks", STRUCTURE, "parallel railway tracks"),
    Attribute("runway", STRUCTURE, "a long runway with white markings"),
    Attribute("bridge", STRUCTURE, "a bridge"),
    Attribute("piers", STRUCTURE, "piers jutting into the water"),
    Attribute("parallel_stripes", STRUCTURE, "parallel stripes of fields"),
    Attribute("running_track", STRUCTURE, "an oval running track"),
    Attribute("dunes", STRUCTURE, "wavy dune ridges"),
    Attribute("ridges", STRUCTURE, "rugged ridges with shadows"),
    Attribute("terraces", STRUCTURE, "curved terrace lines"),
    # Objects: many instances, placed by the class's layout and density attributes.
    Attribute("small_buildings", STRUCTURE, "small rectangular buildings"),
    Attribute("large_buildings", STRUCTURE, "large rectangular buildings"),
    Attribute("tall_buildings", STRUCTURE, "tall buildings casting long shadows"),
    Attribute("storage_tanks", STRUCTURE, "round storage tanks"),
    Attribute("airplanes", STRUCTURE, "airplanes"),
    Attribute("boats", STRUCTURE, "boats"),
    Attribute("cars", STRUCTURE, "cars"),
    Attribute("courts", STRUCTURE, "rectangular sports courts"),
    Attribute("pools", STRUCTURE, "bright blue swimming pools"),
    Attribute("shrubs", STRUCTURE, "small round shrubs"),
    Attribute("circular_fields", STRUCTURE, "circular fields"),
    Attribute("clouds", STRUCTURE, "white clouds"),
    Attribute("dense", LAYOUT, "densely packed"),
    Attribute("sparse", LAYOUT, "sparsely spread"),
    Attribute("regular_grid", LAYOUT, "arranged in a regular grid"),
    Attribute("in_rows", LAYOUT, "lined up in rows"),
    Attribute("scattered", LAYOUT, "scattered irregularly"),
    Attribute("clustered", LAYOUT, "clustered together"),
)
ATTRIBUTE_INDEX = {a.name: i for i, a in enumerate(ATTRIBUTES)}
OBJECTS = (
    "small_buildings", "large_buildings", "tall_buildings", "storage_tanks", "airplanes", "boats", "cars",
    "courts", "pools", "shrubs", "circular_fields", "clouds",
)  # fmt: skip
ROOFS = ("red_roofs", "white_roofs", "blue_roofs")
PLACEMENTS = ("regular_grid", "in_rows", "scattered", "clustered")
DENSITIES = ("dense", "sparse")

# Each class: its attributes, ground covers first (the first fills the tile).
CLASSES: dict[str, tuple[str, ...]] = {
    "airport": ("concrete", "grass", "runway", "airplanes", "large_buildings", "in_rows"),
    "runway": ("grass", "bare_soil", "runway"),
    "airplane": ("concrete", "airplanes", "sparse", "scattered"),
    "bare_land": ("bare_soil", "rock", "straight_road"),
    "beach": ("sand", "water", "coastline", "dunes"),
    "bridge": ("grass", "water", "curved_river", "bridge"),
    "chaparral": ("bare_soil", "shrubs", "sparse", "scattered"),
    "circular_farmland": ("bare_soil", "crops", "circular_fields", "regular_grid"),
    "cloud": ("grass", "trees", "clouds", "dense", "scattered"),
    "commercial_area": (
        "concrete",
        "blue_roofs",
        "road_grid",
        "large_buildings",
        "cars",
        "dense",
        "scattered",
    ),
    "dense_residential": ("concrete", "red_roofs", "small_buildings", "road_grid", "dense", "regular_grid"),
    "desert": ("sand", "bare_soil", "dunes"),
    "forest": ("trees", "shrubs", "dense", "scattered"),
    "freeway": ("grass", "trees", "highway", "cars", "sparse", "in_rows"),
    "golf_course": ("grass", "trees", "sand", "lake", "water"),
    "ground_track_field": ("grass", "running_track", "courts", "sparse", "scattered"),
    "harbor": ("concrete", "water", "coastline", "piers", "boats", "dense", "in_rows"),
    "industrial_area": (
        "concrete",
        "blue_roofs",
        "large_buildings",
        "storage_tanks",
        "straight_road",
        "scattered",
    ),
    "intersection": ("concrete", "crossroads", "cars", "small_buildings", "scattered"),
    "island": ("water", "sand", "grass", "island"),
    "lake": ("grass", "trees", "water", "lake"),
    "meadow": ("grass", "shrubs", "sparse", "scattered"),
    "medium_residential": ("grass", "white_roofs", "small_buildings", "road_grid", "pools", "scattered"),
    "mobile_home_park": ("concrete", "white_roofs", "small_buildings", "dense", "in_rows"),
    "mountain": ("rock", "trees", "ridges"),
    "overpass": ("grass", "highway", "ring_road", "bridge"),
    "parking_lot": ("asphalt", "cars", "dense", "regular_grid"),
    "railway": ("grass", "railway_tracks", "straight_road"),
    "railway_station": ("concrete", "white_roofs", "railway_tracks", "large_buildings", "in_rows"),
    "rectangular_farmland": ("grass", "crops", "bare_soil", "parallel_stripes"),
    "river": ("grass", "trees", "water", "curved_river"),
    "roundabout": ("concrete", "ring_road", "crossroads", "cars", "sparse", "scattered"),
    "sea_ice": ("water", "snow", "clouds", "sparse", "scattered"),
    "ship": ("water", "boats", "sparse", "scattered"),
    "snowberg": ("snow", "rock", "ridges"),
    "sparse_residential": ("grass", "red_roofs", "small_buildings", "trees", "pools", "sparse", "scattered"),
    "stadium": ("asphalt", "running_track", "cars", "large_buildings", "clustered"),
    "storage_tank": ("concrete", "storage_tanks", "regular_grid"),
    "tennis_court": ("grass", "trees", "courts", "clustered"),
    "terrace": ("bare_soil", "grass", "terraces"),
    "wetland": ("grass", "water", "shrubs", "dense", "clustered"),
    "center": ("concrete", "tall_buildings", "road_grid", "cars", "dense", "scattered"),
}
CLASS_NAMES: tuple[str, ...] = tuple(CLASSES)

# (seen, unseen) class counts: the 60/10, 50/20 and 40/30 ratios of RSSDIVCS's 70 classes at 42 classes.
SPLIT_SIZES: dict[str, tuple[int, int]] = {"zsl_36_6": (36, 6), "zsl_30_12": (30, 12), "zsl_24_18": (24, 18)}
DEFAULT_SPLIT = "zsl_36_6"
SPLIT_SEARCH_SEED = 20240611

MATERIAL_RGB = {
    "water": (35, 62, 98), "grass": (96, 146, 62), "trees": (34, 74, 36), "bare_soil": (142, 106, 72),
    "sand": (222, 202, 152), "snow": (236, 240, 248), "rock": (124, 120, 116), "asphalt": (68, 70, 74),
    "concrete": (176, 176, 170), "crops": (204, 172, 70),
}  # fmt: skip
ROOF_RGB = {"red_roofs": (172, 62, 46), "white_roofs": (238, 238, 232), "blue_roofs": (68, 110, 172)}
DEFAULT_ROOF = (122, 112, 102)
CAR_RGB = ((235, 235, 235), (25, 25, 28), (170, 30, 30), (40, 70, 160), (160, 160, 165), (90, 90, 95))

# Attributes a tile may borrow from other classes (drawn sparse), for confusability.
DISTRACTORS = ("cars", "straight_road", "shrubs", "small_buildings", "trees", "clouds", "bare_soil", "pools")
DISTRACTOR_RATE = 0.2


def class_description(name: str) -> str:
    """One sentence built from the class's attribute phrases: the class's semantics."""
    attrs = CLASSES[name]
    things = [
        ATTRIBUTES[ATTRIBUTE_INDEX[a]].phrase for a in attrs if ATTRIBUTES[ATTRIBUTE_INDEX[a]].group != LAYOUT
    ]
    layout = [
        ATTRIBUTES[ATTRIBUTE_INDEX[a]].phrase for a in attrs if ATTRIBUTES[ATTRIBUTE_INDEX[a]].group == LAYOUT
    ]
    text = "An aerial view of " + _join(things)
    if layout:
        text += ", " + " and ".join(layout)
    return text + "."


def attribute_matrix() -> np.ndarray:
    """[C, A] 0/1 float32, rows in CLASS_NAMES order."""
    matrix = np.zeros((len(CLASS_NAMES), len(ATTRIBUTES)), dtype=np.float32)
    for c, name in enumerate(CLASS_NAMES):
        for a in CLASSES[name]:
            matrix[c, ATTRIBUTE_INDEX[a]] = 1.0
    return matrix


def class_splits() -> dict[str, tuple[list[str], list[str], list[str]]]:
    """split name -> (seen, unseen, val) class lists; val is a subset of seen, held out of training.

    A seeded search picks lists in which every attribute is carried by some training class (seen - val),
    so every unseen and val class is a new combination of attributes the model has been shown.
    """
    matrix = attribute_matrix() > 0
    carriers = matrix.sum(axis=0)
    rng = np.random.default_rng(SPLIT_SEARCH_SEED)
    splits = {}
    for name, (n_seen, n_unseen) in SPLIT_SIZES.items():
        n_val = max(1, round(n_seen / 6))
        n_train = n_seen - n_val
        for _ in range(10_000):
            # randomised greedy cover: the rarest uncovered attribute picks one of its classes for training
            train: list[int] = []
            uncovered = np.ones(len(ATTRIBUTES), bool)
            while uncovered.any():
                rarest = np.flatnonzero(uncovered)[np.argmin(carriers[uncovered])]
                pick = int(rng.choice(np.flatnonzero(matrix[:, rarest])))
                train.append(pick)
                uncovered &= ~matrix[pick]
            if len(train) <= n_train:
                break
        else:  # pragma: no cover - the class table admits a cover; this guards edits to it
            raise RuntimeError(f"split {name}: cannot cover every attribute with {n_train} training classes")
        rest = [int(i) for i in rng.permutation(len(CLASS_NAMES)) if i not in train]
        train += rest[: n_train - len(train)]
        others = [i for i in rest if i not in train]
        unseen, val = others[:n_unseen], others[n_unseen : n_unseen + n_val]
        seen = sorted(train + val)
        splits[name] = (
            [CLASS_NAMES[i] for i in seen],
            [CLASS_NAMES[i] for i in sorted(unseen)],
            [CLASS_NAMES[i] for i in sorted(val)],
        )
    return splits


# ---------------------------------------------------------------------------------------------------------
# Rendering


@dataclass
class _Tile:
    """Drawing state of one tile: canvas, masks of what is where, and a record for the captions."""

    size: int
    rng: np.random.Generator
    attrs: set[str]
    canvas: np.ndarray  # float32 [S, S, 3]
    scale: float  # ground-sample-distance variation: object sizes and widths
    tint: dict[str, np.ndarray]  # per-tile colour of each material
    water: np.ndarray  # bool [S, S]
    structure: np.ndarray  # bool: roads, runways, tracks... (objects avoid them)
    road: np.ndarray  # bool: where cars may park on roads
    occupied: np.ndarray  # bool: objects already placed
    angle: float  # dominant direction of linear features (degrees); rows and grids follow it
    road_angles: list[float] = field(default_factory=list)
    textures: dict[str, np.ndarray] = field(default_factory=dict)
    sun: tuple[float, float] = (1.0, 1.0)
    covers: list[str] = field(default_factory=list)
    patches: list[tuple[str, tuple[float, float]]] = field(default_factory=list)
    structures: list[tuple[str, str]] = field(default_factory=list)  # (attribute, where)
    objects: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    shore: tuple[np.ndarray, np.ndarray] | None = None  # (point on shore, unit normal towards water)
    river: tuple[np.ndarray, float] | None = None  # (midpoint, angle)


def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth value noise in about [-1, 1]: a cells x cells random grid upsampled bicubically."""
    grid = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC))


def _mask(size: int, draw_fn) -> np.ndarray:
    image = Image.new("L", (size, size), 0)
    draw_fn(ImageDraw.Draw(image))
    return np.asarray(image) > 0


def _material(t: _Tile, name: str) -> np.ndarray:
    """A full-tile texture of a ground-cover material, each with its own consistent look (one per tile)."""
    if name not in t.textures:
        t.textures[name] = _new_material(t, name)
    return t.textures[name]


def _new_material(t: _Tile, name: str) -> np.ndarray:
    s, rng = t.size, t.rng
    base = t.tint[name]
    coarse = _noise(rng, s, 4)[..., None]
    fine = rng.normal(0.0, 1.0, (s, s, 1)).astype(np.float32)
    if name == "trees":  # clumpy crowns: bright and dark blobs at crown scale
        crowns = _noise(rng, s, max(4, s // 4))[..., None]
        return base * (1 + 0.1 * coarse + 0.45 * crowns) + 4 * fine
    if name == "water":
        return base * (1 + 0.06 * coarse) + 1.5 * fine
    if name == "rock":
        speckle = _noise(rng, s, max(4, s // 3))[..., None]
        return base * (1 + 0.15 * coarse + 0.25 * speckle) + 6 * fine
    if name == "crops":  # fine crop rows along the tile's dominant direction
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        theta = math.radians(t.angle)
        rows = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2.2)[..., None]
        return base * (1 + 0.08 * coarse + 0.08 * rows) + 4 * fine
    if name in ("snow", "sand"):
        return base * (1 + 0.04 * coarse) + 2 * fine
    return base * (1 + 0.12 * coarse) + {"grass": 7, "bare_soil": 8, "asphalt": 4, "concrete": 4}[name] * fine


def _paint(t: _Tile, mask: np.ndarray, material: str | tuple[float, float, float]) -> None:
    if isinstance(material, str):
        t.canvas[mask] = _material(t, material)[mask]
    else:
        t.canvas[mask] = material


def _blob(
    t: _Tile, cx: float, cy: float, radius: float, roughness: float = 0.25
) -> list[tuple[float, float]]:
    """An irregular closed outline (lakes, islands, patches): a circle with random harmonics."""
    phase = t.rng.uniform(0, 2 * math.pi, 3)
    amp = t.rng.uniform(0, roughness, 3)
    points = []
    for k in range(32):
        a = 2 * math.pi * k / 32
        r = radius * (1 + sum(amp[j] * math.sin((j + 2) * a + phase[j]) for j in range(3)))
        points.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return points


def _line_through(t: _Tile, cx: float, cy: float, angle: float) -> list[tuple[float, float]]:
    dx, dy = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    reach = t.size * 1.5
    return [(cx - dx * reach, cy - dy * reach), (cx + dx * reach, cy + dy * reach)]


def _offset(points: list[tuple[float, float]], angle: float, d: float) -> list[tuple[float, float]]:
    nx, ny = -math.sin(math.radians(angle)), math.cos(math.radians(angle))
    return [(x + nx * d, y + ny * d) for x, y in points]


def _where(x: float, y: float, size: int) -> str:
    col = min(2, int(3 * x / size))
    row = min(2, int(3 * y / size))
    return (
        ("in the upper left", "at the top", "in the upper right"),
        ("on the left", "in the centre", "on the right"),
        ("in the lower left", "at the bottom", "in the lower right"),
    )[row][col]


def _direction(angle: float) -> str:
    a = angle % 180
    if a < 22.5 or a >= 157.5:
        return "from left to right"
    if 67.5 <= a < 112.5:
        return "from top to bottom"
    return "diagonally"


def _centre(t: _Tile, spread: float = 0.2) -> tuple[float, float]:
    s = t.size
    return tuple(s * (0.5 + t.rng.uniform(-spread, spread, 2)))  # type: ignore[return-value]


def _road(t: _Tile, points, width: float, colour=None, edge=True) -> np.ndarray:
    w = max(1, round(width))
    mask = _mask(t.size, lambda d: d.line(points, fill=255, width=w, joint="curve"))
    if edge:  # light kerbs make roads readable on any background
        kerb = _mask(t.size, lambda d: d.line(points, fill=255, width=w + 2, joint="curve"))
        _paint(t, kerb & ~mask, (190, 188, 180))
    _paint(t, mask, colour if colour is not None else "asphalt")
    t.structure |= mask
    t.road |= mask
    return mask


def _dashes(t: _Tile, points, colour, period: float | None, width: int = 1) -> None:
    """A painted line along `points` (two ends): dashed with `period`, or continuous when None."""
    (x0, y0), (x1, y1) = points
    image = Image.new("L", (t.size, t.size), 0)
    draw = ImageDraw.Draw(image)
    n = 2 if period is None else max(2, int(math.hypot(x1 - x0, y1 - y0) / period))
    for k in range(0, n, 2):
        a, b = k / n, (k + 1) / n
        draw.line(
            [(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a), (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)], 255, width
        )
    t.canvas[np.asarray(image) > 0] = colour


def _draw_curved_river(t: _Tile) -> None:
    s, rng = t.size, t.rng
    angle = t.angle
    cx, cy = _centre(t, 0.1)
    amp, wavelength, phase = (
        s * rng.uniform(0.08, 0.2),
        s * rng.uniform(0.6, 1.2),
        rng.uniform(0, 2 * math.pi),
    )
    dx, dy = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    points = []
    for k in range(41):
        u = (k / 40 - 0.5) * 2 * s
        v = amp * math.sin(2 * math.pi * u / wavelength + phase)
        points.append((cx + dx * u - dy * v, cy + dy * u + dx * v))
    width = round(s * rng.uniform(0.1, 0.18) * t.scale)
    bank = _mask(s, lambda d: d.line(points, fill=255, width=width + max(2, s // 32), joint="curve"))
    water = _mask(s, lambda d: d.line(points, fill=255, width=width, joint="curve"))
    _paint(t, bank & ~water, "bare_soil")
    _paint(t, water, "water")
    t.water |= water
    t.river = (np.array([cx, cy]), angle)
    t.structures.append(("curved_river", f"winding {_direction(angle)}"))


def _draw_lake(t: _Tile) -> None:
    s = t.size
    cx, cy = _centre(t, 0.2)
    radius = s * t.rng.uniform(0.18, 0.3)
    shore = _mask(s, lambda d: d.polygon(_blob(t, cx, cy, radius * 1.08), fill=255))
    lake = _mask(s, lambda d: d.polygon(_blob(t, cx, cy, radius), fill=255))
    _paint(t, shore & ~lake, "bare_soil")
    _paint(t, lake, "water")
    t.water |= lake
    t.structures.append(("lake", _where(cx, cy, s)))


def _draw_coastline(t: _Tile) -> None:
    s, rng = t.size, t.rng
    angle = t.angle
    point = np.array(_centre(t, 0.15))
    direction = np.array([math.cos(math.radians(angle)), math.sin(math.radians(angle))])
    normal = np.array([-direction[1], direction[0]])
    amp, phase = s * rng.uniform(0.01, 0.05), rng.uniform(0, 2 * math.pi)
    edge = [
        tuple(point + direction * u + normal * amp * math.sin(u / s * 9 + phase))
        for u in np.linspace(-1.5 * s, 1.5 * s, 40)
    ]
    far = [tuple(np.array(p) + normal * 3 * s) for p in reversed(edge)]
    sea = _mask(s, lambda d: d.polygon(edge + far, fill=255))
    beach_band = _mask(s, lambda d: d.line(edge, fill=255, width=max(2, s // 20)))
    _paint(t, sea, "water")
    if "sand" in t.attrs:
        _paint(t, beach_band & ~sea, "sand")
    t.water |= sea
    t.shore = (point, normal)
    ys, xs = np.nonzero(sea)
    where = _where(xs.mean(), ys.mean(), s) if len(xs) else "at the edge"
    t.structures.append(("coastline", f"with the water {where}"))


def _draw_island(t: _Tile) -> None:
    s = t.size
    cx, cy = _centre(t, 0.12)
    radius = s * t.rng.uniform(0.16, 0.28)
    outline = _blob(t, cx, cy, radius, 0.3)
    rim = _mask(s, lambda d: d.polygon(outline, fill=255))
    inner = _mask(
        s, lambda d: d.polygon([(cx + (x - cx) * 0.8, cy + (y - cy) * 0.8) for x, y in outline], fill=255)
    )
    _paint(t, rim, "sand")
    _paint(t, inner, "trees" if "trees" in t.attrs else "grass")
    t.water &= ~rim
    t.structures.append(("island", _where(cx, cy, s)))


def _draw_straight_road(t: _Tile) -> None:
    angle = t.angle + t.rng.uniform(-10, 10)
    cx, cy = _centre(t, 0.3)
    _road(t, _line_through(t, cx, cy, angle), t.size * 0.05 * t.scale)
    t.road_angles.append(angle)
    t.structures.append(("straight_road", f"running {_direction(angle)}"))


def _draw_road_grid(t: _Tile) -> None:
    s, rng = t.size, t.rng
    spacing = s * rng.uniform(0.3, 0.42) * t.scale
    width = s * 0.04 * t.scale
    for angle in (t.angle, t.angle + 90):
        offset0 = rng.uniform(0, spacing)
        for k in range(-4, 5):
            points = _offset(_line_through(t, s / 2, s / 2, angle), angle, offset0 + k * spacing)
            _road(t, points, width, edge=False)
        t.road_angles.append(angle)
    t.structures.append(("road_grid", "across the whole scene"))


def _draw_crossroads(t: _Tile) -> None:
    cx, cy = _centre(t, 0.12)
    for angle in (t.angle, t.angle + 90 + t.rng.uniform(-12, 12)):
        _road(t, _line_through(t, cx, cy, angle), t.size * 0.06 * t.scale)
        t.road_angles.append(angle)
    t.structures.append(("crossroads", _where(cx, cy, t.size)))


def _draw_highway(t: _Tile) -> None:
    s = t.size
    angle = t.angle
    cx, cy = _centre(t, 0.15)
    lane = s * 0.09 * t.scale
    centre = _line_through(t, cx, cy, angle)
    for side in (-1, 1):
        points = _offset(centre, angle, side * lane * 0.75)
        _road(t, points, lane)
        _dashes(t, points, (225, 225, 215), s / 20)
    t.road_angles.append(angle)
    t.structures.append(("highway", f"running {_direction(angle)}"))


def _draw_ring_road(t: _Tile) -> None:
    s, rng = t.size, t.rng
    cx, cy = _centre(t, 0.1)
    radius = s * rng.uniform(0.16, 0.26) * t.scale
    width = max(2, round(s * 0.05 * t.scale))
    for k in range(int(rng.integers(2, 5))):  # roads leaving the ring
        angle = t.angle + 90 * k + rng.uniform(-10, 10)
        end = (cx + math.cos(math.radians(angle)) * s * 1.5, cy + math.sin(math.radians(angle)) * s * 1.5)
        _road(t, [(cx, cy), end], width)
        t.road_angles.append(angle)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    ring = _mask(s, lambda d: d.ellipse(box, outline=255, width=width))
    inside = _mask(s, lambda d: d.ellipse(box, fill=255)) & ~ring
    _paint(t, ring, "asphalt")
    _paint(t, inside, "grass")
    t.structure |= ring | inside
    t.road |= ring
    t.structures.append(("ring_road", _where(cx, cy, s)))


def _draw_railway_tracks(t: _Tile) -> None:
    s, rng = t.size, t.rng
    angle = t.angle
    cx, cy = _centre(t, 0.2)
    tracks = int(rng.integers(2, 5))
    gap = s * 0.07 * t.scale
    bed = _mask(s, lambda d: d.line(_line_through(t, cx, cy, angle), fill=255, width=round(gap * tracks + 2)))
    _paint(t, bed, (112, 100, 90))
    for k in range(tracks):
        centre = _offset(_line_through(t, cx, cy, angle), angle, (k - (tracks - 1) / 2) * gap)
        for rail in (-1, 1):
            _dashes(t, _offset(centre, angle, rail * gap * 0.22), (196, 196, 200), None)
    t.structure |= bed
    t.structures.append(("railway_tracks", f"running {_direction(angle)}"))


def _draw_runway(t: _Tile) -> None:
    s, rng = t.size, t.rng
    angle = t.angle
    cx, cy = _centre(t, 0.15)
    width = s * rng.uniform(0.11, 0.15) * t.scale
    centre = _line_through(t, cx, cy, angle)
    _road(t, centre, width, colour=(150, 150, 148), edge=False)
    _dashes(t, centre, (245, 245, 245), s / 14, max(1, s // 96))
    for side in (-1, 1):  # edge lines
        _dashes(t, _offset(centre, angle, side * width * 0.42), (235, 235, 235), None)
    t.road.fill(False)  # cars do not park on runways
    t.structures.append(("runway", f"running {_direction(angle)}"))


def _draw_bridge(t: _Tile) -> None:
    s = t.size
    if t.river is not None:
        (cx, cy), river_angle = t.river
        angle = river_angle + 90 + t.rng.uniform(-15, 15)
    else:
        cx, cy = _centre(t, 0.1)
        angle = t.angle + 90
    width = s * 0.07 * t.scale
    deck = _line_through(t, cx, cy, angle)
    shadow = _mask(s, lambda d: d.line(_offset(deck, angle, width * 0.6), fill=255, width=round(width)))
    t.canvas[shadow] *= 0.45
    _road(t, deck, width, colour=(200, 198, 190), edge=False)
    t.structures.append(("bridge", f"crossing {_direction(angle)}"))


def _draw_piers(t: _Tile) -> None:
    if t.shore is None:
        return
    s, rng = t.size, t.rng
    point, normal = t.shore
    along = np.array([normal[1], -normal[0]])
    length = s * rng.uniform(0.2, 0.35)
    image = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(image)
    spacing = s * rng.uniform(0.16, 0.26)
    for k in range(-4, 5):
        base = point + along * k * spacing - normal * s * 0.04
        draw.line([tuple(base), tuple(base + normal * length)], fill=255, width=max(2, round(s * 0.03)))
    mask = np.asarray(image) > 0
    _paint(t, mask, "concrete")
    t.structure |= mask
    t.structures.append(("piers", "along the shore"))


def _draw_parallel_stripes(t: _Tile) -> None:
    s, rng = t.size, t.rng
    palette = [m for m in ("crops", "grass", "bare_soil") if m in t.attrs] or ["grass", "bare_soil"]
    textures = [_material(t, m) for m in palette]
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    theta = math.radians(t.angle)
    u = xx * math.cos(theta) + yy * math.sin(theta)
    width = s * rng.uniform(0.07, 0.13) * t.scale
    index = np.floor(u / width).astype(np.int64)
    index -= index.min()
    choice = rng.integers(0, len(palette), index.max() + 1)
    shade = rng.uniform(0.85, 1.15, index.max() + 1).astype(np.float32)
    stacked = np.stack(textures)  # [P, S, S, 3]
    t.canvas[:] = (
        np.take_along_axis(stacked, choice[index][None, ..., None], axis=0)[0] * shade[index][..., None]
    )
    border = (u % width) < 1.0
    t.canvas[border] *= 0.7
    t.structures.append(("parallel_stripes", f"running {_direction(t.angle)}"))


def _draw_running_track(t: _Tile) -> None:
    s, rng = t.size, t.rng
    cx, cy = _centre(t, 0.1)
    length = s * rng.uniform(0.45, 0.62) * t.scale
    angle = t.angle

    def stadium(half_len: float, radius: float) -> list[tuple[float, float]]:
        points = []
        for end in (0, 1):
            for k in range(13):
                a = math.pi / 2 + math.pi * k / 12 + end * math.pi
                x = (half_len - radius) * (1 if end else -1) + radius * math.cos(a)
                points.append((x, radius * math.sin(a)))
        c, si = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        return [(cx + x * c - y * si, cy + x * si + y * c) for x, y in points]

    radius = length * 0.28
    outer = _mask(s, lambda d: d.polygon(stadium(length / 2, radius), fill=255))
    inner = _mask(s, lambda d: d.polygon(stadium(length / 2 - s * 0.06, radius - s * 0.06), fill=255))
    _paint(t, outer, (172, 82, 60))
    _paint(t, inner, "grass")
    t.structure |= outer
    t.structures.append(("running_track", _where(cx, cy, s)))


def _shade_terrain(t: _Tile, kind: str) -> None:
    s, rng = t.size, t.rng
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    if kind == "dunes":  # asymmetric crests: bright slope, sharp dark lee side
        theta = math.radians(t.angle + 90)
        wavelength = s * rng.uniform(0.12, 0.2) * t.scale
        u = xx * math.cos(theta) + yy * math.sin(theta) + _noise(rng, s, 3) * wavelength
        phase = (u / wavelength) % 1.0
        t.canvas *= (0.82 + 0.3 * phase)[..., None]
        t.structures.append(("dunes", f"running {_direction(t.angle)}"))
    elif kind == "ridges":  # hillshade of a rough height field
        height = sum(_noise(rng, s, c) * w for c, w in ((3, 1.0), (6, 0.5), (12, 0.25))) * s * 0.25
        gy, gx = np.gradient(height)
        light = np.clip(1.0 + 0.9 * (gx * t.sun[0] + gy * t.sun[1]) / math.sqrt(2), 0.35, 1.6)
        t.canvas *= light[..., None]
        t.structures.append(("ridges", "across the scene"))
    else:  # terraces: contour lines of a smooth hill
        height = _noise(rng, s, 3) * rng.uniform(5, 8)
        t.canvas[(height % 1.0) < 0.14] *= 0.55
        t.structures.append(("terraces", "following the slope"))


# --- objects ---------------------------------------------------------------------------------------------


def _rect(cx: float, cy: float, w: float, h: float, angle: float) -> list[tuple[float, float]]:
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return [
        (cx + x * c - y * s, cy + x * s + y * c)
        for x, y in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))
    ]


def _shade(rgb, factor: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, v * factor))) for v in rgb)  # type: ignore[return-value]


def _jitter(t: _Tile, rgb) -> tuple[int, int, int]:
    return _shade(rgb, t.rng.uniform(0.88, 1.1))


# size (long side, short side) as a fraction of the tile, and where the object may stand
OBJECT_SHAPES = {
    "small_buildings": ((0.08, 0.11), 0.7, "land"),
    "large_buildings": ((0.2, 0.3), 0.6, "land"),
    "tall_buildings": ((0.09, 0.13), 0.9, "land"),
    "storage_tanks": ((0.07, 0.13), 1.0, "land"),
    "airplanes": ((0.15, 0.22), 0.9, "land"),
    "boats": ((0.07, 0.11), 0.32, "water"),
    "cars": ((0.035, 0.045), 0.5, "road"),
    "courts": ((0.17, 0.22), 0.55, "land"),
    "pools": ((0.04, 0.06), 0.6, "land"),
    "shrubs": ((0.025, 0.045), 1.0, "land"),
    "circular_fields": ((0.22, 0.32), 1.0, "land"),
}


def _placements(
    t: _Tile, kind: str, placement: str, density: str
) -> list[tuple[float, float, float, float, float]]:
    """Candidate (cx, cy, long, short, angle) for one object kind, following the layout attributes."""
    s, rng = t.size, t.rng
    (lo, hi), aspect, _ = OBJECT_SHAPES[kind]
    size_factor = t.scale * (0.8 if density == "dense" else 1.0)
    length = s * rng.uniform(lo, hi) * size_factor
    width = length * aspect
    gap = {"dense": 1.35, "medium": 1.9, "sparse": 3.0}[density]
    out = []
    if placement in ("regular_grid", "in_rows"):
        angle = t.angle if placement == "in_rows" or not t.road_angles else t.road_angles[0]
        step_u, step_v = length * gap, width * gap * (1.6 if placement == "in_rows" else 1.0)
        if placement == "in_rows":
            step_u = length * (1.15 + (gap - 1.35) * 0.8)
            rows = {"dense": 4, "medium": 3, "sparse": 2}[density]
            step_v = width * 2.6
            vs = [(k - (rows - 1) / 2) * step_v for k in range(rows)]
        else:
            reach_v = int(s / step_v) + 1
            vs = [k * step_v for k in range(-reach_v, reach_v + 1)]
        c, si = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        cx0, cy0 = _centre(t, 0.15)
        reach_u = int(s / step_u) + 1
        for v in vs:
            for k in range(-reach_u, reach_u + 1):
                u = k * step_u
                x, y = cx0 + u * c - v * si, cy0 + u * si + v * c
                if -length / 2 < x < s + length / 2 and -length / 2 < y < s + length / 2:
                    out.append((x, y, length * rng.uniform(0.95, 1.05), width, angle + rng.uniform(-3, 3)))
        return out
    area = {"dense": 0.45, "medium": 0.18, "sparse": 0.06}[density]
    count = max(2, int(area * s * s / (length * width * gap)))
    count = int(count * rng.uniform(0.7, 1.3)) + 1
    centres = [_centre(t, 0.25) for _ in range(int(rng.integers(1, 3)))]
    for _ in range(count * 3):  # oversample: rejections happen where the ground is taken
        if placement == "clustered":
            cx, cy = centres[int(rng.integers(len(centres)))]
            x, y = rng.normal(cx, s * 0.12), rng.normal(cy, s * 0.12)
        else:
            x, y = rng.uniform(0, s, 2)
        angle = (
            t.road_angles[int(rng.integers(len(t.road_angles)))]
            if kind == "cars" and t.road_angles
            else rng.uniform(0, 180)
        )
        scale = rng.uniform(0.85, 1.15)
        out.append((x, y, length * scale, width * scale, angle))
    return out[: count * 3]


def _fits(t: _Tile, kind: str, x: float, y: float, radius: float) -> bool:
    s = t.size
    x0, y0 = max(0, int(x - radius)), max(0, int(y - radius))
    x1, y1 = min(s, int(x + radius) + 1), min(s, int(y + radius) + 1)
    if x0 >= x1 or y0 >= y1:
        return False
    ground = OBJECT_SHAPES[kind][2]
    if t.occupied[y0:y1, x0:x1].any():
        return False
    if ground == "road" and t.road.any():
        return bool(t.road[int(min(s - 1, max(0, y))), int(min(s - 1, max(0, x)))])
    if t.structure[y0:y1, x0:x1].any():
        return False
    water = t.water[y0:y1, x0:x1]
    return bool(water.all()) if ground == "water" else not water.any()


def _draw_object(t: _Tile, draw: ImageDraw.ImageDraw, kind: str, x, y, length, width, angle) -> None:
    rng = t.rng
    sx, sy = t.sun
    roofs = [ROOF_RGB[r] for r in ROOFS if r in t.attrs]
    roof = _jitter(t, roofs[int(rng.integers(len(roofs)))] if roofs else DEFAULT_ROOF)
    dark = (30, 30, 32)
    if kind == "small_buildings":
        off = t.size * 0.015
        draw.polygon(_rect(x + sx * off, y + sy * off, length, width, angle), fill=dark)
        draw.polygon(_rect(x, y, length, width, angle), fill=roof)
        nx, ny = -math.sin(math.radians(angle)), math.cos(math.radians(angle))
        draw.polygon(
            _rect(x + nx * width / 4, y + ny * width / 4, length, width / 2, angle), fill=_shade(roof, 0.75)
        )
    elif kind == "large_buildings":
        off = t.size * 0.025
        draw.polygon(_rect(x + sx * off, y + sy * off, length, width, angle), fill=dark)
        flat = roof if roofs else _jitter(t, (196, 196, 190))
        draw.polygon(_rect(x, y, length, width, angle), fill=flat)
        draw.polygon(_rect(x, y, length * 0.8, width * 0.7, angle), outline=_shade(flat, 0.8))
    elif kind == "tall_buildings":
        reach = t.size * rng.uniform(0.08, 0.14)
        foot = _rect(x, y, length, width, angle)
        for k in range(1, 7):
            d = reach * k / 6
            draw.polygon([(px + sx * d, py + sy * d) for px, py in foot], fill=dark)
        draw.polygon(foot, fill=roof if roofs else _jitter(t, (150, 160, 170)))
        draw.polygon(_rect(x, y, length * 0.6, width * 0.6, angle), fill=_jitter(t, (205, 210, 215)))
    elif kind == "storage_tanks":
        r = length / 2
        off = t.size * 0.015
        draw.ellipse((x - r + sx * off, y - r + sy * off, x + r + sx * off, y + r + sy * off), fill=dark)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=_jitter(t, (228, 228, 222)), outline=(150, 150, 150))
        draw.ellipse((x - r / 4, y - r / 4, x + r / 4, y + r / 4), fill=(170, 170, 168))
    elif kind == "airplanes":
        body = _jitter(t, (232, 232, 236))
        c, si = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        for dx, dy, colour in ((sx * t.size * 0.02, sy * t.size * 0.02, dark), (0, 0, body)):
            draw.polygon(_rect(x + dx, y + dy, length, length * 0.13, angle), fill=colour)
            wx, wy = x + dx + c * length * 0.05, y + dy + si * length * 0.05
            draw.polygon(_rect(wx, wy, length * 0.18, length * 0.95, angle), fill=colour)
            tx, ty = x + dx - c * length * 0.42, y + dy - si * length * 0.42
            draw.polygon(_rect(tx, ty, length * 0.1, length * 0.38, angle), fill=colour)
    elif kind == "boats":
        c, si = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        hull = _rect(x, y, length * 0.8, width, angle)
        bow = (x + c * length / 2, y + si * length / 2)
        draw.polygon([hull[0], hull[1], bow, hull[2], hull[3]], fill=_jitter(t, (240, 240, 238)))
        draw.line(
            [(x - c * length * 0.4, y - si * length * 0.4), (x - c * length, y - si * length)],
            fill=(120, 140, 170),
        )
    elif kind == "cars":
        colour = CAR_RGB[int(rng.integers(len(CAR_RGB)))]
        draw.polygon(_rect(x, y, length, width, angle), fill=colour)
    elif kind == "courts":
        surface = [(62, 132, 84), (52, 92, 152), (180, 92, 62)][int(rng.integers(3))]
        draw.polygon(_rect(x, y, length * 1.2, width * 1.3, angle), fill=_shade(surface, 0.8))
        draw.polygon(_rect(x, y, length, width, angle), fill=surface, outline=(240, 240, 240))
        c, si = math.cos(math.radians(angle + 90)), math.sin(math.radians(angle + 90))
        draw.line(
            [(x - c * width / 2, y - si * width / 2), (x + c * width / 2, y + si * width / 2)],
            fill=(240, 240, 240),
        )
    elif kind == "pools":
        draw.polygon(_rect(x, y, length * 1.4, width * 1.5, angle), fill=(225, 225, 220))
        draw.polygon(_rect(x, y, length, width, angle), fill=_jitter(t, (62, 192, 222)))
    elif kind == "shrubs":
        r = length / 2
        off = max(1.0, t.size * 0.01)
        draw.ellipse(
            (x - r + sx * off, y - r + sy * off, x + r + sx * off, y + r + sy * off), fill=(22, 30, 20)
        )
        draw.ellipse((x - r, y - r, x + r, y + r), fill=_jitter(t, (44, 88, 40)))
    elif kind == "circular_fields":
        r = length / 2
        colours = [t.tint["crops"], t.tint["grass"] * 1.1, t.tint["bare_soil"] * 0.8]
        fill = _jitter(t, colours[int(rng.integers(3))])
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill, outline=_shade(fill, 0.7))
        start = rng.uniform(0, 360)
        draw.pieslice(
            (x - r, y - r, x + r, y + r), start, start + rng.uniform(60, 160), fill=_shade(fill, 0.82)
        )
        draw.line(
            [(x, y), (x + r * math.cos(math.radians(start)), y + r * math.sin(math.radians(start)))],
            fill=_shade(fill, 0.55),
        )


def _draw_objects(t: _Tile, kind: str, placement: str, density: str, limit: int | None = None) -> None:
    image = Image.fromarray(np.clip(t.canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    placed = []
    for x, y, length, width, angle in _placements(t, kind, placement, density):
        if limit is not None and len(placed) >= limit:
            break
        radius = math.hypot(length, width) / 2 * (0.75 if placement == "regular_grid" else 0.6)
        if not _fits(t, kind, x, y, radius):
            continue
        _draw_object(t, draw, kind, x, y, length, width, angle)
        r = int(radius)
        t.occupied[max(0, int(y) - r) : int(y) + r + 1, max(0, int(x) - r) : int(x) + r + 1] = True
        placed.append((x, y))
    t.canvas = np.asarray(image, dtype=np.float32).copy()
    if placed:
        t.objects[kind] = t.objects.get(kind, []) + placed


def _draw_clouds(t: _Tile, density: str) -> None:
    s, rng = t.size, t.rng
    count = {
        "dense": int(rng.integers(4, 7)),
        "medium": int(rng.integers(2, 4)),
        "sparse": int(rng.integers(1, 3)),
    }[density]
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    alpha = np.zeros((s, s), np.float32)
    centres = []
    for _ in range(count):
        cx, cy = rng.uniform(0, s, 2)
        radius = s * rng.uniform(0.15, 0.3)
        alpha = np.maximum(alpha, np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2)))
        centres.append((cx, cy))
    alpha = np.clip(alpha * (0.9 + 0.35 * _noise(rng, s, 6)), 0, 0.92)[..., None]
    t.canvas = t.canvas * (1 - alpha) + np.float32(246) * alpha
    t.objects["clouds"] = centres


STRUCTURE_DRAWERS = {  # in drawing order: fields first, then water, then what crosses it
    "parallel_stripes": _draw_parallel_stripes,
    "curved_river": _draw_curved_river,
    "lake": _draw_lake,
    "coastline": _draw_coastline,
    "island": _draw_island,
    "running_track": _draw_running_track,
    "highway": _draw_highway,
    "road_grid": _draw_road_grid,
    "crossroads": _draw_crossroads,
    "ring_road": _draw_ring_road,
    "straight_road": _draw_straight_road,
    "railway_tracks": _draw_railway_tracks,
    "runway": _draw_runway,
    "bridge": _draw_bridge,
    "piers": _draw_piers,
}
WATER_SHAPES = ("curved_river", "lake", "coastline", "island")


def render_tile(class_name: str, seed: int, index: int, size: int = 64) -> tuple[np.ndarray, dict]:
    """Draw one tile of `class_name` -> (HxWx3 uint8, instance record for captions). Pure in its seed."""
    rng = np.random.default_rng([seed, CLASS_NAMES.index(class_name), index])
    attrs = set(CLASSES[class_name])
    distractor = None
    if rng.random() < DISTRACTOR_RATE:
        distractor = str(rng.choice([d for d in DISTRACTORS if d not in attrs]))
    covers = [
        a for a in CLASSES[class_name] if ATTRIBUTES[ATTRIBUTE_INDEX[a]].group == COVER and a not in ROOFS
    ]
    tint = {
        m: np.array(rgb, np.float32) * rng.normal(1.0, 0.04, 3).astype(np.float32)
        for m, rgb in MATERIAL_RGB.items()
    }
    sun_angle = rng.uniform(0, 2 * math.pi)
    t = _Tile(
        size=size,
        rng=rng,
        attrs=attrs,
        canvas=np.zeros((size, size, 3), np.float32),
        scale=rng.uniform(0.8, 1.2),
        tint=tint,
        water=np.zeros((size, size), bool),
        structure=np.zeros((size, size), bool),
        road=np.zeros((size, size), bool),
        occupied=np.zeros((size, size), bool),
        angle=rng.uniform(0, 180),
        sun=(math.cos(sun_angle), math.sin(sun_angle)),
        covers=covers,
    )
    # 1. ground covers: the first fills the tile; the rest are patches unless a structure is made of them
    _paint(t, np.ones((size, size), bool), covers[0])
    if covers[0] == "water":
        t.water[:] = True
    consumed = {"water"} if attrs & set(WATER_SHAPES) else set()
    if attrs & {"parallel_stripes", "circular_fields"}:
        consumed.add("crops")
    if "island" in attrs:
        consumed |= {"sand", "grass", "trees"}
    extra_covers = [c for c in covers[1:] if c not in consumed]
    if distractor in MATERIAL_RGB:
        extra_covers.append(distractor)
    for cover in extra_covers:
        for _ in range(int(rng.integers(1, 3))):
            cx, cy = rng.uniform(0.1, 0.9, 2) * size
            outline = _blob(t, cx, cy, size * rng.uniform(0.14, 0.26))
            patch = _mask(size, lambda d, outline=outline: d.polygon(outline, fill=255))
            if cover == "water":
                t.water |= patch
            elif cover != "snow":  # land patches do not float on water (ice floes do)
                patch &= ~t.water
            _paint(t, patch, cover)
            t.patches.append((cover, (cx, cy)))
    # 2. terrain relief, regions, then linear structures (their order fixes what lies on top)
    for kind in ("dunes", "ridges", "terraces"):
        if kind in attrs:
            _shade_terrain(t, kind)
    for kind in STRUCTURE_DRAWERS:
        if kind in attrs or kind == distractor:
            STRUCTURE_DRAWERS[kind](t)
    # 3. objects, placed by the class's layout and density attributes
    placement = next((p for p in PLACEMENTS if p in attrs), "scattered")
    density = next((d for d in DENSITIES if d in attrs), "medium")
    for kind in OBJECTS:
        if kind == "clouds":
            continue
        if kind == "pools" and kind in attrs:  # a pool goes with some of the houses, not on every lawn
            _draw_objects(
                t, kind, "scattered", density, limit=1 + len(t.objects.get("small_buildings", [])) // 3
            )
        elif kind in attrs:
            _draw_objects(t, kind, placement, density)
        elif kind == distractor:
            _draw_objects(t, kind, "scattered", "sparse", limit=int(rng.integers(1, 7)))
    if "clouds" in attrs or distractor == "clouds":
        _draw_clouds(t, density if "clouds" in attrs else "sparse")
    # 4. illumination and sensor: brightness, contrast, tint, haze, noise, blur
    canvas = t.canvas
    mean = canvas.mean()
    canvas = (canvas - mean) * rng.uniform(0.85, 1.15) + mean * rng.uniform(0.82, 1.15)
    canvas *= rng.normal(1.0, 0.03, 3).astype(np.float32)
    if rng.random() < 0.2:
        haze = rng.uniform(0.05, 0.2)
        canvas = canvas * (1 - haze) + np.float32(205) * haze
    canvas += rng.normal(0.0, rng.uniform(1.5, 5.0), canvas.shape).astype(np.float32)
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8) * size / 64))
    record = {
        "class": class_name,
        "covers": covers[:1] + [p for p, _ in t.patches],
        "patches": t.patches,
        "structures": t.structures,
        "objects": {k: len(v) for k, v in t.objects.items()},
        "object_centres": t.objects,
        "placement": placement,
        "density": density,
        "distractor": distractor,
        "roofs": [r for r in ROOFS if r in attrs],
    }
    return np.asarray(image), record


# ---------------------------------------------------------------------------------------------------------
# Captions

NUMBER_WORDS = (
    "no",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
)
NOUNS = {
    "small_buildings": ("small building", "small buildings"),
    "large_buildings": ("large building", "large buildings"),
    "tall_buildings": ("tall building", "tall buildings"),
    "storage_tanks": ("storage tank", "storage tanks"),
    "airplanes": ("airplane", "airplanes"),
    "boats": ("boat", "boats"),
    "cars": ("car", "cars"),
    "courts": ("sports court", "sports courts"),
    "pools": ("swimming pool", "swimming pools"),
    "shrubs": ("shrub", "shrubs"),
    "circular_fields": ("circular field", "circular fields"),
    "clouds": ("cloud", "clouds"),
}
LAYOUT_WORDS = {
    "regular_grid": "in a regular grid",
    "in_rows": "lined up in rows",
    "scattered": "scattered around",
    "clustered": "clustered together",
}
ROOF_WORDS = {"red_roofs": "red-roofed", "white_roofs": "white-roofed", "blue_roofs": "blue-roofed"}


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _phrase(name: str) -> str:
    return ATTRIBUTES[ATTRIBUTE_INDEX[name]].phrase


def _count(n: int, kind: str, roofs: list[str]) -> str:
    singular, plural = NOUNS[kind]
    if kind in ("small_buildings", "large_buildings", "tall_buildings") and roofs:
        singular, plural = ROOF_WORDS[roofs[0]] + " " + singular, ROOF_WORDS[roofs[0]] + " " + plural
    if n == 1:
        return f"one {singular}"
    return f"{NUMBER_WORDS[n]} {plural}" if n < len(NUMBER_WORDS) else f"many {plural}"


def captions_for(record: dict, size: int, rng: np.random.Generator) -> list[str]:
    """Five different sentences about one drawn instance: what is there, where, how many."""
    base = _phrase(record["covers"][0])
    structures = [f"{_phrase(k)} {where}" for k, where in record["structures"]]
    objects = sorted(record["objects"].items(), key=lambda kv: -kv[1])
    counts = [_count(n, k, record["roofs"]) for k, n in objects]
    patches = [f"{_phrase(c)} {_where(x, y, size)}" for c, (x, y) in record["patches"]]
    layout = LAYOUT_WORDS[record["placement"]]
    everything = structures + counts + patches
    sentences = []
    if counts:
        sentences.append(f"{counts[0].capitalize()} {layout} on {base}.")
        kind = objects[0][0]
        xs, ys = zip(*record["object_centres"][kind])
        spread = np.std(xs) + np.std(ys)
        where = "all over the image" if spread > size * 0.35 else _where(np.mean(xs), np.mean(ys), size)
        verb = "is" if objects[0][1] == 1 else "are"
        sentences.append(f"There {verb} {counts[0]} {where}.")
    if structures:
        sentences.append(f"An aerial image of {base} with {structures[0]}.")
        sentences.append(f"{structures[-1][0].upper()}{structures[-1][1:]} can be seen in this scene.")
    if patches:
        sentences.append(f"Patches of {patches[0]} interrupt the {base}.")
    sentences.append(
        f"This scene shows {base}" + (f" with {_join(everything)}." if everything else " everywhere.")
    )
    density = {"dense": "crowded", "sparse": "sparse", "medium": "moderately busy"}[record["density"]]
    if counts:
        sentences.append(f"A {density} scene: {_join(counts)} over {base}.")
    sentences.append(f"Most of the image is covered by {base}.")
    sentences.append(f"Seen from above: {_join([base] + everything)}.")
    sentences.append(f"A remote sensing tile showing {_join(everything) if everything else base}.")
    unique = list(dict.fromkeys(sentences))
    chosen = [unique[i] for i in sorted(rng.choice(len(unique), size=min(5, len(unique)), replace=False))]
    while len(chosen) < 5:  # pragma: no cover - there are always at least five templates above
        chosen.append(f"An overhead view of {base}.")
    return chosen


# ---------------------------------------------------------------------------------------------------------
# Writing the benchmark


def _render_job(job: tuple[str, int, int, int, str]) -> tuple[str, str, list[str]]:
    class_name, seed, index, size, root = job
    rgb, record = render_tile(class_name, seed, index, size)
    rng = np.random.default_rng([seed, CLASS_NAMES.index(class_name), index, 1])
    relpath = f"{class_name}/{class_name}_{index + 1:04d}.png"
    Image.fromarray(rgb).save(Path(root) / "images" / relpath)
    return class_name, relpath, captions_for(record, size, rng)


def _meta(seed: int, size: int, per_class: int) -> dict:
    return {
        "generator": "rsz synth",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "per_class": per_class,
    }


def write_benchmark(
    out: Path, seed: int = 0, size: int = 64, per_class: int = 60, workers: int | None = None
) -> Path:
    """Render the benchmark into `out` (written atomically); returns `out`.

    An existing empty `out` is filled; an existing benchmark of the same seed, size and per_class is
    kept as it is; anything else already in `out` is refused with an RszError.
    """
    from rsz_train.data.formats import SceneData, make_split  # formats imports nothing from here

    out = Path(out)
    if not 16 <= size <= 1024:
        raise RszError(f"--size {size}: must be between 16 and 1024 pixels")
    if per_class < 5:
        raise RszError(f"--per-class {per_class}: need at least 5 images per class for the split lists")
    meta = _meta(seed, size, per_class)
    if out.exists():
        if not out.is_dir():
            raise RszError(f"{out}: exists and is not a folder")
        if any(out.iterdir()):
            try:
                same = json.loads((out / "synth.json").read_text()) == meta
            except (OSError, ValueError):
                same = False
            if same:
                return out
            raise RszError(f"{out}: folder is not empty (and is not this benchmark); choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for name in CLASS_NAMES:
            (tmp / "images" / name).mkdir(parents=True)
        jobs = [(name, seed, i, size, str(tmp)) for name in CLASS_NAMES for i in range(per_class)]
        if workers is None:  # a pool costs about a second to start: worth it from a few hundred tiles
            workers = min(os.cpu_count() or 1, max(1, len(jobs) // 300))
        if workers > 1:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                results = pool.map(_render_job, jobs, chunksize=max(1, len(jobs) // (workers * 8)))
        else:
            results = [_render_job(job) for job in jobs]
        _write_metadata(tmp, seed, results)
        data = SceneData(
            root=tmp / "images",
            class_names=list(CLASS_NAMES),
            descriptions={n: class_description(n) for n in CLASS_NAMES},
            image_paths=[r[1] for r in results],
            labels=np.array([CLASS_NAMES.index(r[0]) for r in results], dtype=np.int64),
            attribute_names=[a.name for a in ATTRIBUTES],
            attribute_groups=[a.group for a in ATTRIBUTES],
            attribute_phrases=[a.phrase for a in ATTRIBUTES],
            attribute_matrix=attribute_matrix(),
            captions={},
            caption_splits={},
        )
        for split_name, (seen, unseen, val) in class_splits().items():
            split = make_split(data, seen, unseen, val, seed=seed)
            folder = tmp / "splits" / split_name
            folder.mkdir(parents=True)
            for key in (
                "seen",
                "unseen",
                "val",
                "train",
                "val_seen",
                "val_unseen",
                "test_seen",
                "test_unseen",
            ):
                (folder / f"{key}.txt").write_text("".join(f"{line}\n" for line in getattr(split, key)))
        (tmp / "synth.json").write_text(json.dumps(meta, indent=1) + "\n")
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_metadata(root: Path, seed: int, results: list[tuple[str, str, list[str]]]) -> None:
    (root / "classes.txt").write_text("".join(f"{n}: {class_description(n)}\n" for n in CLASS_NAMES))
    (root / "attributes.txt").write_text("".join(f"{a.name}\t{a.group}\t{a.phrase}\n" for a in ATTRIBUTES))
    matrix = attribute_matrix()
    lines = ["class," + ",".join(a.name for a in ATTRIBUTES)]
    lines += [name + "," + ",".join(str(int(v)) for v in row) for name, row in zip(CLASS_NAMES, matrix)]
    (root / "attribute_matrix.csv").write_text("\n".join(lines) + "\n")
    # Caption splits (retrieval): 80/10/10 of each class's images, drawn from the seed.
    images, sentence_id = [], 0
    by_class: dict[str, list[int]] = {}
    for k, (name, *_rest) in enumerate(results):
        by_class.setdefault(name, []).append(k)
    split_of = {}
    for c, members in enumerate(by_class.values()):
        order = np.random.default_rng([seed, c, 2]).permutation(len(members))
        n_val = n_test = max(1, round(len(members) * 0.1))
        for rank, j in enumerate(order):
            split_of[members[j]] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    for k, (_name, relpath, sentences) in enumerate(results):
        ids = list(range(sentence_id, sentence_id + len(sentences)))
        sentence_id += len(sentences)
        images.append(
            {
                "filename": relpath,
                "imgid": k,
                "split": split_of[k],
                "sentids": ids,
                "sentences": [
                    {
                        "raw": s,
                        "tokens": s.lower().rstrip(".").replace(",", "").replace(":", "").split(),
                        "imgid": k,
                        "sentid": i,
                    }
                    for s, i in zip(sentences, ids)
                ],
            }
        )
    (root / "captions.json").write_text(json.dumps({"dataset": "rsz-synth", "images": images}) + "\n")


@click.command("synth")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Folder to create.")
@click.option("--seed", default=0, show_default=True, help="Random seed: same seed, same bytes.")
@click.option("--size", default=64, show_default=True, help="Tile side in pixels.")
@click.option("--per-class", default=60, show_default=True, help="Tiles per class.")
@click.option("--workers", default=None, type=int, help="Processes (default: all cores).")
@one_line_errors
def synth_command(out: Path, seed: int, size: int, per_class: int, workers: int | None) -> None:
    """Write the procedural remote-sensing benchmark (images, classes, attributes, captions, splits)."""
    path = write_benchmark(out, seed=seed, size=size, per_class=per_class, workers=workers)
    click.echo(
        f"wrote {len(CLASS_NAMES) * per_class} tiles of {size} px in {len(CLASS_NAMES)} classes to {path}"
    )
