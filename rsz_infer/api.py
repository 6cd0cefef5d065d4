"""The Python engine API: label and embed tiles in memory, from notebooks, pipelines and cluster workers.

    from rsz_infer import Labeler
    with Labeler("models/default", ["airport", "river: a river crossing farmland"]) as labeler:
        records = labeler.label(["tiles/", "scene.tif"])        # paths, Tiles or HxWx3 arrays
        table = labeler.label_table(arrays).to_pandas()          # one row per tile

`rsz-infer` (rsz_infer.pipeline.label_tiles) and the Ray path (rsz_infer.cluster) label through the same
Labeler: one engine (rsz_infer.batching.ImageEngine) and one scoring rule (Scorer).
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rsz_infer.backend import open_runner
from rsz_infer.batching import (
    Batch,
    EmbeddedBatch,
    EngineOptions,
    ImageEngine,
    embed_batches,
    embed_tiles,
    is_whole_number,
    tile_record,
)
from rsz_infer.bundle import MAX_HUBNESS_PENALTY, Manifest
from rsz_infer.class_embeddings import class_embeddings, cut_texts_note
from rsz_infer.classfile import (
    ClassEntry,
    class_name_key,
    parse_class_lines,
    read_class_file,
    with_training_descriptions,
)
from rsz_infer.errors import RszError
from rsz_infer.images import (
    STRETCH_PERCENTILES,
    NodataTile,
    Tile,
    TileError,
    TileOptions,
    check_size,
    discover_tiles,
    local_file,
    utf8_escaped,
)
from rsz_infer.latent_classifier import FITTED, LatentClassifier, choose_rule, open_classifier
from rsz_infer.outputs import GEO_INSTALL_HINT
from rsz_infer.preprocess import to_model_input
from rsz_infer.scoring import calibrated_stacking, class_logits, hubness_offsets, softmax, top_k

# one array (an image or a stack), one path or Tile, or an iterable (list, generator) of arrays or of paths
Images = np.ndarray | str | os.PathLike | Tile | Iterable[np.ndarray] | Iterable[str | os.PathLike | Tile]
FLOAT_RULES = ("unit", "stretch")
UNKNOWN = "unknown"  # label_1 of a tile whose best raw similarity is below --min-score
# "unit" floats may stray this far outside [0, 1] (rounding, resampling overshoot); further out they are
# not unit pixels (e.g. 0-255 floats, which clipping would turn white) and are refused
UNIT_TOLERANCE = 0.01
# the last axis of one HxWxC image: grey (+ alpha, PIL's "LA"), RGB (+ alpha)
CHANNELS = (1, 2, 3, 4)


def check_min_score(
    min_score: float | None,
    entries: Sequence[ClassEntry],
    classes: str | Path | Sequence[str] | Sequence[ClassEntry],
) -> None:
    """--min-score must be a finite number, and no class may be called "unknown" with it: such a class's
    tiles would read exactly like the tiles below the score. `classes` names the class file in the error."""
    if min_score is None:
        return
    if not math.isfinite(min_score):  # NaN compares false with every similarity: it would do nothing
        raise RszError(f"--min-score {min_score}: must be a finite number (a raw similarity such as 0.2)")
    if any(class_name_key(e.name) == UNKNOWN for e in entries):
        where = classes if isinstance(classes, (str, Path)) else "classes"
        raise RszError(
            f"{where}: a class named {UNKNOWN!r} cannot be told from tiles below --min-score {min_score:g}; "
            "rename the class or leave out --min-score"
        )


def check_seen_calibration(seen_calibration: float | None) -> None:
    """--seen-calibration must be a finite number within float32 (it is subtracted from float32 logits): NaN,
    an infinity or 1e300 makes every logit NaN, and every tile would be labeled the first class."""
    if seen_calibration is not None and not (
        math.isfinite(seen_calibration) and abs(seen_calibration) <= float(np.finfo(np.float32).max)
    ):
        raise RszError(
            f"--seen-calibration {seen_calibration}: must be a finite number "
            "(leave it out for the bundle's own)"
        )


def class_entries(classes: str | Path | Sequence[str] | Sequence[ClassEntry]) -> list[ClassEntry]:
    """Classes from a class file path, a list of "name" / "name: description" strings, or ClassEntrys."""
    if isinstance(classes, (str, Path)):
        return read_class_file(classes)
    if isinstance(classes, Mapping):  # iterating a dict gives its keys: the descriptions would be lost
        raise RszError('classes: a dict; pass a list of "name: description" strings or a class file')
    expected = "expected a class file, a list of class names, or ClassEntry objects"
    if not isinstance(classes, Iterable):  # None: a TypeError from list()
        raise RszError(f"classes: a {type(classes).__name__}; {expected}")
    items = list(classes)
    if not items:
        raise RszError(f"classes: an empty list; {expected}")
    if all(isinstance(c, ClassEntry) for c in items):
        return items
    if not all(isinstance(c, str) for c in items):
        raise RszError(f"classes: {expected}")
    if any("\n" in c for c in items):
        raise RszError("classes: a class name holds a line break")
    return parse_class_lines("\n".join(items), "classes")


@dataclass
class Scorer:
    """The model's scoring rule with calibrated stacking on the classes it was trained on."""

    class_emb: np.ndarray  # [C, D]
    names: list[str]
    seen_mask: np.ndarray  # [C] bool: class names the model saw in training (names by class_name_key)
    seen_calibration: float  # lambda subtracted from seen-class logits
    rule: str
    scale: float
    top_k: int
    min_score: float | None = None  # raw similarity below which a tile is labeled UNKNOWN
    # MCFA's final-stage classifier (rsz_infer.latent_classifier): the logits over `names`, where it labels
    classifier: LatentClassifier | None = None
    labeling: str | None = None  # the rule that labels where a bundle has a choice (choose_rule)
    # [C] subtracted from the similarity before the scale: the bundle's hubness correction (or None)
    offsets: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)  # for the run summary

    @classmethod
    def open(
        cls,
        bundle: Path,
        manifest: Manifest,
        entries: list[ClassEntry],
        backend: str,
        device: str,
        top_k: int,
        seen_calibration: float | None,
        min_score: float | None = None,
        hubness_penalty: float | None = None,
    ) -> Scorer:
        """Class embeddings through the bundle's own text graphs (cached), the bundle's rule and, for MCFA
        classifier bundles, the classifier that labels these classes."""

        def runner_for(role: str):  # a Runner
            return open_runner(bundle, manifest, role, backend, device)

        cut_note = cut_texts_note(bundle, manifest, entries)  # the user's text: training cut its own alike
        entries, trained_note = with_training_descriptions(entries, manifest.seen_descriptions)
        class_emb = class_embeddings(bundle, manifest, entries, runner_for)
        labeling, note = choose_rule(manifest, entries)
        notes = [n for n in (cut_note, trained_note, note) if n]
        seen = {class_name_key(n) for n in manifest.seen_classes}
        if seen_calibration is None:
            # The run's lambda corrects its classifier's bias to classes it learned from images; a classifier
            # fitted on class posteriors alone learned every class alike, so by default nothing is subtracted.
            seen_calibration = 0.0 if labeling == FITTED else manifest.seen_calibration
        return cls(
            class_emb=class_emb,
            names=[e.name for e in entries],
            seen_mask=np.array([class_name_key(e.name) in seen for e in entries]),
            seen_calibration=seen_calibration,
            rule=manifest.scoring_rule,
            scale=manifest.logit_scale,
            top_k=top_k,
            min_score=min_score,
            classifier=open_classifier(bundle, manifest, entries, labeling, runner_for),
            labeling=labeling,
            notes=notes,
            offsets=hubness_correction(manifest, entries, class_emb, hubness_penalty),
        )

    def logits(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(raw similarity, logits before calibrated stacking), both [B, C]: the similarity is the model's
        rule at scale 1 (what --min-score thresholds, for every bundle); the logits are scale x (similarity
        less the hubness correction, where the bundle has one), or the classifier's where one labels
        (rsz-bench accuracy scores MCFA classifier runs with these)."""
        if emb.shape[1] != self.class_emb.shape[1]:
            raise RszError(
                f"image embeddings are {emb.shape[1]}-d but class embeddings {self.class_emb.shape[1]}-d "
                "(the bundle's graphs do not belong together)"
            )
        similarity = class_logits(emb, self.class_emb, self.rule, 1.0)
        if self.classifier is not None:
            logits = self.classifier(emb)
        elif self.offsets is not None:
            logits = self.scale * (similarity - self.offsets[None, :])
        else:
            logits = self.scale * similarity
        return similarity, logits

    def close(self) -> None:
        if self.classifier is not None:
            self.classifier.close()

    def records(self, emb: np.ndarray, tiles: list[Tile], rules: list[str]) -> list[dict]:
        # The raw similarity (cosine, or dot product, before scale and calibration) says how well a tile
        # fits a class at all; the softmax only compares the classes given (one class: always 1.0).
        similarity, logits = self.logits(emb)
        probs = softmax(calibrated_stacking(logits, self.seen_mask, self.seen_calibration))
        idx, scores = top_k(probs, self.top_k)
        records = []
        for i, tile in enumerate(tiles):
            labels = [self.names[j] for j in idx[i]]
            sims = [round(float(similarity[i, j]), 6) for j in idx[i]]
            record = {
                "labels": labels,
                "scores": [round(float(s), 6) for s in scores[i]],
                "similarities": sims,
            }
            record |= {"class_index": int(idx[i, 0]), "rule": rules[i]}
            if self.min_score is not None and sims[0] < self.min_score:
                # label_1 says unknown; its score and similarity stay the best class's, which fell short
                record |= {"labels": [UNKNOWN] + labels[1:], "best_class": labels[0], "class_index": -1}
            records.append(tile_record(tile) | record)
        return records


def hubness_correction(
    manifest: Manifest, entries: list[ClassEntry], class_emb: np.ndarray, penalty: float | None = None
) -> np.ndarray | None:
    """[C] the bundle's hubness correction of the entries' classes (a class the model trained on is left
    out of its own neighbours) with `penalty` (None: manifest.hubness_penalty; 0: none), or None."""
    penalty = check_hubness_penalty(penalty, manifest)
    if not penalty:
        return None
    row_of = {class_name_key(name): i for i, name in enumerate(manifest.seen_classes)}
    trained_row = np.array([row_of.get(class_name_key(e.name), -1) for e in entries], dtype=np.int64)
    trained = np.asarray(manifest.trained_class_embeddings, dtype=np.float32)
    offsets = hubness_offsets(class_emb, trained, trained_row, manifest.hubness_neighbours)
    return penalty * offsets


def check_hubness_penalty(penalty: float | None, manifest: Manifest) -> float:
    """--hubness-penalty (None: the bundle's): a finite weight from 0 to MAX_HUBNESS_PENALTY, above 0 only
    for a bundle that carries its trained classes' embeddings (DSVA bundles exported with the correction)."""
    if penalty is None:
        return manifest.hubness_penalty
    if not (math.isfinite(penalty) and 0 <= penalty <= MAX_HUBNESS_PENALTY):
        raise RszError(f"--hubness-penalty {penalty}: must be a number from 0 to {MAX_HUBNESS_PENALTY}")
    if penalty and (manifest.scoring_rule != "cosine" or not manifest.trained_class_embeddings):
        raise RszError(
            f"--hubness-penalty {penalty}: the bundle has no trained class embeddings to correct against "
            "(only DSVA bundles exported with model.hubness_penalty do); use 0 or leave it out"
        )
    return penalty


def skipped_records(batch: EmbeddedBatch) -> list[dict]:
    """The records of a batch's bad tiles and empty scene windows (labels files list them in errors)."""
    return [
        tile_record(tile) | {"skipped": str(err), "nodata": isinstance(err, NodataTile)}
        for tile, err in batch.skipped
    ]


def _channels_first(a: np.ndarray) -> bool:
    """CxHxW with C 3 or 4 (PyTorch's layout) rather than HxWxC: only where the last axis cannot be C."""
    return a.ndim == 3 and a.shape[0] in (3, 4) and a.shape[2] not in CHANNELS


def array_to_rgb(
    image: np.ndarray, float_rule: str = "unit", where: str = "image", options: TileOptions | None = None
) -> tuple[np.ndarray, str]:
    """A decoded image -> (HxWx3 uint8 RGB, rule). HxW or HxWx1 (grey), HxWx2 (grey, alpha dropped), HxWx3
    or HxWx4 (alpha dropped); uint8 pixels, or float arrays by `float_rule`: "unit" takes [0, 1] to 0-255,
    "stretch" maps the image's own 2nd-98th percentiles to 0-255 (the rule of 16-bit TIFFs).

    Raises RszError for what the caller must change (shape, dtype, 0-255 floats under "unit"), and
    TileError for what a file would be skipped for too (images.decode_tile's rules): smaller than the
    minimum size, or only NaN pixels (NodataTile); NaN pixels of a partly valid image become black."""
    a = np.asarray(image)
    rule = "rgb"
    if a.ndim == 3 and a.shape[2] in (1, 2):  # one band moved last (HxWx1), or grey and alpha (HxWx2)
        grey, rule = a[:, :, 0], "grey to rgb; alpha dropped" if a.shape[2] == 2 else "grey to rgb"
        a = np.repeat(grey[:, :, None], 3, axis=2)
    elif a.ndim == 2:
        a, rule = np.repeat(a[:, :, None], 3, axis=2), "grey to rgb"
    elif a.ndim == 3 and a.shape[2] == 4:
        a, rule = a[:, :, :3], "rgb; alpha dropped"
    if a.ndim != 3 or a.shape[2] != 3:
        hint = "; channels first? a.transpose(1, 2, 0) is HxWxC" if _channels_first(a) else ""
        raise RszError(f"{where}: expected an HxWx3 (or HxW) array, got shape {tuple(np.shape(image))}{hint}")
    if a.dtype != np.uint8 and not np.issubdtype(a.dtype, np.floating):
        # 16-bit rasters are the usual integers here: the files' own rule for them is the stretch
        hint = (
            '; for 16-bit data pass a.astype(np.float32) with float_rule="stretch"'
            if a.dtype.kind in "iu"
            else ""
        )
        raise RszError(f"{where}: expected uint8 or float pixels, got {a.dtype}{hint}")
    if float_rule not in FLOAT_RULES:
        raise RszError(f"float_rule {float_rule!r}: expected {' or '.join(FLOAT_RULES)}")
    check_size(a, options or TileOptions())  # the same minimum as files (TileError)
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a), rule
    finite = np.isfinite(a)
    if not finite.any():
        raise NodataTile("all nodata (NaN pixels)")
    values = a[finite]
    if float_rule == "unit":
        lo, hi = float(values.min()), float(values.max())
        if lo < -UNIT_TOLERANCE or hi > 1 + UNIT_TOLERANCE:
            raise RszError(
                f'{where}: float pixels {lo:g} to {hi:g} are not in [0, 1] (the "unit" rule); '
                'pass uint8 pixels for 0-255 data, or use float_rule="stretch"'
            )
        lo, hi = 0.0, 1.0
    else:
        lo, hi = (float(v) for v in np.percentile(values, STRETCH_PERCENTILES))
    scaled = (np.where(finite, a, lo) - lo) / max(hi - lo, 1e-12)  # NaN pixels: the bottom (black)
    name = "float x255" if float_rule == "unit" else "float stretch p2-p98"
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), f"{rule}; {name}"


