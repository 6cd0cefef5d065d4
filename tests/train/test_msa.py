"""MSA: its losses on hand-checkable tensors, the masked multi-scale cross-attention, module shapes with
the real MiniLM, a few training steps and the export graphs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rsz_infer.errors import RszError
from rsz_train.losses import msa as L
from rsz_train.models.base import ClassSemantics, TaskInfo
from rsz_train.models.msa import MSAConfig, MultiScaleCrossAttention
from rsz_train.models.registry import create_model, model_entry

IMAGE_SIZE = 32
CAPTIONS = [
    "a runway with two parked planes",
    "dense red roofs of houses",
    "a river through green fields",
    "a parking lot full of cars",
]


def _config(**overrides: object) -> MSAConfig:
    defaults = {
        "backbone": "resnet_tiny",
        "pretrained": None,
        "model_dim": 32,
        "embed_dim": 24,
        "max_text_length": 16,
    }
    return MSAConfig(**{**defaults, **overrides})


def _task() -> TaskInfo:
    return TaskInfo([], [], [], IMAGE_SIZE, 2)


@pytest.fixture(scope="module")
def model():
    """A tiny-backbone MSA with the real MiniLM text tower, in eval mode (training tests build their own)."""
    return create_model("msa", _config(), _task()).eval()


# --- losses -------------------------------------------------------------------------------------------


def test_triplet_hardest_negative_by_hand_and_gradient_direction() -> None:
    similarity = torch.tensor([[0.9, 0.1], [0.5, 0.2]], requires_grad=True)
    loss = L.triplet_hardest_negative(similarity, margin=0.2)
    # image 0: relu(.2-.9+.1)=0, image 1: relu(.2-.2+.5)=.5
    # text 0: relu(.2-.9+.5)=0, text 1: relu(.2-.2+.1)=.1
    assert loss.item() == pytest.approx((0.25 + 0.05) / 2)
    loss.backward()
    assert similarity.grad[1, 1] < 0  # descending raises the positive similarity
    assert similarity.grad[1, 0] > 0 and similarity.grad[0, 1] > 0  # and lowers the hardest negatives
    assert similarity.grad[0, 0] == 0  # image 0 and text 0 already satisfy the margin


def test_triplet_moves_the_positive_embedding_closer() -> None:
    torch.manual_seed(0)
    images = torch.randn(4, 8, requires_grad=True)
    texts = torch.randn(4, 8)
    cosine = F.normalize(images, dim=-1) @ F.normalize(texts, dim=-1).T
    L.triplet_hardest_negative(cosine, margin=0.5).backward()
    moved = images.detach() - 0.5 * images.grad
    before = F.cosine_similarity(images.detach(), texts).sum()
    after = F.cosine_similarity(moved, texts).sum()
    assert after > before


def test_duplicates_are_not_negatives() -> None:
    similarity = torch.tensor([[0.9, 0.95], [0.95, 0.9]])
    assert L.triplet_hardest_negative(similarity, 0.2).item() > 0
    duplicates = torch.ones(2, 2, dtype=torch.bool)  # both captions are the same text
    assert L.triplet_hardest_negative(similarity, 0.2, duplicates).item() == 0.0
    assert L.info_nce_both_ways(similarity, duplicates).item() == pytest.approx(0.0, abs=1e-6)


def test_info_nce_both_ways_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    assert L.info_nce_both_ways(logits).item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)
    match = torch.stack([logits, logits * 0.5])  # two scales; alignment divides by the temperature
    expected = (math.log(1 + math.exp(-4)) + math.log(1 + math.exp(-2))) / 2
    assert L.scale_alignment_loss(match, temperature=0.5).item() == pytest.approx(expected, abs=1e-6)


def test_cross_scale_consistency_zero_when_scales_agree_and_teacher_is_detached() -> None:
    base = torch.tensor([[0.8, 0.1, 0.0], [0.2, 0.7, 0.1], [0.0, 0.3, 0.9]])
    agree = base.expand(3, 3, 3).clone().requires_grad_(True)
    assert L.cross_scale_consistency(agree, 0.1).item() == pytest.approx(0.0, abs=1e-6)
    differ = torch.stack([base.T, base * 0.1, base]).requires_grad_(True)
    loss = L.cross_scale_consistency(differ, 0.1)
    assert loss.item() > 0.01
    loss.backward()
    assert differ.grad[-1].abs().sum() == 0  # the largest scale is the teacher: no gradient
    assert differ.grad[0].abs().sum() > 0 and differ.grad[1].abs().sum() > 0


# --- MSCMAT -------------------------------------------------------------------------------------------


def test_cross_attention_ignores_padding_and_batched_matrix_matches_pairs() -> None:
    torch.manual_seed(0)
    head = MultiScaleCrossAttention(8).eval()
    scales, tokens = torch.randn(3, 4, 8), torch.randn(3, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    changed = tokens.clone()
    changed[mask == 0] = torch.randn(int((mask == 0).sum()), 8) * 10  # padded states must not matter
    with torch.no_grad():
        score, score_changed = head(scales, tokens, mask), head(scales, changed, mask)
        matrix, matrix_changed = (
            head.match_matrix(scales, tokens, mask),
            head.match_matrix(scales, changed, mask),
        )
        paired = head.paired(scales, tokens, mask)
    assert score.shape == (3,) and matrix.shape == (4, 3, 3) and paired.shape == (4, 3)
    assert torch.allclose(score, score_changed, atol=1e-6)
    assert torch.allclose(matrix, matrix_changed, atol=1e-6)
    assert torch.allclose(matrix.diagonal(dim1=1, dim2=2), paired, atol=1e-6)
    assert torch.allclose(score, paired.mean(0))
    changed[0, 4] += 1.0  # a real token of text 0 does change its scores
    assert not torch.allclose(head(scales, tokens, mask)[0], head(scales, changed, mask)[0])


# --- the model ----------------------------------------------------------------------------------------


def test_registry_entry_uses_captions() -> None:
    entry = model_entry("msa")
    assert entry.uses_captions and entry.config_cls is MSAConfig and entry.sampler == "random"


def test_tokenize_and_shapes(model) -> None:
    tokens = model.tokenize(CAPTIONS + ["word " * 40])
    assert tokens["input_ids"].dtype == torch.int64 and tokens["attention_mask"].dtype == torch.int64
    assert tokens["input_ids"].shape == (5, 16)  # cut at max_text_length
    with torch.no_grad():
        assert model.encode_images(torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)).shape == (3, 24)
        assert model.encode_classes(tokens).shape == (5, 24)
        match = model.match_matrix(torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE), tokens)
    assert match.shape == (4, 3, 5)
    assert model.scoring_rule == "cosine" and model.class_embedding == "text"
    assert model.logit_scale() == pytest.approx(10.0)


def test_class_inputs_tokenize_the_prompts(model) -> None:
    semantics = ClassSemantics(
        ["airport", "farmland"],
        ["planes on runways", "green crop fields"],
        np.zeros((2, 0)),
        np.zeros((2, 384), np.float32),
    )
    assert model.class_prompts(semantics) == [
        "a satellite image of planes on runways",
        "a satellite image of green crop fields",
    ]
    inputs = model.class_inputs(semantics)
    assert torch.equal(inputs["input_ids"], model.tokenize(model.class_prompts(semantics))["input_ids"])
    with torch.no_grad():
        assert model.encode_classes(inputs).shape == (2, 24)


def test_bad_prompt_is_a_one_line_error() -> None:
    with pytest.raises(RszError, match="text_prompt='a photo of {label}'"):
        create_model("msa", _config(text_prompt="a photo of {label}"), _task())


def test_only_the_last_text_layers_are_trainable(model) -> None:
    layers = model.text.encoder.transformer.encoder.layer
    trainable = [any(p.requires_grad for p in layer.parameters()) for layer in layers]
    assert trainable == [False] * (len(layers) - 2) + [True, True]
    assert not any(p.requires_grad for p in model.text.encoder.transformer.embeddings.parameters())
    assert not any(p.requires_grad for p in model.image.backbone.parameters())
    groups = model.parameter_groups(1e-3)
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-4)]
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)


def test_training_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    model = create_model("msa", _config(class_weight=0.5, text_trainable_layers=1), _task()).train()
    tokens = model.tokenize(CAPTIONS)
    labels = torch.tensor([0, 1, 0, 1])
    images = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE) + torch.arange(4).float().view(-1, 1, 1, 1)
    semantics = ClassSemantics(["a", "b"], ["runways", "houses"], np.zeros((2, 0)), np.zeros((2, 384)))
    batch = {"image": images, "label": labels, "class_inputs": model.class_inputs(semantics), **tokens}
    optimizer = torch.optim.AdamW(model.parameter_groups(3e-3))
    history = []
    for _ in range(10):
        parts = model.training_losses(batch)
        assert {"triplet", "contrastive", "alignment", "consistency", "class", "loss"} <= set(parts)
        optimizer.zero_grad()
        parts["loss"].backward()
        optimizer.step()
        history.append(parts["loss"].item())
    assert np.mean(history[-3:]) < 0.7 * np.mean(history[:3])


def test_export_graphs_run_with_the_documented_names_and_shapes(model) -> None:
    graphs = {g.role: g for g in model.export_graphs()}
    assert set(graphs) == {"image", "text", "rerank"}
    assert (graphs["image"].input_names, graphs["image"].output_names) == (["image"], ["embedding", "scales"])
    assert graphs["text"].input_names == ["input_ids", "attention_mask"]
    assert graphs["text"].output_names == ["embedding", "tokens"]
    assert graphs["rerank"].input_names == ["scales", "tokens", "attention_mask"]
    assert graphs["rerank"].output_names == ["score"]
    images = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    tokens = model.tokenize(CAPTIONS[:2])
    with torch.no_grad():
        embedding, scales = graphs["image"].module(images)
        text_embedding, token_states = graphs["text"].module(tokens["input_ids"], tokens["attention_mask"])
        score = graphs["rerank"].module(scales, token_states, tokens["attention_mask"])
        assert torch.allclose(embedding, model.encode_images(images), atol=1e-5)
        assert torch.allclose(text_embedding, model.encode_classes(tokens), atol=1e-5)
        match = model.match_matrix(images, tokens)
        for graph in graphs.values():
            graph.module(*graph.example_inputs)
    length = tokens["input_ids"].shape[1]
    assert embedding.shape == (2, 24) and scales.shape == (2, 4, 32)
    assert text_embedding.shape == (2, 24) and token_states.shape == (2, length, 32)
    assert score.shape == (2,)
    assert torch.allclose(score, match.diagonal(dim1=1, dim2=2).mean(0), atol=1e-5)  # reranker = paired match


def test_authors_alignment_and_consistency_by_hand() -> None:
    """yr666666/MSA retrieval.py: `loss_cross = loss_cross1 + ... + loss_cross4` with
    `CrossEntropyLoss(out_sim[s], label_interact)`, and
    `element_neig_rank_loss(out_sim[3], out_sim[s], 2)`
    = `F.kl_div(softmax(sim_3.detach() / 2, dim=0).t().log(), softmax(sim_s / 2, dim=0).t(),
    reduction='mean')`
    summed over s = 0, 1, 2 (here two scales: one student, one teacher)."""
    from rsz_train.losses.msa import authors_cross_scale_consistency, authors_scale_alignment

    student = torch.tensor([[0.9, 0.1], [0.2, 0.6]])
    teacher = torch.tensor([[0.8, 0.3], [0.1, 0.7]])
    match = torch.stack([student, teacher])
    # cross-entropy rows: image 0 -> text 0, image 1 -> text 1, per scale, summed over scales
    ce = lambda m: np.mean([np.log(np.exp(m[i]).sum()) - m[i, i] for i in range(2)])  # noqa: E731
    expected = ce(student.numpy()) + ce(teacher.numpy())
    assert float(authors_scale_alignment(match)) == pytest.approx(expected, abs=1e-6)
    # KL(student || teacher) over images (dim 0) per text, at t = 2, mean over the 4 elements
    p = np.exp(student.numpy() / 2) / np.exp(student.numpy() / 2).sum(axis=0)
    q = np.exp(teacher.numpy() / 2) / np.exp(teacher.numpy() / 2).sum(axis=0)
    kl = (p * (np.log(p) - np.log(q))).sum() / 4
    assert float(authors_cross_scale_consistency(match, 2.0)) == pytest.approx(kl, abs=1e-7)
    # and it is torch's kl_div exactly as the authors call it
    with pytest.warns(UserWarning):  # torch warns that 'mean' is not 'batchmean': the authors' choice
        theirs = F.kl_div(
            torch.log_softmax(teacher / 2, 0).T, torch.softmax(student / 2, 0).T, reduction="mean"
        )
    assert float(authors_cross_scale_consistency(match, 2.0)) == pytest.approx(float(theirs), abs=1e-7)
    # the teacher (largest scale) is detached: only the student gets gradients
    match = match.clone().requires_grad_(True)
    authors_cross_scale_consistency(match, 2.0).backward()
    assert match.grad[1].abs().sum() == 0 and match.grad[0].abs().sum() > 0


def test_mscmat_matcher_global_text_term_padding_and_pairs() -> None:
    from rsz_train.models.msa import MSCMATMatcher

    torch.manual_seed(0)
    head = MSCMATMatcher(16, num_scales=2, heads=4).eval()
    scales, tokens = torch.randn(3, 2, 16), torch.randn(4, 5, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    with torch.no_grad():
        matrix = head.match_matrix(scales, tokens, mask)
        assert matrix.shape == (2, 3, 4) and ((matrix > 0) & (matrix < 1)).all()  # sigmoid scores
        # padded tokens carry no weight: changing them changes nothing
        changed = tokens.clone()
        changed[mask == 0] = 100.0
        assert torch.allclose(head.match_matrix(scales, changed, mask), matrix, atol=1e-6)
        # the global text term: the CLS token (position 0) enters the match, not only as a key
        cls_changed = tokens.clone()
        cls_changed[:, 0] += 1.0
        assert not torch.allclose(head.match_matrix(scales, cls_changed, mask), matrix)
        # paired (the rerank graph) is the diagonal of the matrix for images b with texts b
        paired = head.paired(scales, tokens[:3], mask[:3])
        assert torch.allclose(paired, matrix[:, torch.arange(3), torch.arange(3)], atol=1e-6)


def test_authors_matcher_and_losses_train_and_export_the_rerank_graph(tmp_path) -> None:
    torch.manual_seed(0)
    config = _config(matcher="mscmat", matcher_heads=4, loss_form="authors", contrastive_weight=0.0)
    model = create_model("msa", config, _task()).train()
    tokens = model.tokenize(CAPTIONS)
    images = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE) + torch.arange(4).float().view(-1, 1, 1, 1)
    batch = {"image": images, "label": torch.tensor([0, 1, 0, 1]), **tokens}
    optimizer = torch.optim.AdamW(model.parameter_groups(3e-3))
    history = []
    for _ in range(10):
        parts = model.training_losses(batch)
        optimizer.zero_grad()
        parts["loss"].backward()
        optimizer.step()
        history.append(parts["alignment"].item())
    assert np.mean(history[-3:]) < np.mean(history[:3])
    model.eval()
    graphs = {g.role: g for g in model.export_graphs()}
    with torch.no_grad():
        _, scales = graphs["image"].module(images[:2])
        _, states = graphs["text"].module(tokens["input_ids"][:2], tokens["attention_mask"][:2])
        score = graphs["rerank"].module(scales, states, tokens["attention_mask"][:2])
        match = model.match_matrix(images[:2], {k: v[:2] for k, v in tokens.items()})
    assert torch.allclose(score, match.diagonal(dim1=1, dim2=2).mean(0), atol=1e-5)
    import onnxruntime as ort

    from rsz_export.onnx_export import export_onnx

    path = export_onnx(graphs["rerank"], tmp_path / "rerank.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {
        "scales": scales.numpy(),
        "tokens": states.numpy(),
        "attention_mask": tokens["attention_mask"][:2].numpy(),
    }
    np.testing.assert_allclose(session.run(None, feeds)[0], score.numpy(), atol=1e-5)


# --- msa_resnet50 as the authors trained it -----------------------------------------------------------
# Line numbers below are of yr666666/MSA at commit 1a93f1eceaf6f4c262f4fe18d7b46530a976653b (retrieval.py,
# model.py, data.py, eval.py, log) and a1ebd8527ecc7ceaab1ba60db934af7869953824 (option/RSITMD.ymal).


def _authors_triplet_sum(cosine: np.ndarray, margin: float) -> float:
    """retrieval.py lines 256-289 with triplet_loss (lines 92-113), written out: each image's hardest negative
    text is the argmin of the cosine distance `cdist(..., 'cosine')` with the diagonal multiplied by 1e6
    (`mask_mat`, line 261), likewise each text's hardest image; a hinge is
    max(0, margin + (2 - cos_pos) - (2 - cos_neg)) and both directions are summed over the batch
    (line 111)."""
    size = len(cosine)
    mask = 1e6 * np.eye(size) + (1 - np.eye(size))
    negative_text = (mask * (1 - cosine)).argmin(axis=1)  # img_neg_text_idx, line 268
    negative_image = (mask * (1 - cosine.T)).argmin(axis=1)  # text_neg_img_idx, line 274 (cdist(text, image))
    positive = np.diag(cosine)
    rows = np.arange(size)
    image_side = np.maximum(0, margin + (2 - positive) - (2 - cosine[rows, negative_text]))
    text_side = np.maximum(0, margin + (2 - positive) - (2 - cosine[negative_image, rows]))
    return float(image_side.sum() + text_side.sum())


def test_msa_resnet50_triplet_term_is_the_authors_sum() -> None:
    """The authors' triplet loss is a sum over the batch (retrieval.py line 111: torch.sum of each direction's
    hinges, margin 0.5 at line 101, weight 1 at line 293); rsz's triplet_hardest_negative is the mean of the
    two directions' batch means, so msa_resnet50's triplet_weight is 2 x batch_size."""
    cosine = np.array([[0.9, 0.6, 0.1], [0.3, 0.5, 0.4], [0.2, 0.7, 0.8]])
    # Images: hardest texts 0.6, 0.4, 0.7 -> hinges .5-.9+.6=.2, .5-.5+.4=.4, .5-.8+.7=.4
    # Texts: hardest images 0.3, 0.7, 0.4 -> hinges max(0, .5-.9+.3)=0, .5-.5+.7=.7, .5-.8+.4=.1
    assert _authors_triplet_sum(cosine, 0.5) == pytest.approx(1.8)
    rsz_mean = float(L.triplet_hardest_negative(torch.tensor(cosine), 0.5))
    assert rsz_mean == pytest.approx((1.0 / 3 + 0.8 / 3) / 2)
    assert 2 * 3 * rsz_mean == pytest.approx(1.8)
    # The shipped config on a full batch of its own size
    from rsz_train.config import load_config

    config = load_config("msa", "msa_resnet50")
    size, margin = config.train.batch_size, config.model.margin
    assert margin == 0.5 and config.model.triplet_weight == 2 * size
    rng = np.random.default_rng(0)
    images, texts = rng.normal(size=(size, 8)), rng.normal(size=(size, 8))
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    cosine = images @ texts.T
    weighted = config.model.triplet_weight * float(L.triplet_hardest_negative(torch.tensor(cosine), margin))
    assert weighted == pytest.approx(_authors_triplet_sum(cosine, margin), rel=1e-9)


def test_msa_resnet50_trains_as_retrieval_py() -> None:
    """The shipped paper-size config against the authors' training (retrieval.py unless named):
    - batches of 32: `data.get_loaders(options["dataset"]["batch_size"], ...)` (line 146) with
      option/RSITMD.ymal `batch_size: 32` (line 26). Their log rules out 128: each step's loss is at least
      15 x 4 scales x the cross-entropy of sigmoid scores in (0, 1), log(e + B - 1) - 1 per image, i.e. 232
      for B = 128, and the log's last epoch averages `mean_loss=157.1908` (151 for B = 32).
    - 60 epochs (line 479) over every caption: data.py line 37 makes one item per (image, caption); an rsz
      epoch is one pass over the images with one random caption each (train.pick_captions), so 300 rsz
      epochs see as many pairs, in about as many steps (RSITMD: `train: 21455` captions in their log);
    - AdamW lr 1e-5 (line 480) for every part (lines 160-163), weight decay 0.1 (line 164), no gradient
      clipping between loss.backward() and optimizer.step() (lines 300-301), no lr schedule;
    - no augmentation: data.py get_transform is Resize(224), ToTensor, Normalize (lines 112-118);
    - losses: triplet + 15 x loss_cross + 10 x ms_consis_loss (line 293), the KL at temperature 2
      (lines 247-249); BERT's tokens are 768 wide in 12 heads (model.py line 272): 64 per head."""
    from rsz_train.config import load_config
    from rsz_train.data.batches import random_batches

    config = load_config("msa", "msa_resnet50")
    model, train = config.model, config.train
    assert train.batch_size == 32
    assert (train.lr, train.weight_decay, train.warmup_epochs) == (1e-5, 0.1, 0)
    assert train.grad_clip == 0 and train.augment is False and train.image_size == 224
    captions_per_image, authors_epochs, captions = 5, 60, 21455
    assert train.epochs == authors_epochs * captions_per_image
    images = captions // captions_per_image
    assert train.epochs * images == authors_epochs * captions  # pairs seen
    rsz_steps = train.epochs * len(random_batches(images, train.batch_size, np.random.default_rng(0)))
    authors_steps = authors_epochs * math.ceil(captions / train.batch_size)
    assert abs(rsz_steps - authors_steps) / authors_steps < 0.01
    assert model.text_lr_scale == 1.0 and model.text_trainable_layers == -1 and not model.freeze_backbone
    assert (model.matcher, model.loss_form) == ("mscmat", "authors")
    assert model.triplet_weight == 2 * train.batch_size  # their weight 1 on a sum (the test above)
    assert (model.alignment_weight, model.consistency_weight) == (15.0, 10.0)
    assert model.contrastive_weight == 0.0 and model.consistency_temperature == 2.0
    assert model.model_dim // model.matcher_heads == 768 // 12


