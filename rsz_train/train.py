"""One training loop for every rsz model (DSVA, MCFA, MSA): `train(kind, data_dir, split, out_dir)`.

Honest model selection: the model trains on images of the seen classes minus the val classes; each
epoch is scored on validation (ZSL: per-class accuracy on val_unseen among the val classes; caption
models: retrieval mR on the validation captions); the best epoch is kept (the last one with
select_last_epoch), the GZSL calibration lambda is chosen on validation, and only then is the test
split scored, once.

Reproducible: the model is initialised from the seed, and epoch e draws its batches, augmentations and
dropout from seeds derived from (seed, e), so a run interrupted after epoch e and resumed (--resume)
ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rsz_infer.errors import RszError
from rsz_infer.preprocess import PreprocessSpec
from rsz_train import distributed, runs
from rsz_train import evaluate as ev
from rsz_train.config import ZERO_OR_MORE, RunConfig, TrainConfig, check_range, load_config, save_config
from rsz_train.data import batches as td
from rsz_train.data.formats import SPLIT_IMAGE_FILES, SceneData, Split, attribute_matrix, paper_split
from rsz_train.data.sources import (
    DataOptions,
    DataSource,
    class_folder_root,
    is_rsz_layout,
    load_dataset,
    resolve_splits,
)
from rsz_train.models.base import ClassSemantics, RszModel, TaskInfo
from rsz_train.models.registry import ModelEntry, create_model, model_entry

TEST_NOTE = "test scored once, after selection on validation"


@dataclass
class ImageSet:
    """Decoded images of one split part with their labels (indices into all class names)."""

    paths: list[str]
    images: np.ndarray  # [N, S, S, 3] uint8
    labels: np.ndarray  # [N] int64


def build_semantics(  #  (data: rsz_train.data.formats.SceneData, split: ...formats.Split)
    data,
    source: str,
    split=None,
    dual_encoder_run: str | None = None,
    device: str = "cpu",
    phrase_ridge: float = 0.0,
    description_clauses: bool = False,
) -> tuple[ClassSemantics, list[str]]:
    """ClassSemantics of every class of the benchmark, and the route each class's attributes took.

    Attributes from descriptions ("text", the default: exactly what inference computes for a new class),
    the benchmark's ground-truth matrix ("matrix"), or generated from images ("images", DSVA Sec. 3.1):
    the training classes of `split` from their training images under the dual encoder of the run at
    `dual_encoder_run`, every other class (val, unseen: their images must not be seen) from text.
    `phrase_ridge`: rsz_infer.semantics.attribute_vectors (text and image routes alike);
    `description_clauses`: rsz_infer.semantics.description_attribute_vectors (descriptions only).
    """
    from rsz_train.text import class_attribute_vectors, encode_sentences, glove_class_vectors

    names = list(data.class_names)
    descriptions = [data.descriptions.get(name, name) for name in names]
    phrases = list(data.attribute_phrases or [])
    if dual_encoder_run is not None and source != "images":
        raise RszError(
            f"train.dual_encoder_run {dual_encoder_run!r}: only used with train.semantics 'images'"
        )
    if source == "images" and len(phrases) < 2:
        raise RszError(f"{data.root}: the benchmark has no attribute phrases (attributes.txt)")
    routes = [source] * len(names)
    if source == "text" and len(phrases) < 2:
        # No attribute phrases (a caption data set, a class-folder set without --attributes): no
        # attribute rows; the models that need them (DSVA, MCFA's "phrases") say so when built.
        attributes = np.zeros((len(names), 0), dtype=np.float32)
    elif source == "text":
        attributes = class_attribute_vectors(descriptions, phrases, phrase_ridge, description_clauses)
    elif source == "matrix":
        if data.attribute_matrix is None:
            raise RszError(
                f"{data.root}: train.semantics is 'matrix' but the benchmark has no attribute matrix"
            )
        # every route into it is checked (formats.attribute_matrix); a SceneData built by hand is too
        attributes = attribute_matrix(data.attribute_matrix, f"{data.root}: attribute matrix")
        if attributes.shape[0] != len(names):
            raise RszError(
                f"{data.root}: attribute matrix has {attributes.shape[0]} rows, "
                f"the data set {len(names)} classes"
            )
    elif source == "images":
        attributes, routes = _image_attributes(
            data, descriptions, phrases, split, dual_encoder_run, device, phrase_ridge, description_clauses
        )
    else:
        raise RszError(f"train.semantics {source!r}: expected text, matrix or images")
    try:
        glove, _missing = glove_class_vectors(names)
    except RszError:
        glove = None  # a class name GloVe does not know: models that need GloVe say so themselves
    return ClassSemantics(
        names=names,
        descriptions=descriptions,
        attributes=attributes,
        sentence=encode_sentences(descriptions),
        glove=glove,
    ), routes


def _image_attributes(
    data,
    descriptions: list[str],
    phrases: list[str],
    split,
    dual_encoder_run: str | None,
    device: str,
    phrase_ridge: float,
    description_clauses: bool,
) -> tuple[np.ndarray, list[str]]:
    """The "images" route of build_semantics: training images of the training classes only."""
    from rsz_train.attribute_generation import dual_encoder, generated_attributes

    if not dual_encoder_run:
        raise RszError(
            "train.semantics is 'images' but train.dual_encoder_run is not set "
            "(an msa run folder, a clip bundle or a CLIP checkpoint)"
        )
    if split is None:
        raise RszError("train.semantics 'images': needs the split whose training images it may use")
    if not isinstance(dual_encoder_run, str):
        raise RszError(
            f"train.dual_encoder_run {dual_encoder_run!r}: expected the path of an msa run folder, "
            "a clip bundle or a CLIP checkpoint"
        )
    encoder = dual_encoder(dual_encoder_run, str(device))
    held_out = set(split.val) | set(split.unseen)
    leaked = sorted(held_out & set(encoder.seen))
    if leaked:
        raise RszError(
            f"{dual_encoder_run}: the dual encoder trained on images of {leaked[0]!r}, "
            "a val or unseen class of this split"
        )
    train_classes = set(split.seen) - set(split.val)
    label_of = dict(zip(data.image_paths, np.asarray(data.labels).tolist()))
    paths = [p for p in split.train if p in label_of and data.class_names[label_of[p]] in train_classes]
    # An unreadable image is left out here as in training, which names it (its class keeps the images
    # route while one of its images is readable, else takes the text route).
    paths, images, _unreadable = td.load_readable_images(
        data.root, paths, encoder.preprocess.size, encoder.preprocess.resize
    )
    labels = np.array([label_of[p] for p in paths], dtype=np.int64)
    return generated_attributes(
        descriptions, phrases, images, labels, encoder.encode_images, encoder.encode_texts,
        phrase_ridge=phrase_ridge, clauses=description_clauses,
    )  # fmt: skip


def pick_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise RszError(f"--device {device}: expected cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RszError(f"--device {device}: no CUDA GPU is available here (use --device cpu)")
    return torch.device(device)


def amp_dtype(config: RunConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or not config.train.amp:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch])


SAMPLERS = ("auto", "random", "class_balanced")


def _epoch_batches(entry: ModelEntry, config: RunConfig, labels: np.ndarray, rng: np.random.Generator):
    cfg = config.train
    if cfg.sampler not in SAMPLERS:
        raise RszError(f"train.sampler {cfg.sampler!r}: expected {', '.join(SAMPLERS)}")
    sampler = entry.sampler if cfg.sampler == "auto" else cfg.sampler
    if sampler == "class_balanced":
        return td.class_balanced_batches(
            labels, cfg.classes_per_batch, cfg.images_per_class, rng, cfg.batches_per_epoch
        )
    return td.random_batches(len(labels), cfg.batch_size, rng)


def backbone_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Parameters under any module named "backbone" (DSVA's ViT, MCFA's and MSA's ResNet)."""
    return [p for name, p in model.named_parameters() if ".backbone." in f".{name}"]


