"""Config loading, in-memory batches and the evaluation functions on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rsz_infer.errors import RszError
from rsz_infer.preprocess import PreprocessSpec, to_model_input
from rsz_train.config import load_config
from rsz_train.data import batches as td
from rsz_train.evaluate import retrieval_scores, zsl_gzsl_scores
from rsz_train.runs import read_seen_calibration


def test_config_yaml_overrides_and_unknown_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  logit_scale: 8\ntrain:\n  epochs: 3\n  lr: 0.01\n")
    config = load_config("dsva", path, {"train.batch_size": 16})
    assert config.model.logit_scale == 8.0 and isinstance(config.model.logit_scale, float)
    assert (config.train.epochs, config.train.lr, config.train.batch_size) == (3, 0.01, 16)

    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(RszError, match=r"c\.yaml: train: unknown key 'epoch'"):
        load_config("dsva", path)
    path.write_text("train:\n  epochs: many\n")
    with pytest.raises(RszError, match="epochs: expected int"):
        load_config("dsva", path)
    path.write_text("kind: msa\n")
    with pytest.raises(RszError, match="not 'dsva'"):
        load_config("dsva", path)
    with pytest.raises(RszError, match="config file not found"):
        load_config("dsva", tmp_path / "missing.yaml")


def test_dsva_training_defaults_and_their_override(tmp_path):
    # DSVA's own defaults (24 epochs with CutMix, chosen on validation) replace TrainConfig's; a config
    # file wins; the paper-size configs train as the authors did, without CutMix.
    config = load_config("dsva")
    train = config.train
    assert (train.epochs, train.batch_size, train.phrase_ridge, train.image_size) == (24, 32, 0.3, 96)
    assert (config.model.attribute_mix, config.model.hubness_penalty, config.model.hubness_neighbours) == (
        0.5,
        0.5,
        3,
    )
    assert not train.select_last_epoch
    for paper_size in ("dsva_vit_b32", "dsva_vit_b16"):
        paper = load_config("dsva", paper_size)
        assert (paper.model.attribute_mix, paper.model.hubness_penalty, paper.train.image_size) == (
            0.0,
            0.0,
            224,
        )
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 4\n")
    assert load_config("dsva", path).train.epochs == 4


@pytest.mark.parametrize("setting", ["attribute_mix", "hubness_penalty"])
def test_a_run_written_before_a_setting_existed_reads_as_it_trained(setting, tmp_path):
    """CutMix and the hubness correction came with defaults of 0.5: a run whose config.yaml predates
    them trained (and was scored) without them, and resumes and exports without them."""
    from rsz_train.config import save_config
    from rsz_train.runs import read_config

    save_config(load_config("dsva"), tmp_path / "config.yaml")
    assert getattr(read_config(tmp_path, "dsva").model, setting) == 0.5  # written today: its own value
    text = (tmp_path / "config.yaml").read_text()
    older = "".join(line for line in text.splitlines(keepends=True) if setting not in line)
    assert older != text
    (tmp_path / "config.yaml").write_text(older)
    assert getattr(read_config(tmp_path, "dsva").model, setting) == 0.0


def test_batches_use_the_inference_preprocessing(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    spec = PreprocessSpec(size=16)
    images = td.load_images(tmp_path, ["a.png"], 16)
    batch = td.image_batch(images, spec).numpy()
    np.testing.assert_array_equal(batch[0], to_model_input(rgb, spec))
    # augmentation is a rotation/flip of the same pixels
    augmented = td.image_batch(images, spec, np.random.default_rng(3)).numpy()[0]
    assert np.allclose(np.sort(augmented.ravel()), np.sort(batch[0].ravel()))
    with pytest.raises(RszError, match="b.png: cannot read image"):
        (tmp_path / "b.png").write_text("not an image")
        td.load_images(tmp_path, ["b.png"], 16)


def test_training_decodes_16_bit_tiles_as_rsz_infer_does(tmp_path):
    """A 16-bit TIFF tile (grey, values to 4000) is stretched as rsz-infer stretches it, not clipped to
    255 by Pillow's convert: a model trains on the pixels it will label."""
    from rsz_infer.images import TileOptions, decode_tile, discover_tiles

    grey = np.random.default_rng(1).integers(0, 4000, size=(40, 40), dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "sixteen.tif")
    options = TileOptions()
    [tile] = discover_tiles([tmp_path], options)
    labeled, rule = decode_tile(tile, options)
    assert "stretch" in rule
    trained = td.load_images(tmp_path, ["sixteen.tif"], 40)[0]
    np.testing.assert_array_equal(trained, labeled)
    assert len(np.unique(trained)) > 100  # (clipping at 255 leaves almost every pixel at 255)