def _layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    variance = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # biased, as LayerNorm's
    return (x - mean) / torch.sqrt(variance + norm.eps) * norm.weight + norm.bias


def _authors_match(head, s: int, scale: torch.Tensor, tokens: torch.Tensor, length: int) -> float:
    """model.py Multi_img_crossatt.forward for one (image, text) pair at scale s, written out with the
    matcher's weights: the query is the LayerNorm'd scale feature (line 309, `ln_pre_t(multi1)`), keys and
    values the LayerNorm'd tokens after the first (`ln_pre_i(text_embedding)`; Bert.forward line 243 passes
    `sequence_outputs[:, 1:, :]`), attention per head over the text's `length` real tokens, softmax of
    q.k / sqrt(head width), heads concatenated and projected; then (line 320)
    sigmoid(match_fc((read + text_cls) * scale feature)), text_cls the first (CLS) token."""
    attention = head.attention[s]
    wq, wk, wv = attention.in_proj_weight.chunk(3)
    bq, bk, bv = attention.in_proj_bias.chunk(3)
    query = _layer_norm(scale, head.image_norm) @ wq.T + bq
    words = _layer_norm(tokens[1:length], head.text_norm)
    keys, values = words @ wk.T + bk, words @ wv.T + bv
    width = query.shape[0] // attention.num_heads
    read = []
    for h in range(attention.num_heads):
        part = slice(h * width, (h + 1) * width)
        weights = torch.softmax(keys[:, part] @ query[part] / math.sqrt(width), dim=0)
        read.append(weights @ values[:, part])
    read = torch.cat(read) @ attention.out_proj.weight.T + attention.out_proj.bias
    joint = (read + tokens[0]) * scale
    return float(torch.sigmoid(joint @ head.match[s].weight[0] + head.match[s].bias[0]))