class _Trainer:
    """State of one run on one split; `train()` below is the public entry point."""

    def __init__(
        self,
        kind: str,
        data: SceneData,
        split: Split,
        source: DataSource,
        out_dir: Path,
        config: RunConfig,
        device: torch.device,
    ):
        self.kind, self.config, self.device = kind, config, device
        self.ctx = distributed.current()
        self.entry = model_entry(kind)
        self.out_dir = out_dir
        self.data, self.split, self.source = data, split, source
        self.split_name = split.name
        names = list(self.data.class_names)
        self.index = {name: i for i, name in enumerate(names)}
        val = set(self.split.val)
        self.train_classes = [c for c in self.split.seen if c not in val]
        for c in [*self.split.seen, *self.split.unseen]:
            if c not in self.index:
                raise RszError(f"split {split.name}: class {c!r} is not in the data set at {data.root}")
        self.train_ids = [self.index[c] for c in self.train_classes]
        self.val_ids = [self.index[c] for c in self.split.val]
        self.unseen_ids = [self.index[c] for c in self.split.unseen]
        self.semantics, self.attribute_routes = distributed.from_main(  # made once, sent to every rank
            self.ctx,
            lambda: build_semantics(
                self.data,
                config.train.semantics,
                self.split,
                config.train.dual_encoder_run,
                str(device),
                config.train.phrase_ridge,
                config.train.description_clauses,
            ),
        )
        if not self.data.attribute_names and self.entry.needs_attributes:
            raise RszError(
                f"{data.root}: {kind.upper()} needs attributes (attributes.txt, or --attributes FILE)"
            )
        self.task = TaskInfo(
            attribute_names=list(self.data.attribute_names or []),
            attribute_phrases=list(self.data.attribute_phrases or []),
            attribute_groups=list(self.data.attribute_groups or []),
            image_size=config.train.image_size,
            num_train_classes=len(self.train_classes),
        )
        torch.manual_seed(config.train.seed)
        self.model: RszModel = create_model(kind, config.model, self.task).to(device)
        self.spec: PreprocessSpec = runs.preprocess_spec(self.model, config.train.image_size)
        self.amp = amp_dtype(config, device)
        label_of = dict(zip(self.data.image_paths, np.asarray(self.data.labels).tolist()))
        self.unreadable: dict[str, str] = {}  # image -> why it was left out (report.json)
        self.sets = {
            part: self._image_set(part, label_of)
            for part in ("train", "val_seen", "val_unseen", "test_seen", "test_unseen")
        }
        if self.unreadable and self.ctx.is_main:
            first = next(iter(self.unreadable.values()))
            print(
                f"note: {len(self.unreadable)} unreadable image(s) left out of split {split.name} "
                f'(all in report.json "unreadable_images"); the first: {first}',
                file=sys.stderr,
            )
        if self.entry.uses_captions:  # caption models train only on images whose captions are for training
            self.sets["train"] = self._caption_subset(self.sets["train"], "train")
        if len(self.sets["train"].paths) < 2:
            which = (
                "training images with training captions" if self.entry.uses_captions else "training images"
            )
            raise RszError(f"split {split.name}: fewer than 2 {which}")
        position = {c: i for i, c in enumerate(self.train_ids)}
        self.train_labels = np.array([position[int(c)] for c in self.sets["train"].labels], dtype=np.int64)
        train_semantics = ev.subset_semantics(self.semantics, self.train_ids)
        self.train_class_inputs = self.model.class_inputs(train_semantics, device)
        # the backbone parameters the model itself trains (a frozen MCFA/MSA backbone stays frozen)
        self.backbone_trainable = [p for p in backbone_parameters(self.model) if p.requires_grad]
        self.kept_classifier: tuple | None = None  # MCFA's final-stage classifier, see classifier_scores
        self.step = distributed.loss_module(self.model, self.ctx, device)

    def caption_images(self, caption_split: str) -> list[str]:
        """Images whose captions serve `caption_split` ("train", "val", "test"): a caption data set's
        split lists say (val: the split's val_seen, which may be held-out training images); in the rsz
        layout captions.json does, per image."""
        if self.source.layout == "captions":
            part = {"train": "train", "val": "val_seen", "test": "test_seen"}[caption_split]
            return [p for p in getattr(self.split, part) if self.data.captions.get(p)]
        return [
            p
            for p in self.data.image_paths
            if self.data.caption_splits.get(p) == caption_split and self.data.captions.get(p)
        ]

    def _image_set(self, part: str, label_of: dict[str, int]) -> ImageSet:
        """The split part's images; unreadable ones are left out (self.unreadable) unless that would
        leave one of its classes with none."""
        paths = list(getattr(self.split, part))
        for p in paths:
            if p not in label_of:
                raise RszError(f"split {self.split_name}: image {p} is not in the benchmark")
        kept, images, unreadable = td.load_readable_images(
            self.data.root, paths, self.config.train.image_size
        )
        self.unreadable.update(unreadable)
        if unreadable:
            left = {label_of[p] for p in kept}
            for p, why in unreadable.items():
                if label_of[p] not in left:
                    name = self.data.class_names[label_of[p]]
                    raise RszError(f"split {self.split_name}: no readable {part} image of {name!r} ({why})")
        labels = np.asarray([label_of[p] for p in kept], dtype=np.int64)
        return ImageSet(kept, images, labels)

    def _caption_subset(self, image_set: ImageSet, caption_split: str) -> ImageSet:
        wanted = set(self.caption_images(caption_split))
        keep = [i for i, p in enumerate(image_set.paths) if p in wanted]
        return ImageSet([image_set.paths[i] for i in keep], image_set.images[keep], image_set.labels[keep])

    # --- training ---------------------------------------------------------------------------------------

    def steps_per_epoch(self) -> int:
        return len(
            _epoch_batches(self.entry, self.config, self.train_labels, _epoch_rng(self.config.train.seed, 0))
        )

    def run_epoch(self, epoch: int, optimizer, scheduler, scaler) -> dict[str, float]:
        cfg = self.config.train
        rng = _epoch_rng(cfg.seed, epoch)
        # dropout etc.: same draws when resumed at this epoch; each rank its own (rank 0 = a plain run's)
        torch.manual_seed(cfg.seed * 100_003 + epoch + 7_919 * self.ctx.rank)
        batches = _epoch_batches(self.entry, self.config, self.train_labels, rng)
        train_set = self.sets["train"]
        # CutMix draws from a generator of its own, the same on every rank (it mixes the global batch, so
        # processes train as one) and apart from the batches' (turning it on leaves them as they were)
        mix_probability, mix_cell = self.model.cutmix_settings()
        mix_rng = np.random.default_rng([cfg.seed, epoch, 0x637574])
        self.model.train()
        if cfg.frozen_backbone_epochs > 0:  # no gradients (so no Adam moments) while the backbone waits
            frozen = epoch < cfg.frozen_backbone_epochs
            for p in self.backbone_trainable:
                p.requires_grad_(not frozen)
        sums: dict[str, float] = {}
        self.step_losses: list[float] = []
        bar = tqdm(
            batches,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
            dynamic_ncols=True,
            disable=None if self.ctx.is_main else True,
        )
        for global_idx in bar:
            # this rank's share of the global batch (all of it in a single-process run)
            share = distributed.local_share(
                global_idx, self.train_labels, self.entry.sampler == "class_balanced", self.ctx
            )
            idx = global_idx[share]
            image, label = td.training_batch(
                train_set.images[global_idx],
                self.train_labels[global_idx],
                self.spec,
                rng if cfg.augment else None,
                share,
                td.Mixing(mix_probability, mix_cell, len(self.train_class_inputs), mix_rng),
            )
            batch = {
                "image": image.to(self.device),
                "label": label.to(self.device),
                "class_inputs": self.train_class_inputs,
            }
            if self.entry.uses_captions:
                texts = td.pick_captions([train_set.paths[i] for i in global_idx], self.data.captions, rng)
                texts = [texts[i] for i in share]
                batch.update({k: v.to(self.device) for k, v in self.model.tokenize(texts).items()})
            with ev.autocast(self.device, self.amp):
                losses = self.step(batch)
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise RszError(f"epoch {epoch + 1}: the loss is {loss.item()} (lower train.lr?)")
            optimizer.zero_grad(set_to_none=True)
            # x this rank's share: the averaged gradient is then the mean over the global batch
            share_weight = len(idx) * self.ctx.world_size / len(global_idx)
            scaler.scale(loss * share_weight if self.ctx.enabled else loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step = distributed.global_losses(losses, len(idx), len(global_idx), self.ctx)
            for k, v in step.items():
                sums[k] = sums.get(k, 0.0) + v
            self.step_losses.append(step["loss"])
            bar.set_postfix(loss=f"{step['loss']:.3f}")
        return {k: v / len(batches) for k, v in sums.items()}

    # --- evaluation -------------------------------------------------------------------------------------

    def _embed(self, part: str) -> np.ndarray:
        return ev.embed_images(
            self.model,
            self.sets[part].images,
            self.spec,
            self.device,
            self.config.train.eval_batch_size,
            self.amp,
        )

    def zsl_scores(self, stage: str, seen_calibration: float | None) -> dict | None:
        """ZSL/GZSL on "val" (train classes + val classes) or "test" (train classes + unseen classes)."""
        if getattr(self.model.config, "inference", "nearest") == "classifier":
            return self.classifier_scores(stage, seen_calibration)
        seen_part, unseen_part = f"{stage}_seen", f"{stage}_unseen"
        unseen_ids = self.val_ids if stage == "val" else self.unseen_ids
        if not unseen_ids or not len(self.sets[unseen_part].paths):
            return None
        class_emb = ev.embed_classes(self.model, self.semantics, self.device)
        if not len(self.sets[seen_part].paths):
            # ZSL needs only the unseen images (an MCFA ZSL folder has no test_seen list); GZSL needs both
            position = {c: i for i, c in enumerate(unseen_ids)}
            logits = ev.model_class_logits(
                self.model, self._embed(unseen_part), class_emb, unseen_ids, self.train_ids
            )
            local = np.array([position[int(c)] for c in self.sets[unseen_part].labels], dtype=np.int64)
            return {"zsl": ev.zsl_accuracy(logits, local), "gzsl_absent": _gzsl_absent(seen_part)}
        image_emb = np.concatenate([self._embed(seen_part), self._embed(unseen_part)])
        labels = np.concatenate([self.sets[seen_part].labels, self.sets[unseen_part].labels])
        return ev.model_zsl_gzsl_scores(
            self.model, image_emb, labels, class_emb, self.train_ids, unseen_ids, seen_calibration
        )

    def classifier_scores(self, stage: str, seen_calibration: float | None) -> dict | None:
        """MCFA's model.inference "classifier": the final stage (MCFA.final_stage) trained on the training
        images' posteriors and the classes' posteriors of this stage's label space, then ZSL (the unseen-only
        classifier) and GZSL (the seen + unseen one) of the stage's images. Keeps the GZSL classifier in
        self.kept_classifier (the test one is saved with the run)."""
        seen_part, unseen_part = f"{stage}_seen", f"{stage}_unseen"
        unseen_ids = self.val_ids if stage == "val" else self.unseen_ids
        if not unseen_ids or not len(self.sets[unseen_part].paths):
            return None
        self.model.eval()
        mu, logvar = [], []
        with torch.no_grad():
            for start in range(0, len(self.sets["train"].images), self.config.train.eval_batch_size):
                chunk = self.sets["train"].images[start : start + self.config.train.eval_batch_size]
                m, lv = self.model.image_posteriors(td.image_batch(chunk, self.spec).to(self.device))
                mu.append(m.float().cpu())
                logvar.append(lv.float().cpu())
        space = list(self.train_ids) + list(unseen_ids)
        class_inputs = self.model.class_inputs(ev.subset_semantics(self.semantics, space), self.device)
        gzsl_clf, zsl_clf = self.model.final_stage(
            (torch.cat(mu), torch.cat(logvar)),
            torch.from_numpy(self.train_labels),
            class_inputs,
            len(self.train_ids),
            self.config.train.seed,
        )
        self.kept_classifier = (gzsl_clf, [self.data.class_names[c] for c in space])
        unseen_emb = torch.from_numpy(self._embed(unseen_part))
        position = {c: i for i, c in enumerate(space)}
        with torch.no_grad():
            zsl_logits = zsl_clf(unseen_emb).numpy()
        unseen_local = np.array(
            [position[int(c)] - len(self.train_ids) for c in self.sets[unseen_part].labels]
        )
        out: dict = {"zsl": ev.zsl_accuracy(zsl_logits, unseen_local), "inference": "classifier"}
        if not len(self.sets[seen_part].paths):
            out["gzsl_absent"] = _gzsl_absent(seen_part)
            return out
        emb = torch.cat([torch.from_numpy(self._embed(seen_part)), unseen_emb])
        labels = np.concatenate([self.sets[seen_part].labels, self.sets[unseen_part].labels])
        local = np.array([position[int(c)] for c in labels], dtype=np.int64)
        with torch.no_grad():
            logits = gzsl_clf(emb).numpy()
        seen_mask = np.arange(len(space)) < len(self.train_ids)
        if seen_calibration is None:
            seen_calibration = ev.choose_calibration(logits, local, seen_mask)
        out.update(
            {
                "gzsl": {
                    **ev.gzsl_report(logits, local, seen_mask, seen_calibration),
                    "seen_calibration": float(seen_calibration),
                },
                "gzsl_uncalibrated": ev.gzsl_report(logits, local, seen_mask, 0.0),
                "seen_calibration": float(seen_calibration),
            }
        )
        return out

    def retrieval(self, caption_split: str) -> dict | None:
        """Retrieval on every image of the data set whose captions belong to `caption_split`."""
        paths = self.caption_images(caption_split)
        paths, images, unreadable = td.load_readable_images(
            self.data.root, paths, self.config.train.image_size
        )
        self.unreadable.update(unreadable)  # (reported with the test figures)
        if not paths:
            return None
        texts, text_to_image = [], []
        for i, p in enumerate(paths):
            texts += self.data.captions[p]
            text_to_image += [i] * len(self.data.captions[p])
        image_emb = ev.embed_images(
            self.model, images, self.spec, self.device, self.config.train.eval_batch_size, self.amp
        )
        text_emb = ev.embed_texts(self.model, texts, self.device, self.config.train.eval_batch_size)
        return ev.retrieval_scores(image_emb, text_emb, np.asarray(text_to_image))

    def validate(self) -> tuple[float, dict]:
        """(selection score, validation metrics)."""
        metrics: dict = {}
        zsl = self.zsl_scores("val", None)
        if zsl is not None:
            metrics.update(zsl)
        if self.entry.uses_captions:
            retrieval = self.retrieval("val")
            if retrieval is not None:
                metrics["retrieval"] = retrieval
                return retrieval["mR"], metrics
        if zsl is not None:
            return zsl["zsl"], metrics
        # No val classes: fall back to accuracy on held-out images of the training classes.
        emb = self._embed("val_seen")
        if not len(emb):
            raise RszError(f"split {self.split_name}: no validation images (val_seen.txt, val_unseen.txt)")
        class_emb = ev.embed_classes(
            self.model, ev.subset_semantics(self.semantics, self.train_ids), self.device
        )
        trained = list(range(len(self.train_ids)))  # rows of class_emb: the training classes only
        logits = ev.model_class_logits(self.model, emb, class_emb, trained, trained)
        position = {c: i for i, c in enumerate(self.train_ids)}
        metrics["val_seen_accuracy"] = ev.zsl_accuracy(
            logits, np.array([position[int(c)] for c in self.sets["val_seen"].labels])
        )
        return metrics["val_seen_accuracy"], metrics

    def classes_record(self, seen_calibration: float) -> dict:
        record = runs.classes_record(
            list(self.data.class_names),
            self.train_classes,
            list(self.split.unseen),
            list(self.split.val),
            self.semantics,
            self.config.train.semantics,
            self.task,
            self.spec,
            seen_calibration,
        )
        # Which route gave each class its row of "attributes": "images", "text" or "matrix".
        record["attribute_routes"] = dict(zip(self.data.class_names, self.attribute_routes))
        # The text route's rule, for export (the manifest) and so that inference computes the same rows.
        record["phrase_ridge"] = float(self.config.train.phrase_ridge)
        record["description_clauses"] = bool(self.config.train.description_clauses)
        record["split_images_sha256"] = self.split_images_sha256()
        return record

    def split_images_sha256(self) -> str:
        """Of the split's image lists (train, val and test parts): a --resume must continue on the same."""
        parts = [list(getattr(self.split, part)) for part in SPLIT_IMAGE_FILES]
        return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()

    def check_resumed_split(self, classes_path: Path) -> None:
        """--resume on another data set or split (other --data, --split-file, --split-id, --unseen, --seed)
        would go on training the run's weights on images it may have tested, and report the new split; with
        other --classes or --attributes, on other class semantics: refused, naming what differs (a run
        written before split_images_sha256: its class lists and semantics' inputs)."""
        if not classes_path.is_file():
            return
        ran = runs._read_json(classes_path)
        now = {
            "class_names": list(self.data.class_names),
            "seen": list(self.train_classes),
            "unseen": list(self.split.unseen),
            "val": list(self.split.val),
            "split_images_sha256": self.split_images_sha256(),
            # the class semantics' inputs (--classes, --attributes): the attribute vectors derive from them
            "descriptions": list(self.semantics.descriptions),
            "attribute_phrases": list(self.task.attribute_phrases),
        }
        ran = {**ran, "attribute_phrases": ran.get("task", {}).get("attribute_phrases")}
        differ = [key for key, value in now.items() if ran.get(key) is not None and ran[key] != value]
        if differ:
            key = differ[0]
            listed = key in ("class_names", "seen", "unseen", "val")
            shown = f": run {_short(ran[key])}, now {_short(now[key])}" if listed else ""
            raise RszError(
                f"--resume: {classes_path.parent} was trained on another data set, split or class file "
                f"({key}{shown}); pass the run's own --data, split and class options, or start a new run"
            )


def _short(names: list[str], limit: int = 4) -> str:
    """A class list in an error line: its first `limit` names and how many more."""
    more = f" +{len(names) - limit} more" if len(names) > limit else ""
    return "[" + ", ".join(repr(n) for n in names[:limit]) + more + "]"


def _gzsl_absent(seen_part: str) -> str:
    """Why a report has ZSL but no GZSL scores (report.json's "gzsl_absent")."""
    return f"no {seen_part} images: GZSL scores images of the seen and the unseen classes together"


def _paper_selection(selection: dict, trainer: _Trainer) -> str:
    """--protocol paper's report.json "selection": the selection run's rule and what the refit (`trainer`)
    trained on, in words."""
    epochs, tried, val = selection["best_epoch"], selection["epochs_tried"], selection["val"]
    if selection["val_classes"]:
        run, refit_on = (
            f"seen minus val classes, {_epochs(tried)}",
            f"all {len(trainer.train_classes)} seen classes",
        )
    else:  # a caption data set holds no classes out: the refit trains on validation's images and captions too
        run = _epochs(tried)
        refit_on = (
            f"the {len(trainer.sets['train'].paths)} training and validation images with their captions"
        )
    lam = "with the chosen lambda" if "gzsl" in val else "(no lambda: validation had no GZSL)"
    return (
        f"{selection['selection']} of the selection run ({SELECTION}/: {run}), then a refit on {refit_on} "
        f"for the chosen {_epochs(epochs)} {lam}"
    )


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _selection_rule(cfg: TrainConfig, uses_captions: bool, source: DataSource) -> str:
    """How the kept epoch was chosen, in words (report.json)."""
    if cfg.select_last_epoch:
        return "last epoch"
    if uses_captions:
        where = source.validation if source.layout == "captions" else "validation captions"
        return f"retrieval mR on {where}"
    return "ZSL accuracy on val_unseen"


def _calibration_rule(val: dict, train_classes: int, val_classes: int) -> str:
    """How the GZSL lambda (report.json "seen_calibration") was chosen, in words."""
    if "gzsl" in val:
        return (
            f"calibrated-stacking lambda with the best GZSL H on validation: val_seen images of the "
            f"{train_classes} training classes and val_unseen images of the {val_classes} val classes"
        )
    why = val.get("gzsl_absent") or "no val classes"
    return f"none (lambda 0): validation has no GZSL ({why})"


def _label_space(trainer: _Trainer, test: dict) -> dict[str, str]:
    """The classes each test score ranks among (report.json "label_space"): under --protocol rsz GZSL
    leaves out the val classes, under paper it covers every seen class."""
    unseen = f"the {len(trainer.unseen_ids)} unseen classes"
    if trainer.split.val:
        val = len(trainer.split.val)
        trained = f"the {len(trainer.train_ids)} training classes (seen minus the {val} val classes)"
    else:
        trained = f"all {len(trainer.train_ids)} seen classes"
    space = {}
    if "zsl" in test:
        space["zsl"] = unseen
    if "gzsl" in test:
        space["gzsl"] = f"{trained} + {unseen}"
    if "retrieval" in test:
        space["retrieval"] = "the images with test captions, and those captions"
    return space


def _read_metrics(path: Path, epochs_done: int) -> list[str]:
    if not path.is_file():
        return []
    return path.read_text(encoding="utf-8").splitlines()[:epochs_done]


def optimizer_groups(
    model: torch.nn.Module, lr: float, weight_decay: float, backbone_lr_factor: float = 1.0
) -> list[dict]:
    """AdamW groups: a model's own learning-rate groups (MSA's slower pretrained text tower) when it
    has them, the backbone's parameters at lr * backbone_lr_factor, each split so that biases and norms
    get no weight decay."""
    groups = (
        model.parameter_groups(lr)
        if hasattr(model, "parameter_groups")
        else [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]
    )
    backbone = {id(p) for p in backbone_parameters(model)}
    out = []
    for group in groups:
        params = [p for p in group["params"] if p.requires_grad]
        for in_backbone in (False, True):
            part = [p for p in params if (id(p) in backbone) == in_backbone]
            group_lr = group["lr"] * (backbone_lr_factor if in_backbone else 1.0)
            for decayed in (True, False):
                chosen = [p for p in part if (p.ndim >= 2) == decayed]
                if chosen:
                    out.append(
                        {"params": chosen, "lr": group_lr, "weight_decay": weight_decay if decayed else 0.0}
                    )
    return out


PROTOCOLS = ("rsz", "paper")
SELECTION = runs.SELECTION
SUMMARY_NOTE = "mean and standard deviation over the {n} splits (population std, ddof=0, numpy's default)"


@dataclass(frozen=True)
class TrainResult:
    """What train_run did: the run folder, and whether there was nothing to do (`resume` of a run that had
    finished at its epochs: no epoch trained, the test split not scored again, no file rewritten)."""

    run: Path
    nothing_to_do: bool = False


def train(
    kind: str,
    data_dir: Path | str,
    split: str | None,
    out_dir: Path | str,
    config_path: Path | str | None = None,
    device: str | None = None,
    epochs: int | None = None,
    resume: bool = False,
    overrides: dict | None = None,
    stop_after_epoch: int | None = None,
    data_options: DataOptions | None = None,
    protocol: str = "rsz",
    nproc: int = 1,
) -> Path:
    """Train a `kind` model on the data set at `data_dir` into `out_dir`; returns `out_dir` (train_run
    also says whether there was anything to do).

    `split` names a split of the rsz layout; `data_options` read other layouts and split files
    (rsz_train.data.sources). `protocol` "rsz": train on seen - val classes, select on validation,
    test once. "paper": the same selection run (in out_dir/selection), then a refit on every seen class
    with the chosen epochs and lambda, scored once on the official test split. Several splits
    (split_id "all") train into out_dir/<split> each, and report.json gives their mean and std.

    With `resume`, continue the run in `out_dir` from its last.pt, or from epoch 0 where a run killed
    in its first epoch has its config.yaml but no last.pt yet, or where `out_dir` is missing or empty (a
    run stopped before it began: started as without `resume`) (its own config.yaml either way; `epochs`
    may extend it, a finished run and each finished split of split_id "all" too). `stop_after_epoch`
    ends the call after that many epochs as an interruption would (last.pt is written, the test split
    is not scored).

    `nproc` > 1 trains in that many local processes with DistributedDataParallel; a process started by
    torchrun joins its job from the environment (rsz_train.distributed: the same global batches as one
    process, rank 0 validates and writes the run).
    """
    args = (kind, data_dir, split, out_dir, config_path, device, epochs, resume, overrides, stop_after_epoch)
    return train_run(*args, data_options=data_options, protocol=protocol, nproc=nproc).run


def train_run(
    kind: str,
    data_dir: Path | str,
    split: str | None,
    out_dir: Path | str,
    config_path: Path | str | None = None,
    device: str | None = None,
    epochs: int | None = None,
    resume: bool = False,
    overrides: dict | None = None,
    stop_after_epoch: int | None = None,
    data_options: DataOptions | None = None,
    protocol: str = "rsz",
    nproc: int = 1,
) -> TrainResult:
    """train(), returning what it did (rsz-train says "nothing left to do" by it); with `nproc` > 1, what
    rank 0 did."""
    _refuse_out_among_images(Path(data_dir), Path(out_dir), data_options)
    with _run_lock(Path(out_dir)):
        if nproc != 1:  # the launcher refuses nproc < 1
            args = (kind, data_dir, split, out_dir, config_path, device, epochs, resume, overrides)
            options = {
                "stop_after_epoch": stop_after_epoch,
                "data_options": data_options,
                "protocol": protocol,
            }
            return distributed.launch(nproc, train_run, *args, **options)
        return _train(
            kind, data_dir, split, out_dir, config_path, device, epochs, resume, overrides, stop_after_epoch,
            data_options, protocol,
        )  # fmt: skip


def _refuse_out_among_images(data_dir: Path, out_dir: Path, options: DataOptions | None) -> None:
    """--out inside the folder of class folders (`--data NWPU --out NWPU/run1`) would be read as a class
    folder without images by the next command on that data set, this run's --resume included. Checked
    before the run's lock makes any folder there."""
    if (options and options.captions) or not data_dir.is_dir():
        return  # caption images come from the JSON's list; a missing --data has its own error
    root = data_dir / "images" if is_rsz_layout(data_dir) else class_folder_root(data_dir)
    root, out = root.resolve(), out_dir.resolve()
    if out == root or root in out.parents:
        raise RszError(
            f"--out {out_dir}: inside the image folder {root}, where it would be read as a class folder; "
            "choose an --out outside it"
        )


@contextlib.contextmanager
def _run_lock(out_dir: Path) -> Iterator[None]:
    """One rsz-train per run folder: a second one (two --resume of a run, or a run started twice) would
    interleave the same checkpoint and metrics. Taken by a single process and by the --nproc launcher (its
    workers run inside it); processes of a torchrun job (each rank started outside rsz) take none."""
    if distributed.current().enabled:
        yield
        return
    from rsz_infer.locking import OutputLock

    try:
        lock = OutputLock(out_dir, "training")
    except RszError:  # OutputLock's wording is rsz-infer's
        raise RszError(
            f"{out_dir}: another rsz-train is writing this run right now; wait for it or choose another --out"
        ) from None
    with lock:
        yield


def _train(
    kind: str,
    data_dir: Path | str,
    split: str | None,
    out_dir: Path | str,
    config_path: Path | str | None,
    device: str | None,
    epochs: int | None,
    resume: bool,
    overrides: dict | None,
    stop_after_epoch: int | None,
    data_options: DataOptions | None,
    protocol: str,
) -> TrainResult:
    """train() in one process (or one rank of a distributed job), holding the run folder's lock."""
    started = time.time()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if protocol not in PROTOCOLS:
        raise RszError(f"--protocol {protocol}: expected {' or '.join(PROTOCOLS)}")
    options = data_options or DataOptions()
    if split is not None:
        options = dataclasses.replace(options, split=split)
    check_range(options.seed, ZERO_OR_MORE, "--seed")  # the split seed: train.seed's range
    if resume and (not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir()))):
        # stopped before it wrote anything (while it read its data): --resume starts it, as rsz-infer's
        # --resume does, so that a requeued job's one command line works after a stop at any moment
        if distributed.current().is_main:
            print(f"note: --resume: {out_dir} holds no run yet (stopped before it began): starting it",
                  file=sys.stderr)  # fmt: skip
        resume = False
    config = resolve_config(kind, out_dir, config_path, overrides, epochs, resume)
    data, layout = load_dataset(data_dir, options)
    if model_entry(kind).uses_captions and not data.captions:  # up front, not as "too few images" later
        raise RszError(
            f"{kind} trains on captions: pass --captions FILE (a Karpathy JSON) or a data folder with "
            f"captions (the rsz layout's captions.json); {data_dir} has none"
        )
    splits = resolve_splits(data_dir, data, layout, options)
    if not splits:  # each reader refuses a file without splits; a one-line error, never an IndexError
        raise RszError(f"{options.split_file or data_dir}: no splits to train on")
    if resume:
        _check_resumed_layout(out_dir, len(splits), protocol)
        if protocol == "paper":
            folders = [out_dir] if len(splits) == 1 else [out_dir / s.name for s, _ in splits]
            _refuse_reselection(folders, kind, config.train.epochs)
        if _finished_at(out_dir, kind) == config.train.epochs:
            # finished already: the test split is not scored again nor the run rewritten (the CLI says so)
            return TrainResult(out_dir, nothing_to_do=True)
    ctx = distributed.current()
    dev = distributed.start(ctx, pick_device(device))
    distributed.barrier(ctx)  # every rank has checked out_dir (resolve_config) before rank 0 writes to it
    if len(splits) == 1:
        split_obj, source = splits[0]
        _train_split(
            FitJob(kind, data, split_obj, source, out_dir, config, dev, resume, stop_after_epoch), protocol
        )
        return TrainResult(out_dir)

    def write_parent_config() -> None:
        """OUT/config.yaml, written once the first split's inputs are checked (an input error leaves
        nothing that would block the rerun); rewritten by `--resume --epochs M` (a resume of all splits
        reads this one, so the next --resume keeps M)."""
        path = out_dir / runs.CONFIG
        if not path.is_file() or runs.read_config(out_dir, kind).train.epochs != config.train.epochs:
            out_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, path)

    reports = []
    for split_obj, source in splits:
        sub = out_dir / split_obj.name
        if resume and _finished_at(sub, kind) == config.train.epochs:
            reports.append(json.loads((sub / runs.REPORT).read_text(encoding="utf-8")))
            continue
        # a split finished at other epochs (`--resume --epochs M`) goes on from its last.pt, as the run of
        # one split does
        job = FitJob(
            kind, data, split_obj, source, sub, config, dev, resume, stop_after_epoch, write_parent_config
        )
        _train_split(job.into(sub), protocol)
        if not (sub / runs.REPORT).is_file():
            return TrainResult(out_dir)  # stopped early (stop_after_epoch): nothing to summarise yet
        reports.append(json.loads((sub / runs.REPORT).read_text(encoding="utf-8")))
    summary = {
        "kind": kind,
        "protocol": protocol,
        "splits": [s.name for s, _ in splits],
        # what the splits share; each split's own id and sha256 in split_files (and in its report.json)
        "data": {**splits[0][1].to_dict(), "split_name": None, "split_id": "all", "split_sha256": None},
        "split_files": [
            {"split": s.name, "split_id": src.split_id, "split_sha256": src.split_sha256} for s, src in splits
        ],
        "test": summarise([r["test"] for r in reports]),
        # what each split chose on its own validation (its report.json says on what)
        "selected": [
            {
                "split": r.get("split"),
                "best_epoch": r.get("best_epoch"),
                "seen_calibration": r.get("seen_calibration"),
            }
            for r in reports
        ],
        "note": SUMMARY_NOTE.format(n=len(reports)) + "; each split's " + TEST_NOTE,
        "seconds": round(time.time() - started, 1),
        "device": str(dev),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if ctx.is_main:
        runs.write_atomic(out_dir / runs.REPORT, json.dumps(summary, indent=2))
    return TrainResult(out_dir)


def _finished_at(run_dir: Path, kind: str) -> int | None:
    """The epochs a finished split's run (its report.json) was trained for, None while it is unfinished:
    its own config.yaml's (--protocol paper: its selection run's, the refit's are the chosen epochs)."""
    if not (run_dir / runs.REPORT).is_file():
        return None
    own = run_dir / SELECTION if (run_dir / SELECTION / runs.CONFIG).is_file() else run_dir
    return runs.read_config(own, kind).train.epochs


def summarise(tests: list[dict]) -> dict:
    """{"zsl": {"mean", "std", "values"}, "gzsl_H": ..., "retrieval_mR": ...} over the splits' test dicts."""
    metrics = {
        "zsl": lambda t: t.get("zsl"),
        "gzsl_U": lambda t: t.get("gzsl", {}).get("U"),
        "gzsl_S": lambda t: t.get("gzsl", {}).get("S"),
        "gzsl_H": lambda t: t.get("gzsl", {}).get("H"),
        "retrieval_mR": lambda t: t.get("retrieval", {}).get("mR"),
    }
    out = {}
    for name, get in metrics.items():
        values = [get(t) for t in tests]
        if values and all(v is not None for v in values):
            out[name] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}
    return out


