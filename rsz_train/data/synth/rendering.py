"""Drawing one tile from its class's attributes: covers, terrain, structures, objects, sensor effects."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from rsz_train.data.synth.catalogue import (
    ATTRIBUTE_INDEX,
    ATTRIBUTES,
    CLASS_NAMES,
    CLASSES,
    COVER,
    DENSITIES,
    OBJECTS,
    PLACEMENTS,
    ROOFS,
)

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


def where_in_tile(x: float, y: float, size: int) -> str:
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
    t.structures.append(("lake", where_in_tile(cx, cy, s)))


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
    where = where_in_tile(xs.mean(), ys.mean(), s) if len(xs) else "at the edge"
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
    t.structures.append(("island", where_in_tile(cx, cy, s)))


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
    t.structures.append(("crossroads", where_in_tile(cx, cy, t.size)))


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
    t.structures.append(("ring_road", where_in_tile(cx, cy, s)))


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
    t.structures.append(("running_track", where_in_tile(cx, cy, s)))


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


SHADOW = (30, 30, 32)


@dataclass
class _Placed:
    """One object to draw: centre, size and direction, and the roof colour the tile drew for it."""

    x: float
    y: float
    length: float
    width: float
    angle: float
    roof: tuple[int, int, int]  # jittered roof colour (the default roof when the class has no roof colour)
    coloured_roof: bool  # the class has a roof-colour attribute


def _draw_small_building(t: _Tile, draw: ImageDraw.ImageDraw, o: _Placed) -> None:
    sx, sy = t.sun
    off = t.size * 0.015
    draw.polygon(_rect(o.x + sx * off, o.y + sy * off, o.length, o.width, o.angle), fill=SHADOW)
    draw.polygon(_rect(o.x, o.y, o.length, o.width, o.angle), fill=o.roof)
    nx, ny = -math.sin(math.radians(o.angle)), math.cos(math.radians(o.angle))
    draw.polygon(
        _rect(o.x + nx * o.width / 4, o.y + ny * o.width / 4, o.length, o.width / 2, o.angle),
        fill=_shade(o.roof, 0.75),
    )


def _draw_large_building(t: _Tile, draw: ImageDraw.ImageDraw, o: _Placed) -> None:
    sx, sy = t.sun
    off = t.size * 0.025
    draw.polygon(_rect(o.x + sx * off, o.y + sy * off, o.length, o.width, o.angle), fill=SHADOW)
    flat = o.roof if o.coloured_roof else _jitter(t, (196, 196, 190))
    draw.polygon(_rect(o.x, o.y, o.length, o.width, o.angle), fill=flat)
    draw.polygon(_rect(o.x, o.y, o.length * 0.8, o.width * 0.7, o.angle), outline=_shade(flat, 0.8))


def _draw_tall_building(t: _Tile, draw: ImageDraw.ImageDraw, o: _Placed) -> None:
    sx, sy = t.sun
    reach = t.size * t.rng.uniform(0.08, 0.14)
    foot = _rect(o.x, o.y, o.length, o.width, o.angle)
    for k in range(1, 7):
        d = reach * k / 6
        draw.polygon([(px + sx * d, py + sy * d) for px, py in foot], fill=SHADOW)
    draw.polygon(foot, fill=o.roof if o.coloured_roof else _jitter(t, (150, 160, 170)))
    draw.polygon(_rect(o.x, o.y, o.length * 0.6, o.width * 0.6, o.angle), fill=_jitter(t, (205, 210, 215)))


def _draw_storage_tank(t: _Tile, draw: ImageDraw.ImageDraw, o: _Placed) -> None:
    sx, sy = t.sun
    x, y, r = o.x, o.y, o.length / 2
    off = t.size * 0.015
    draw.ellipse((x - r + sx * off, y - r + sy * off, x + r + sx * off, y + r + sy * off), fill=SHADOW)
    draw.ellipse((x - r, y - r, x + r, y + r), fill=_jitter(t, (228, 228, 222)), outline=(150, 150, 150))
    draw.ellipse((x - r / 4, y - r / 4, x + r / 4, y + r / 4), fill=(170, 170, 168))


def _draw_airplane(t: _Tile, draw: ImageDraw.ImageDraw, o: _Placed) -> None:
    sx, sy = t.sun
    x, y, length, angle = o.x, o.y, o.length, o.angle
    body = _jitter(t, (232, 232, 236))
    c, si = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    for dx, dy, colour in ((sx * t.size * 0.02, sy * t.size * 0.02, SHADOW), (0, 0, body)):
        draw.polygon(_rect(x + dx, y + dy, length, length * 0.13, angle), fill=colour)
        wx, wy = x + dx + c * length * 0.05, y + dy + si * length * 0.05
        draw.polygon(_rect(wx, wy, length * 0.18, length * 0.95, angle), fill=colour)
        tx, ty = x + dx - c * length * 0.42, y + dy - si * length * 0.42
        draw.polygon(_rect(tx, ty, length * 0.1, length * 0.38, angle), fill=colour)


def _draw_boat(t: _Tile, draw: ImageDraw.ImageDraw, o: _Placed) -> None:
    x, y, length = o.x, o.y, o.length
    c, si = math.cos(math.radians(o.angle)), math.sin(math.radians(o.angle))
    hull = _rect(x, y, length * 0.8, o.width, o.angle)
    bow = (x + c * length / 2, y + si * length / 2)
    draw.polygon([hull[0], hull[1], bow, hull[2], hull[3]], fill=_jitter(t, (240, 240, 238)))
    draw.line(
        [(x - c * length * 0.4, y - si * length * 0.4), (x - c * length, y - si * length)],
        fill=(120, 140, 170),
    )


def _draw_car(t: _Tile, draw: ImageDraw.ImageDraw, o: _Placed) -> None:
    colour = CAR_RGB[int(t.rng.integers(len(CAR_RGB)))]
    draw.polygon(_rect(o.x, o.y, o.length, o.width, o.angle), fill=colour)


def _draw_court(t: _Tile, draw: ImageDraw.ImageDraw, o: _Placed) -> None:
    x, y, width = o.x, o.y, o.width
    surface = [(62, 132, 84), (52, 92, 152), (180, 92, 62)][int(t.rng.integers(3))]
    draw.polygon(_rect(x, y, o.length * 1.2, width * 1.3, o.angle), fill=_shade(surface, 0.8))
    draw.polygon(_rect(x, y, o.length, width, o.angle), fill=surface, outline=(240, 240, 240))
    c, si = math.cos(math.radians(o.angle + 90)), math.sin(math.radians(o.angle + 90))
    draw.line(
        [(x - c * width / 2, y - si * width / 2), (x + c * width / 2, y + si * width / 2)],
        fill=(240, 240, 240),
    )


def _draw_pool(t: _Tile, draw: ImageDraw.ImageDraw, o: _Placed) -> None:
    draw.polygon(_rect(o.x, o.y, o.length * 1.4, o.width * 1.5, o.angle), fill=(225, 225, 220))
    draw.polygon(_rect(o.x, o.y, o.length, o.width, o.angle), fill=_jitter(t, (62, 192, 222)))


def _draw_shrub(t: _Tile, draw: ImageDraw.ImageDraw, o: _Placed) -> None:
    sx, sy = t.sun
    x, y, r = o.x, o.y, o.length / 2
    off = max(1.0, t.size * 0.01)
    draw.ellipse((x - r + sx * off, y - r + sy * off, x + r + sx * off, y + r + sy * off), fill=(22, 30, 20))
    draw.ellipse((x - r, y - r, x + r, y + r), fill=_jitter(t, (44, 88, 40)))


def _draw_circular_field(t: _Tile, draw: ImageDraw.ImageDraw, o: _Placed) -> None:
    rng = t.rng
    x, y, r = o.x, o.y, o.length / 2
    colours = [t.tint["crops"], t.tint["grass"] * 1.1, t.tint["bare_soil"] * 0.8]
    fill = _jitter(t, colours[int(rng.integers(3))])
    draw.ellipse((x - r, y - r, x + r, y + r), fill=fill, outline=_shade(fill, 0.7))
    start = rng.uniform(0, 360)
    draw.pieslice((x - r, y - r, x + r, y + r), start, start + rng.uniform(60, 160), fill=_shade(fill, 0.82))
    draw.line(
        [(x, y), (x + r * math.cos(math.radians(start)), y + r * math.sin(math.radians(start)))],
        fill=_shade(fill, 0.55),
    )


OBJECT_DRAWERS = {  # one drawer per object attribute of OBJECT_SHAPES
    "small_buildings": _draw_small_building,
    "large_buildings": _draw_large_building,
    "tall_buildings": _draw_tall_building,
    "storage_tanks": _draw_storage_tank,
    "airplanes": _draw_airplane,
    "boats": _draw_boat,
    "cars": _draw_car,
    "courts": _draw_court,
    "pools": _draw_pool,
    "shrubs": _draw_shrub,
    "circular_fields": _draw_circular_field,
}


def _draw_object(t: _Tile, draw: ImageDraw.ImageDraw, kind: str, x, y, length, width, angle) -> None:
    roofs = [ROOF_RGB[r] for r in ROOFS if r in t.attrs]
    # drawn for every object, roofed or not: the tile's random stream (hence its bytes) depends on it
    roof = _jitter(t, roofs[int(t.rng.integers(len(roofs)))] if roofs else DEFAULT_ROOF)
    OBJECT_DRAWERS[kind](t, draw, _Placed(x, y, length, width, angle, roof, bool(roofs)))


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
