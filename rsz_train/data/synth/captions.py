"""Five captions per tile, from its own instance record (what, where, how many)."""

from __future__ import annotations

import numpy as np

from rsz_train.data.synth.catalogue import ATTRIBUTE_INDEX, ATTRIBUTES, join_words
from rsz_train.data.synth.rendering import where_in_tile

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
    patches = [f"{_phrase(c)} {where_in_tile(x, y, size)}" for c, (x, y) in record["patches"]]
    layout = LAYOUT_WORDS[record["placement"]]
    everything = structures + counts + patches
    sentences = []
    if counts:
        sentences.append(f"{counts[0].capitalize()} {layout} on {base}.")
        kind = objects[0][0]
        xs, ys = zip(*record["object_centres"][kind])
        spread = np.std(xs) + np.std(ys)
        where = (
            "all over the image" if spread > size * 0.35 else where_in_tile(np.mean(xs), np.mean(ys), size)
        )
        verb = "is" if objects[0][1] == 1 else "are"
        sentences.append(f"There {verb} {counts[0]} {where}.")
    if structures:
        sentences.append(f"An aerial image of {base} with {structures[0]}.")
        sentences.append(f"{structures[-1][0].upper()}{structures[-1][1:]} can be seen in this scene.")
    if patches:
        sentences.append(f"Patches of {patches[0]} interrupt the {base}.")
    sentences.append(
        f"This scene shows {base}" + (f" with {join_words(everything)}." if everything else " everywhere.")
    )
    density = {"dense": "crowded", "sparse": "sparse", "medium": "moderately busy"}[record["density"]]
    if counts:
        sentences.append(f"A {density} scene: {join_words(counts)} over {base}.")
    sentences.append(f"Most of the image is covered by {base}.")
    sentences.append(f"Seen from above: {join_words([base] + everything)}.")
    sentences.append(f"A remote sensing tile showing {join_words(everything) if everything else base}.")
    unique = list(dict.fromkeys(sentences))
    chosen = [unique[i] for i in sorted(rng.choice(len(unique), size=min(5, len(unique)), replace=False))]
    while len(chosen) < 5:  # pragma: no cover - there are always at least five templates above
        chosen.append(f"An overhead view of {base}.")
    return chosen