def resolve_config(
    kind: str,
    out_dir: Path,
    config_path: Path | str | None,
    overrides: dict | None,
    epochs: int | None,
    resume: bool,
) -> RunConfig:
    """The run's config: its own config.yaml when resuming (runs.read_config), else defaults, the
    config file and the overrides; `epochs` replaces train.epochs either way."""
    if epochs is not None:  # the same rule as the YAML's train.epochs
        check_range(epochs, TrainConfig.ranges["epochs"], "--epochs")
    if out_dir.exists() and not out_dir.is_dir():  # not the OS's "[Errno 20] Not a directory"
        raise RszError(f"--out {out_dir}: is a file, not a run folder")
    if resume:
        # --protocol paper keeps the run's own config in selection/ (the refit's has the chosen epochs)
        selection = out_dir / SELECTION
        # A run killed in its first epoch has its config.yaml but no last.pt yet: --resume starts it
        # from epoch 0 (with the same config checks), rather than refusing both a resume and a restart.
        has_config = (out_dir / runs.CONFIG).is_file() or (selection / runs.CONFIG).is_file()
        if not has_config and not any(out_dir.glob(f"**/{runs.LAST}")):
            raise RszError(f"{out_dir / runs.LAST}: nothing to resume (train without --resume first)")
        config = runs.read_config(selection if (selection / runs.CONFIG).is_file() else out_dir, kind)
        if config_path is not None or overrides:
            given = load_config(kind, config_path, overrides)
            if epochs is not None:  # --epochs may change a resumed run's length, whatever the file says
                given.train.epochs = config.train.epochs
            keys = None if config_path is not None else list(overrides)
            _check_resumed_config(config, given, keys)
    else:
        if out_dir.exists() and any(out_dir.iterdir()):
            raise RszError(
                f"{out_dir}: run folder is not empty (use --resume to continue it, or another --out)"
            )
        config = load_config(kind, config_path, overrides)
    if epochs is not None:
        config.train.epochs = epochs
    return config