EXPLAIN_TOP = 3  # attributes per tile that --explain reports
ATTENTION_DECIMALS = 3


def check_explainable(manifest: Manifest, model: Path) -> None:
    if manifest.class_embedding != "attributes" or not manifest.attribute_names:
        raise RszError(
            f"--explain: {model} is a {manifest.model_kind} bundle; explanations need per-attribute scores "
            "(a DSVA bundle)"
        )
    if len(manifest.attribute_names) != manifest.embedding_dim:  # one name per attribute score
        raise RszError(
            f"--explain: {model}: {len(manifest.attribute_names)} attribute_names but embedding_dim "
            f"{manifest.embedding_dim}"
        )


def add_explanations(records: list[dict], outputs: dict[str, np.ndarray], attribute_names: list[str]) -> None:
    """DSVA's image graph gives per-attribute scores (its embedding) and attention maps: each labeled record
    gets its top attributes [[name, score], ...] and, in the run log, their attention maps [[h x w], ...]."""
    scores = outputs["embedding"]
    maps = outputs.get("attention_maps")
    top = np.argsort(-scores, axis=1, kind="stable")[:, :EXPLAIN_TOP]
    for i, record in enumerate(records):
        record["attributes"] = [[attribute_names[a], round(float(scores[i, a]), 6)] for a in top[i]]
        if maps is not None:
            record["attention"] = np.round(maps[i, top[i]].astype(np.float64), ATTENTION_DECIMALS).tolist()