def test_samplers_are_seeded_and_balanced():
    labels = np.repeat(np.arange(4), 10)
    a = td.class_balanced_batches(labels, 2, 3, np.random.default_rng(5))
    b = td.class_balanced_batches(labels, 2, 3, np.random.default_rng(5))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    for batch in a:
        counts = np.bincount(labels[batch], minlength=4)
        assert sorted(counts[counts > 0].tolist()) == [3, 3]
    batches = td.random_batches(10, 4, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))


def test_zsl_gzsl_scores_hand_computed():
    # classes 0,1 seen (training), 2,3 unseen; "dot" rule, scale 1: logits = embedding @ class_emb.T
    class_emb = np.eye(4, dtype=np.float32)
    image_emb = np.array(
        [
            [1.0, 0.0, 0.0, 0.0],  # seen 0, right
            [0.0, 1.0, 0.9, 0.0],  # seen 1, right
            [0.0, 0.0, 1.0, 0.0],  # unseen 2, right
            [0.0, 0.0, 0.3, 0.5],  # unseen 3, right in ZSL, ...
            [0.0, 0.8, 0.0, 0.6],  # unseen 3, wrong in GZSL without calibration (seen 1 wins)
        ],
        dtype=np.float32,
    )
    labels = np.array([0, 1, 2, 3, 3])
    out = zsl_gzsl_scores(image_emb, labels, class_emb, [0, 1], [2, 3], "dot", 1.0, seen_calibration=None)
    assert out["zsl"] == pytest.approx(1.0)  # among unseen only, every unseen image is right
    uncal = out["gzsl_uncalibrated"]
    assert uncal["S"] == pytest.approx(1.0) and uncal["U"] == pytest.approx((1.0 + 0.5) / 2)
    # Any lambda that flips image 4 to class 3 (> 0.2) also flips image 1 to class 2 (> 0.1): the
    # chosen lambda keeps the better trade, never worse than no calibration (lambda 0 is a candidate).
    assert out["gzsl"]["H"] >= uncal["H"]
    fixed = zsl_gzsl_scores(image_emb, labels, class_emb, [0, 1], [2, 3], "dot", 1.0, seen_calibration=0.25)
    assert fixed["gzsl"]["U"] == pytest.approx(1.0)
    assert fixed["gzsl"]["S"] == pytest.approx(0.5)  # image 1 now goes to unseen class 2
    assert fixed["seen_calibration"] == 0.25


def test_retrieval_scores_hand_computed():
    images = np.eye(3, dtype=np.float32)
    texts = np.array([[1, 0, 0], [0, 1, 0], [0, 0.9, 0.1], [1, 0, 0]], dtype=np.float32)
    text_to_image = np.array([0, 1, 2, 0])
    out = retrieval_scores(images, texts, text_to_image)
    assert out["t2i_r1"] == pytest.approx(75.0)  # text 2 finds image 1 first
    assert out["i2t_r1"] == pytest.approx(100.0)  # each image's best text is one of its captions
    assert out["mR"] == pytest.approx(np.mean([out[k] for k in out if k != "mR"]))


def test_attributes_from_images_is_the_mean_image_phrase_cosine():
    from rsz_train.attribute_generation import attributes_from_images

    # A toy dual encoder: an image's embedding is its mean colour, a phrase's is a fixed colour axis.
    axes = {"red": [1.0, 0.0, 0.0], "green": [0.0, 1.0, 0.0]}
    images = np.zeros((3, 2, 2, 3), dtype=np.uint8)
    images[0, ..., 0] = 255  # class 0: pure red
    images[1, ..., 1] = 255  # class 1: pure green ...
    images[2, ..., :2] = 255  # ... and yellow (cosine 1/sqrt(2) to both axes)
    matrix = attributes_from_images(
        images,
        np.array([0, 1, 1]),
        2,
        ["red", "green"],
        lambda batch: batch.reshape(len(batch), -1, 3).mean(axis=1),
        lambda texts: np.array([axes[t] for t in texts]),
        batch_size=2,
    )
    s = 1 / np.sqrt(2)
    np.testing.assert_allclose(matrix, [[1.0, 0.0], [s / 2, (1 + s) / 2]], atol=1e-6)
    with pytest.raises(RszError, match="class 1 has no images"):
        attributes_from_images(images[:1], np.array([0]), 2, ["red"], lambda b: b, lambda t: t)


def test_old_runs_calibration_keys_still_read():
    """Runs written before the lambda had one name: "calibration" (selection report, validation scores)
    and "lambda" (gzsl scores) still give the lambda; the new name wins where both are there."""
    assert read_seen_calibration({"best_epoch": 3, "calibration": 0.25}) == 0.25
    assert read_seen_calibration({"U": 0.5, "S": 0.5, "H": 0.5, "lambda": 0.125}) == 0.125
    assert read_seen_calibration({"seen_calibration": 0.5, "calibration": 0.25}) == 0.5
    with pytest.raises(KeyError):
        read_seen_calibration({"best_epoch": 3})