def _check_resumed_layout(out_dir: Path, split_count: int, protocol: str) -> None:
    """--resume of a --split-id all folder (one sub-run per split) as one split, or of one split's run with
    --split-id all, would train into the wrong folder and overwrite its report.json; with the other
    --protocol, a paper refit would take an rsz run's last.pt as its own: refused."""
    per_split = [
        p.name
        for p in sorted(out_dir.iterdir())
        if p.is_dir()
        and p.name != SELECTION
        and any((p / sub / runs.CONFIG).is_file() for sub in ("", SELECTION))
    ]
    single = any((out_dir / sub / runs.CLASSES).is_file() for sub in ("", SELECTION))
    if split_count == 1 and per_split and not single:
        names = ", ".join(per_split[:3]) + (", ..." if len(per_split) > 3 else "")
        raise RszError(
            f"--resume: {out_dir} holds one run per split ({names}): resume it with --split-id all, "
            "or pass one split's folder as --out"
        )
    if split_count > 1 and single:
        raise RszError(
            f"--resume: {out_dir} is the run of one split, not of --split-id all: resume it with its own "
            "--split-id, or start a new run"
        )
    for folder in [out_dir / name for name in per_split] if split_count > 1 else [out_dir]:
        if not any((folder / sub / runs.CONFIG).is_file() for sub in ("", SELECTION)):
            continue  # not started yet
        ran = "paper" if (folder / SELECTION / runs.CONFIG).is_file() else "rsz"
        if ran != protocol:
            raise RszError(
                f"--resume: {folder} was trained with --protocol {ran}, not {protocol}: resume it with "
                f"--protocol {ran}, or start a new run"
            )