class Embedder:
    """A bundle's image graph behind the decoding pool: `embed(images)` -> [N, D] image embeddings.

    backend: auto | trt | ort | torch; device: auto | cpu | cuda | cuda:N; tiles: how files and GeoTIFF
    scenes become tiles (tile size, overlap, bands). Close it (or use `with`) to free the engine.
    """

    def __init__(
        self,
        bundle: str | Path,
        backend: str = "auto",
        device: str = "auto",
        batch: int = 32,
        workers: int = 0,
        decoder: str = "auto",
        preprocess: str = "auto",
        precision: str = "auto",
        tiles: TileOptions | None = None,
        float_rule: str = "unit",
        manifest: Manifest | None = None,
    ) -> None:
        from rsz_infer.bundle import open_bundle

        if not isinstance(bundle, (str, os.PathLike)):  # None: a TypeError from inside pathlib
            raise RszError(f"bundle {bundle!r}: expected the path of a model bundle folder")
        if tiles is not None and not isinstance(tiles, TileOptions):  # a dict: an AttributeError later
            raise RszError(f"tiles: a {type(tiles).__name__}; expected rsz_infer.TileOptions(...)")
        self.bundle = Path(bundle)
        self.manifest = manifest or open_bundle(self.bundle)  # manifest: already loaded and verified
        self.backend, self.device = backend, device
        self.tile_options = tiles or TileOptions()
        if float_rule not in FLOAT_RULES:
            raise RszError(f"float_rule {float_rule!r}: expected {' or '.join(FLOAT_RULES)}")
        self.float_rule = float_rule
        self._before_engine()
        options = EngineOptions(backend, device, batch, workers, decoder, preprocess, precision)
        self.engine = ImageEngine.open(self.bundle, self.manifest, options)

    def _before_engine(self) -> None:
        """What a subclass prepares before the image graph opens (Labeler: the class embeddings)."""

    # --- the one loop, for every kind of input ---------------------------------------------------------

    def _check_open(self) -> None:
        # with TensorRT, close freed the device buffers: a later call would use freed memory
        if self.engine.closed:
            raise RszError(f"{self.bundle}: this {type(self).__name__} is closed")

    def inputs(self, images: Images) -> list[np.ndarray] | list[Tile]:
        """The arrays of a batch of arrays, or the Tiles of paths (as rsz-infer discovers them: folders,
        files, scene windows) and Tiles, one entry per input in input order (a path given twice is
        labeled twice). One call takes arrays or paths/Tiles, not both.

        One numpy array: 2-D (HxW) is one grey image; 3-D is one image when its last axis is 1 to 4
        (HxWx1 grey, HxWx2 grey and alpha, HxWx3, HxWx4), else a stack of grey images (NxHxW); 4-D is a
        stack of images (NxHxWxC). A grey stack whose width is 1 to 4 would read as one image, so pass such
        tiles (under the 8 px minimum anyway) as a list. A 3-D array of 3 or 4 rows of HxW is refused: it
        is far more often one channels-first image (CxHxW, PyTorch's layout) than 3 grey tiles, and read
        as a stack it would give three grey records and no error; a list says which was meant."""
        self._check_open()
        if isinstance(images, np.ndarray):
            # HxWx1 read as a stack was H images of Wx1 px, each skipped as under the 8 px minimum
            if images.ndim == 2 or (images.ndim == 3 and images.shape[2] in CHANNELS):
                return [images]
            if images.ndim not in (3, 4):
                shape = images.shape
                raise RszError(f"images: expected an HxW, HxWx3 or HxWx4 array or a stack, got shape {shape}")
            if _channels_first(images):
                raise RszError(
                    f"images: shape {images.shape} looks like one channels-first image (CxHxW): pass "
                    "a.transpose(1, 2, 0) (HxWxC), or a list for a stack of grey images"
                )
            return list(images)
        if isinstance(images, (str, os.PathLike, Tile)):  # one path, not a sequence of its characters
            images = [images]
        # one PIL image, None: never a TypeError from list(); bytes iterate as ints and a dict as its keys,
        # which would be refused as "a int" or labeled as paths named by the keys
        if not isinstance(images, Iterable) or isinstance(images, (bytes, bytearray, Mapping)):
            raise RszError(
                f"images: a {type(images).__name__} is not an array, a path, a Tile or a list of them"
            )
        items = list(images)
        arrays = [isinstance(i, np.ndarray) for i in items]
        if all(arrays):
            return items
        if any(arrays):
            raise RszError("images: a list mixing arrays and paths: pass one kind per call")
        tiles: list[Tile] = []
        for item in items:
            if isinstance(item, Tile):
                tiles.append(item)
            elif isinstance(item, (str, os.PathLike)):
                item = os.fspath(item)
                local = local_file(item)
                if local is not None and not os.path.exists(local):
                    # the README's promise: a bad file is a skipped record, never the whole batch's error
                    # (the CLI refuses a missing input instead: there it is a typo in the command)
                    tiles.append(Tile(id=item, path=item, problem="no such file or folder"))
                    continue
                tiles.extend(discover_tiles([item], self.tile_options))
            else:
                raise RszError(f"images: a {type(item).__name__} is not an array, a path or a Tile")
        return tiles

    def embedded_batches(self, inputs: list[np.ndarray] | list[Tile]) -> Iterator[EmbeddedBatch]:
        """The engine's batches for the inputs (see `inputs`); bad tiles ride along in `skipped`."""
        self._check_open()
        if _are_arrays(inputs):
            yield from embed_batches(self.engine, self._array_batches(inputs))
        else:
            yield from embed_tiles(self.engine, inputs, self.tile_options)

    def _array_batches(self, arrays: list[np.ndarray]) -> Iterator[Batch]:
        spec, size = self.manifest.preprocess, self.engine.batch_size
        for start in range(0, len(arrays), size):
            tiles, rules, rows, skipped = [], [], [], []
            for i, array in enumerate(arrays[start : start + size], start):
                tile = Tile(id=f"#{i}", path="")
                try:
                    rgb, rule = array_to_rgb(array, self.float_rule, f"images[{i}]", self.tile_options)
                except TileError as err:  # too small, all NaN: a skipped record, as for a file
                    skipped.append((tile, err))
                    continue
                rows.append(to_model_input(rgb, spec))
                tiles.append(tile)
                rules.append(rule)
            # only the rows this batch holds (batching.embed_batch pads up to a graph's minimum batch)
            inputs = np.stack(rows) if rows else np.zeros((0, 3, spec.size, spec.size), np.float32)
            yield Batch(tiles, rules, inputs, skipped=skipped)

    def embed(self, images: Images, output: str = "embedding") -> np.ndarray:
        """[N, D] float32 image-graph output (`embedding`, or e.g. MSA's `scales`) of every good tile, in
        input order; bad files raise (use Labeler.label to get their reasons instead)."""
        parts, first_error = [], None
        for batch in self.embedded_batches(self.inputs(images)):
            if batch.skipped and first_error is None:
                tile, err = batch.skipped[0]
                first_error = RszError(f"{tile.id}: {err}")
            if batch.tiles:
                if output not in batch.outputs:  # a KeyError naming only the output
                    have = ", ".join(batch.outputs)
                    raise RszError(
                        f"output {output!r}: the {self.manifest.model_kind} image graph gives {have}"
                    )
                parts.append(batch.outputs[output])
        if first_error is not None:
            raise first_error
        if not parts:
            return np.zeros((0, self.manifest.embedding_dim), np.float32)
        return np.concatenate(parts).astype(np.float32)

    def close(self) -> None:
        """Frees the engine; every later call raises "... is closed"; closing twice is fine."""
        self.engine.close()

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Labeler(Embedder):
    """Zero-shot labeling with a bundle and classes the model may never have seen.

    classes: a class file path, a list of "name" or "name: description" strings, or ClassEntry objects.
    `label(images)` -> one record per tile (labels, scores best first, rule; bad tiles carry "skipped").
    """

    def __init__(
        self,
        bundle: str | Path,
        classes: str | Path | Sequence[str] | Sequence[ClassEntry],
        backend: str = "auto",
        device: str = "auto",
        top_k: int = 5,
        seen_calibration: float | None = None,
        explain: bool = False,
        min_score: float | None = None,
        hubness_penalty: float | None = None,
        **engine: Any,
    ) -> None:
        if not is_whole_number(top_k):  # 2.0 would fail only at the first label() call
            raise RszError(f"top_k {top_k!r}: expected a whole number")
        if top_k < 1:
            raise RszError(f"--top-k {top_k}: must be at least 1")
        numeric = {
            "min_score": min_score,
            "seen_calibration": seen_calibration,
            "hubness_penalty": hubness_penalty,
        }
        for name, value in numeric.items():
            # "0.2": math.isfinite's TypeError; True: a bool is no score
            if value is not None and (not isinstance(value, numbers.Real) or isinstance(value, bool)):
                raise RszError(f"{name} {value!r}: expected a number (or None)")
        self.entries = class_entries(classes)
        check_min_score(min_score, self.entries, classes)
        check_seen_calibration(seen_calibration)
        self.explain = explain  # DSVA: top attributes (and attention maps) in every labeled record
        self._scoring = (top_k, seen_calibration, min_score, hubness_penalty)
        super().__init__(bundle, backend, device, **engine)

    def _before_engine(self) -> None:
        top_k, seen_calibration, min_score, hubness_penalty = self._scoring
        if self.explain:
            check_explainable(self.manifest, self.bundle)
        self.scorer = Scorer.open(
            self.bundle, self.manifest, self.entries, self.backend, self.device, top_k, seen_calibration,
            min_score, hubness_penalty,
        )  # fmt: skip

    def close(self) -> None:
        if self.engine.closed:  # closing twice is fine: the classifier is closed once
            return
        try:
            super().close()
        finally:
            self.scorer.close()

    @property
    def class_names(self) -> list[str]:
        return [e.name for e in self.entries]

    def batch_records(self, batch: EmbeddedBatch) -> list[dict]:
        """Records of one engine batch: its bad tiles first, then its labeled tiles."""
        self._check_open()
        records = skipped_records(batch)
        if batch.tiles:
            labeled = self.scorer.records(batch.outputs["embedding"], batch.tiles, batch.rules)
            if self.explain:
                add_explanations(labeled, batch.outputs, self.manifest.attribute_names)
            records += labeled
        return records

    def label(self, images: Images) -> list[dict]:
        """One record per input tile, in input order: tile, path, window, footprint, then labels, scores,
        class_index, rule, or skipped (the reason) and nodata for tiles that could not be labeled."""
        inputs = self.inputs(images)
        records: dict[str, dict] = {}
        for batch in self.embedded_batches(inputs):
            records.update((r["tile"], r) for r in self.batch_records(batch))
        order = [f"#{i}" for i in range(len(inputs))] if _are_arrays(inputs) else [t.id for t in inputs]
        # a path given twice is two inputs: two records (copies, so that editing one leaves the other)
        return [dict(records[tile_id]) for tile_id in order]

    def label_table(self, images: Images):  # pyarrow.Table (pyarrow is imported lazily)
        """label() as a pyarrow Table (one row per tile; `.to_pandas()` for a DataFrame)."""
        return records_table(self.label(images))