def test_mscmat_is_the_authors_formula_pair_by_pair() -> None:
    """Every (image, text) score of MSCMATMatcher at every scale equals model.py's MSCMAT (lines 301-323)
    computed pair by pair as retrieval.py's interact_cross (lines 437-471) pairs them: row i of a scale's
    matrix is image i with every text. Text 2 is padded: rsz gives its padding no weight, so its expected
    score is the formula over its real tokens (the authors pass no mask: DESIGN.md)."""
    from rsz_train.models.msa import MSCMATMatcher

    torch.manual_seed(0)
    head = MSCMATMatcher(8, num_scales=2, heads=2).eval()
    with torch.no_grad():  # LayerNorms and biases away from their initial 1 / 0, so that each one counts
        for p in head.parameters():
            p.add_(0.3 * torch.randn_like(p))
    scales, tokens = torch.randn(2, 2, 8), torch.randn(3, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    lengths = mask.sum(dim=1).tolist()
    with torch.no_grad():
        matrix = head.match_matrix(scales, tokens, mask)
        paired = head(scales, tokens[:2], mask[:2])
        for s in range(2):
            for i in range(2):
                for j in range(3):
                    expected = _authors_match(head, s, scales[i, s], tokens[j], lengths[j])
                    assert float(matrix[s, i, j]) == pytest.approx(expected, abs=1e-6), (s, i, j)
        # the rerank graph: image b with text b, averaged over the scales
        for b in range(2):
            per_scale = [_authors_match(head, s, scales[b, s], tokens[b], lengths[b]) for s in range(2)]
            assert float(paired[b]) == pytest.approx(np.mean(per_scale), abs=1e-6)


def _authors_recalls(sims: np.ndarray) -> list[float]:
    """eval.py i2t5 (lines 45-79) and t2i5 (lines 82-112) on sims [N images, 5N captions], caption c of
    image c // 5 (retrieval.py line 396 keeps every 5th image row): an image's rank is the best position of
    its 5 captions in its descending order of texts, a caption's the position of its image; R@K = 100 x the
    share of ranks < K; mR the mean of the six (line 401)."""
    n = sims.shape[0]
    position = lambda order, item: int(np.where(order == item)[0][0])  # noqa: E731
    i2t = [min(position(np.argsort(-sims[i]), c) for c in range(5 * i, 5 * i + 5)) for i in range(n)]
    t2i = [position(np.argsort(-sims[:, c]), c // 5) for c in range(5 * n)]
    recalls = [100.0 * np.mean(np.array(ranks) < k) for ranks in (i2t, t2i) for k in (1, 5, 10)]
    return recalls + [float(np.mean(recalls))]


def test_retrieval_scores_are_the_authors_i2t5_t2i5_and_mr() -> None:
    """rsz's retrieval figures (rsz_infer.metrics.retrieval_metrics, through evaluate.retrieval_scores in
    training) are the authors' eval.py i2t5 / t2i5 and mR on data without ties, 5 captions per image."""
    from rsz_infer.metrics import retrieval_metrics
    from rsz_train.evaluate import retrieval_scores

    # 3 images, captions 0-4 of image 0, 5-9 of image 1, 10-14 of image 2 (hundredths, no ties). Best caption
    # of image 0: text 0, first (rank 0); of image 1: text 5 (85) below texts 0, 10, 11 (rank 3); of image 2:
    # text 10 (60) below texts 0, 1, 2, 3, 5, 6, 7 (rank 7).
    hundredths = [
        [90, 80, 70, 60, 50, 40, 30, 20, 10, 5, 45, 35, 25, 15, 1],
        [95, 40, 30, 25, 10, 85, 55, 50, 35, 20, 92, 88, 15, 5, 2],
        [99, 97, 93, 91, 48, 89, 87, 75, 40, 3, 60, 30, 20, 12, 8],
    ]
    sims = np.array(hundredths) / 100.0
    # Captions: its image first in texts 4 (50 > 48 > 10), 9 (20 > 5 > 3) and 14 (8 > 2 > 1) only
    expected = [100 / 3, 200 / 3, 100.0, 20.0, 100.0, 100.0]
    expected.append(sum(expected) / 6)  # 70
    report = retrieval_metrics(sims, np.repeat(np.arange(3), 5))
    keys = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR"]
    assert [report[k] for k in keys] == pytest.approx(expected)
    assert _authors_recalls(sims) == pytest.approx(expected)
    # 12 images (so text -> image R@5 and R@10 are not trivially 100), cosines of random embeddings: the
    # authors' np.dot of L2-normalised features (retrieval.py lines 389-390)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(12, 6))
    texts = np.repeat(images, 5, axis=0) + 1.5 * rng.normal(size=(60, 6))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    theirs = _authors_recalls(unit(images) @ unit(texts).T)
    assert 0 < theirs[0] < 100 and 0 < theirs[4] < 100  # i2t R@1 and t2i R@5 discriminate
    text_to_image = np.repeat(np.arange(12), 5)
    report = retrieval_scores(images.astype(np.float32), texts.astype(np.float32), text_to_image)
    assert [report[k] for k in keys] == pytest.approx(theirs)