def _refuse_reselection(folders: list[Path], kind: str, epochs: int) -> None:
    """--protocol paper chooses the refit's epoch (and lambda) once, on validation, when its selection run
    finishes: `--resume --epochs M` after that kept the choice made over the first N epochs while its
    report said M were tried. Refused, saying what was chosen, before anything is trained or rewritten."""
    for folder in folders:
        done = folder / SELECTION / runs.REPORT
        if not done.is_file():
            continue  # the selection run is unfinished: it goes on to M epochs and chooses over all of them
        tried = runs.read_config(folder / SELECTION, kind).train.epochs
        if tried != epochs:
            chosen = json.loads(done.read_text(encoding="utf-8")).get("best_epoch")
            raise RszError(
                f"--resume --epochs {epochs}: {folder} is a --protocol paper run whose selection run "
                f"({SELECTION}/) finished at {_epochs(tried)} and chose epoch {chosen} on validation, "
                f"which is not chosen again: resume it with --epochs {tried}, or start a new run with "
                f"--epochs {epochs}"
            )


def _check_resumed_config(run: RunConfig, given: RunConfig, keys: list[str] | None) -> None:
    """--resume continues a run with its own config.yaml: a --config file (keys None: every setting) or an
    option such as --gsd (keys: its own) that would change it is refused by name, not silently ignored."""
    ran, asked = run.to_dict(), given.to_dict()
    if keys is None:
        keys = [f"{section}.{name}" for section in ("model", "train") for name in asked[section]]

    def at(config: dict, key: str) -> object:
        section, name = key.split(".", 1)
        return config[section].get(name)

    differ = [k for k in keys if at(ran, k) != at(asked, k)]
    if differ:
        shown = ", ".join(f"{k} (run: {at(ran, k)!r}, now: {at(asked, k)!r})" for k in differ[:4])
        more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
        raise RszError(
            f"--resume continues the run with its own config.yaml; these differ: {shown}{more} "
            "(drop them, or start a new run)"
        )


