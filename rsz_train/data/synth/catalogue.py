"""The benchmark's catalogue: attributes, the 42 classes as attribute sets, their descriptions and splits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


def class_description(name: str) -> str:
    """One sentence built from the class's attribute phrases: the class's semantics."""
    attrs = CLASSES[name]
    things = [
        ATTRIBUTES[ATTRIBUTE_INDEX[a]].phrase for a in attrs if ATTRIBUTES[ATTRIBUTE_INDEX[a]].group != LAYOUT
    ]
    layout = [
        ATTRIBUTES[ATTRIBUTE_INDEX[a]].phrase for a in attrs if ATTRIBUTES[ATTRIBUTE_INDEX[a]].group == LAYOUT
    ]
    text = "An aerial view of " + join_words(things)
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


def join_words(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]