def _are_arrays(inputs: list) -> bool:
    return bool(inputs) and isinstance(inputs[0], np.ndarray)


def records_table(records: list[dict]):  # pyarrow.Table (pyarrow is imported lazily)
    """Label records -> pyarrow Table, one row per tile: tile, label, score (the best class), labels, scores
    (top k), rule, skipped (the reason, or null), nodata, and the whole record as JSON (`record`). Arrow takes
    only UTF-8: bytes of a file name that are not are backslash escapes in `tile` and `skipped`, and stay
    themselves in `record` (JSON's \\udcXX escapes), which table_records reads back."""
    try:
        import pyarrow as pa
    except ImportError:
        raise RszError(f"label_table needs pyarrow ({GEO_INSTALL_HINT})") from None

    def column(key: str, kind: pa.DataType, default: Any = None) -> pa.Array:
        return pa.array([r.get(key, default) for r in records], kind)

    def text(key: str) -> pa.Array:  # a file name (or a reason naming one) that is not UTF-8: escaped
        return pa.array([None if r.get(key) is None else utf8_escaped(r[key]) for r in records], pa.string())

    return pa.table(
        {
            "tile": text("tile"),
            "label": pa.array([r["labels"][0] if "labels" in r else None for r in records], pa.string()),
            "score": pa.array([r["scores"][0] if "scores" in r else None for r in records], pa.float64()),
            "labels": column("labels", pa.list_(pa.string())),
            "scores": column("scores", pa.list_(pa.float64())),
            "rule": column("rule", pa.string()),
            "skipped": text("skipped"),
            "nodata": column("nodata", pa.bool_(), False),
            "record": pa.array([json.dumps(r) for r in records], pa.string()),
        }
    )


def table_records(table) -> list[dict]:  # pyarrow.Table
    """records_table's inverse: the label records a table holds (merging partitions into outputs)."""
    return [json.loads(text) for text in table.column("record").to_pylist()]