@dataclass
class FitResult:
    """What one fit (a training loop to its end) leaves for the final report."""

    trainer: _Trainer
    best_epoch: int  # 0-based
    val: dict  # validation metrics of the kept weights ({} for a refit: it has no validation)
    seen_calibration: float
    seconds: float


@dataclass
class FitJob:
    """One split's training job: what its fits share (a paper protocol's selection fit and refit each
    replace some fields: out_dir, resume; split, config)."""

    kind: str
    data: SceneData
    split: Split
    source: DataSource
    out_dir: Path
    config: RunConfig
    dev: torch.device
    resume: bool
    stop_after_epoch: int | None
    # rank 0 calls it once the fit's inputs are checked, before the fit writes anything (split_id "all":
    # the parent folder's config.yaml)
    before_write: Callable[[], None] | None = None

    def into(self, out_dir: Path) -> FitJob:
        """This job writing into `out_dir` (a split's or a sub-run's folder), resuming only where that
        folder has a last.pt."""
        return dataclasses.replace(
            self, out_dir=out_dir, resume=self.resume and (out_dir / runs.LAST).is_file()
        )


def _train_split(job: FitJob, protocol: str) -> None:
    """One split: a fit (rsz) or a selection fit and a refit (paper), then the report (rank 0)."""
    _train_split_fits(job, protocol)
    distributed.barrier(distributed.current())  # rank 0's report is written before any rank goes on


def _train_split_fits(job: FitJob, protocol: str) -> None:
    main = distributed.current().is_main
    if protocol == "rsz":
        fit = _fit(job, select=True)
        if fit is not None and main:
            _final_report(fit, job.kind, protocol, job.out_dir, selection=None)
        return
    selection_dir = job.out_dir / SELECTION
    done = selection_dir / runs.REPORT
    if job.resume and done.is_file():
        selected = json.loads(done.read_text(encoding="utf-8"))
    else:
        fit = _fit(job.into(selection_dir), select=True)
        if fit is None:
            return
        selected = distributed.from_main(  # rank 0 selected; every rank refits with its choice
            distributed.current(),
            lambda: {
                "best_epoch": fit.best_epoch + 1,
                "seen_calibration": fit.seen_calibration,
                "val": fit.val,
                "selection": _selection_rule(job.config.train, fit.trainer.entry.uses_captions, job.source),
                "seconds": fit.seconds,
            },
        )
        if main:
            runs.write_atomic(done, json.dumps(selected, indent=2))
    refit_config = dataclasses.replace(
        job.config, train=dataclasses.replace(job.config.train, epochs=int(selected["best_epoch"]))
    )
    refit = dataclasses.replace(
        job.into(job.out_dir), split=paper_split(job.split, job.data), config=refit_config
    )
    fit = _fit(refit, select=False, seen_calibration=runs.read_seen_calibration(selected))
    if fit is not None and main:
        # what the report says the selection run chose on: its val classes and epoch count
        chosen = {**selected, "val_classes": list(job.split.val), "epochs_tried": job.config.train.epochs}
        _final_report(fit, job.kind, protocol, job.out_dir, selection=chosen)


def _fit(job: FitJob, select: bool, seen_calibration: float = 0.0) -> FitResult | None:
    """Train `job.config.train.epochs` epochs into `job.out_dir`. `select`: score validation every epoch
    and keep the best (or last, train.select_last_epoch), choose lambda on validation; otherwise (a refit)
    keep the last epoch with the given `seen_calibration`. None when stopped before the last epoch."""
    kind, out_dir, config, dev = job.kind, job.out_dir, job.config, job.dev
    # a resumed run killed before its first last.pt starts from epoch 0 (its config was checked)
    resume = job.resume and (out_dir / runs.LAST).is_file()
    started = time.time()
    main = distributed.current().is_main
    trainer = _Trainer(kind, job.data, job.split, job.source, out_dir, config, dev)
    if resume:  # before anything is written
        trainer.check_resumed_split(out_dir / runs.CLASSES)
    elif job.resume and main:  # said, so that a restart is never mistaken for a continued run
        print(f"note: {out_dir} has no {runs.LAST} yet (stopped in its first epoch): training from epoch 1",
              file=sys.stderr)  # fmt: skip
    model, cfg = trainer.model, config.train
    one_val_class = len(job.split.val) == 1 and not trainer.entry.uses_captions
    if main and select and one_val_class and not cfg.select_last_epoch:
        print(
            f"note: split {job.split.name} has 1 val class: ZSL over one class is 1.0 at every epoch, so "
            "validation cannot choose one (the first is kept); more seen classes give more val classes, "
            "or set train.select_last_epoch: true",
            file=sys.stderr,
        )
    groups = optimizer_groups(model, cfg.lr, cfg.weight_decay, cfg.backbone_lr_factor)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, amsgrad=cfg.amsgrad)
    steps = trainer.steps_per_epoch()
    total, warmup = steps * cfg.epochs, steps * min(cfg.warmup_epochs, cfg.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total))
    scaler = torch.amp.GradScaler("cuda", enabled=trainer.amp == torch.float16)
    last_path, metrics_path = out_dir / runs.LAST, out_dir / runs.METRICS
    if main and job.before_write is not None:
        job.before_write()
    if main:  # a kill inside torch.save/save_file left a full copy behind: gone on the next start
        runs.remove_stale_temporaries(out_dir)
    if resume:
        start_epoch, best_score, best_epoch, seconds_before = _restore(
            last_path, dev, model, optimizer, scheduler, scaler
        )
        lines = _read_metrics(metrics_path, start_epoch)
        if main and runs.read_config(out_dir, kind).train.epochs != cfg.epochs:
            # `--resume --epochs M`: the run's length is M now, for the next --resume and for rsz-export
            save_config(config, out_dir / runs.CONFIG)
    else:
        start_epoch, best_score, best_epoch, seconds_before, lines = 0, -math.inf, -1, 0.0, []
        if main:
            out_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, out_dir / runs.CONFIG)
            runs.write_atomic(out_dir / runs.CLASSES, json.dumps(trainer.classes_record(seen_calibration)))
    if main:
        runs.write_atomic(metrics_path, "".join(line + "\n" for line in lines))

    stop = job.stop_after_epoch
    end_epoch = cfg.epochs if stop is None else min(cfg.epochs, stop)
    for epoch in range(start_epoch, end_epoch):
        t0 = time.time()
        losses = trainer.run_epoch(epoch, optimizer, scheduler, scaler)
        if not main:
            continue  # rank 0 validates and writes; the others wait for it in the next step's all-reduce
        score, val = trainer.validate() if select else (math.nan, {})
        last = epoch == cfg.epochs - 1
        improved = last if (cfg.select_last_epoch or not select) else score > best_score
        if improved:
            best_score, best_epoch = score, epoch
            runs.save_weights(model, out_dir / runs.WEIGHTS, kind)
        line = {
            "epoch": epoch + 1,
            "seconds": round(time.time() - t0, 2),
            "lr": optimizer.param_groups[0]["lr"],
            "losses": losses,
            "step_losses": [round(v, 6) for v in trainer.step_losses],  # of the global batch
            "val": val,
            "selection_score": score if select else None,
            "best": improved,
        }
        with open(metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        summary = f"epoch {epoch + 1}/{cfg.epochs}: loss {losses['loss']:.4f}"
        summary += f", val score {score:.4f}" if select else " (refit: no validation)"
        tqdm.write(summary + (" (best)" if improved and select else ""))
        runs.save_resume_state(
            last_path,
            {
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "best_score": best_score,
                "best_epoch": best_epoch,
                "seconds": seconds_before + time.time() - started,
            },
        )
    if end_epoch < cfg.epochs:
        return None
    if not main:  # rank 0 alone reloads, validates and reports
        return FitResult(trainer, best_epoch, {}, seen_calibration, time.time() - started)
    # Selection is over: reload the kept epoch, and (select) choose lambda on validation.
    from safetensors.torch import load_file

    kept, own = load_file(str(out_dir / runs.WEIGHTS)), model.state_dict()
    # Weights saved by _final_report may hold MCFA's final-stage classifier (a kill before report.json, or
    # `--resume --epochs M` of a finished run): the final stage fits it again, so only the model's own keys.
    model.load_state_dict({k: v for k, v in kept.items() if k in own})
    val = {}
    if select:
        _, val = trainer.validate()
        seen_calibration = float(val.get("seen_calibration", 0.0))
    return FitResult(trainer, best_epoch, val, seen_calibration, seconds_before + time.time() - started)


def _restore(last_path: Path, dev: torch.device, model, optimizer, scheduler, scaler) -> tuple:
    """Load last.pt into the loop's objects -> (next epoch, best score, best epoch, seconds so far)."""
    state = runs.load_resume_state(last_path, dev)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    return state["epoch"], state["best_score"], state["best_epoch"], state.get("seconds", 0.0)


def _final_report(fit: FitResult, kind: str, protocol: str, out_dir: Path, selection: dict | None) -> None:
    """Score the test split once with the kept weights and lambda; write report.json and classes.json."""
    trainer, cfg = fit.trainer, fit.trainer.config.train
    test = trainer.zsl_scores("test", fit.seen_calibration) or {}
    if trainer.entry.uses_captions:
        retrieval = trainer.retrieval("test")
        if retrieval is not None:
            test["retrieval"] = retrieval
    if selection is None:
        val, val_classes = fit.val, list(trainer.split.val)
        chosen = {
            "best_epoch": fit.best_epoch + 1,
            "selection": _selection_rule(cfg, trainer.entry.uses_captions, trainer.source),
        }
    else:
        val, val_classes = selection["val"], selection["val_classes"]
        chosen = {"best_epoch": selection["best_epoch"], "selection": _paper_selection(selection, trainer)}
    chosen.update(
        val=val,
        # the selection run's val classes (--protocol paper's refit has none), and what lambda was chosen on
        val_classes=val_classes,
        calibration=_calibration_rule(val, len(trainer.split.seen) - len(val_classes), len(val_classes)),
    )
    report = {
        "kind": kind,
        "protocol": protocol,
        "data": trainer.source.to_dict(),
        "split": trainer.split_name,
        "epochs": cfg.epochs,
        **chosen,
        "seen_calibration": fit.seen_calibration,
        "test": test,
        "label_space": _label_space(trainer, test),
        **({"unreadable_images": trainer.unreadable} if trainer.unreadable else {}),
        "note": TEST_NOTE,
        "seconds": round(fit.seconds + (selection or {}).get("seconds", 0.0), 1),
        "device": str(trainer.device),
        "processes": distributed.current().world_size,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if trainer.kept_classifier is not None:  # MCFA's final stage of the test split: kept with the weights
        trainer.model.keep_classifier(*trainer.kept_classifier)
        runs.save_weights(trainer.model, out_dir / runs.WEIGHTS, kind)
    runs.write_atomic(out_dir / runs.CLASSES, json.dumps(trainer.classes_record(fit.seen_calibration)))
    runs.write_atomic(out_dir / runs.REPORT, json.dumps(report, indent=2))
