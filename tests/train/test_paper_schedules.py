"""The authors' training as paper-size options: DSVA's per-branch losses and local-branch scoring, the frozen
backbone epochs, the backbone learning-rate factor and classes x images episodes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rsz_train.config import load_config
from rsz_train.data.batches import class_balanced_batches
from rsz_train.models.base import TaskInfo
from rsz_train.models.dsva import DSVAConfig
from rsz_train.models.registry import create_model
from rsz_train.train import backbone_parameters, optimizer_groups, train

from .conftest import TINY_OVERRIDES


def _task() -> TaskInfo:
    names = [f"a{i}" for i in range(4)]
    return TaskInfo(names, [f"phrase {n}" for n in names], ["g"] * 4, 32, 3)


def _softmax_xe(logits: np.ndarray, labels: np.ndarray) -> float:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def test_dsva_per_branch_losses_follow_the_authors_loss_fn():
    """wenjiaXu/RS_Scene_ZSL model/main_utils.py (commit 9acbc9fa), Loss_fn, its four statements (lines
    603, 608, 627 and 632)
    `loss_xe = reg_weight['final']['xe'] * criterion(output, label_v)`,
    `loss_attri = reg_weight['final']['attri'] * criterion_regre(pre_attri['final'], label_a)`,
    `layer_xe = reg_weight[name]['l_xe'] * criterion(pre_class[name], label_v)`,
    `loss_attri = reg_weight[name]['attri'] * criterion_regre(pre_attri[name], label_a)`
    (CrossEntropyLoss, MSELoss; weights of script/01_ZSL_43_11.sh: --xe 1 --attri 1e-2 --l_xe 1
    --l_attri 8e-2). rsz feeds logits, not the authors' softmax outputs, to the cross-entropy (DESIGN.md:
    departures), so here each branch's logits are scale * cosine(branch, class)."""
    config = load_config("dsva", "dsva_vit_b32").model
    config = DSVAConfig(
        **{**config.__dict__, "backbone": "vit_tiny", "concentration_weight": 0.0}
    )  # the paper's weights on a small ViT
    torch.manual_seed(0)
    model = create_model("dsva", config, _task()).eval()
    images = torch.randn(5, 3, 32, 32)
    classes = torch.tensor([[1.0, 0, 0, 1], [0, 1, 1, 0], [1, 1, 0, 0]])
    labels = torch.tensor([0, 2, 1, 1, 0])
    with torch.no_grad():
        losses = model.training_losses({"image": images, "label": labels, "class_inputs": classes})
        out = model.attribute_outputs(images)
    scale = float(model.scale().detach())
    cls = classes.numpy() / np.linalg.norm(classes.numpy(), axis=1, keepdims=True)
    y = labels.numpy()
    expected = 0.0
    for branch, xe_w, mse_w in (("global", 1.0, 0.01), ("local", 1.0, 0.08)):
        pred = out[branch].numpy()
        cos = (pred / np.linalg.norm(pred, axis=1, keepdims=True)) @ cls.T
        expected += xe_w * _softmax_xe(scale * cos, y) + mse_w * float(
            ((pred - classes.numpy()[y]) ** 2).mean()
        )
    assert abs(float(losses["loss"]) - expected) < 1e-4
    # the authors report the local branch: it is the embedding that scores classes (and is exported)
    assert torch.equal(out["embedding"], out["local"])
    mean_model = create_model("dsva", DSVAConfig(backbone="vit_tiny", score_branch="mean"), _task()).eval()
    with torch.no_grad():
        mean_out = mean_model.attribute_outputs(images)
    assert torch.allclose(mean_out["embedding"], 0.5 * (mean_out["global"] + mean_out["local"]))


@pytest.mark.parametrize("name", ["dsva_vit_b32", "dsva_vit_b16"])
def test_dsva_paper_configs_have_no_dropout_on_the_global_feature(name):
    """wenjiaXu/RS_Scene_ZSL model/model.py lines 121-124 (commit 9acbc9fa): the global head
    `ALE_vector = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))` has no dropout, so the
    paper configs' global branch is deterministic in training mode (rsz's small default drops 0.1)."""
    config = load_config("dsva", name).model
    assert config.dropout == 0.0
    small = DSVAConfig(**{**config.__dict__, "backbone": "vit_tiny"})  # the paper's head on a small ViT
    torch.manual_seed(0)
    model = create_model("dsva", small, _task()).train()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        first, second = model.attribute_outputs(images)["global"], model.attribute_outputs(images)["global"]
    assert torch.equal(first, second)


def test_backbone_lr_factor_groups():
    torch.manual_seed(0)
    model = create_model("dsva", DSVAConfig(backbone="vit_tiny"), _task())
    groups = optimizer_groups(model, 1e-4, 0.05, backbone_lr_factor=0.01)
    backbone = {id(p) for p in backbone_parameters(model)}
    assert backbone and len(backbone) < len(list(model.parameters()))
    for group in groups:
        in_backbone = {id(p) in backbone for p in group["params"]}
        assert len(in_backbone) == 1  # a group is all backbone or all head
        assert group["lr"] == pytest.approx(1e-6 if in_backbone.pop() else 1e-4)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_classes_times_images_episodes_with_a_fixed_count():
    labels = np.repeat(np.arange(10), 7)
    batches = class_balanced_batches(labels, 8, 3, np.random.default_rng(0), num_batches=300)
    assert len(batches) == 300
    for batch in batches[:20]:
        counts = np.bincount(labels[batch], minlength=10)
        assert sorted(counts[counts > 0]) == [3] * 8


def test_frozen_backbone_epochs_then_the_whole_network(tiny_benchmark, default_split, tmp_path):
    overrides = {**TINY_OVERRIDES, "train.frozen_backbone_epochs": 1, "train.backbone_lr_factor": 0.5}
    out = tmp_path / "run"
    train("dsva", tiny_benchmark, default_split, out, device="cpu", overrides=overrides, stop_after_epoch=1)
    torch.manual_seed(0)  # the loop builds the model right after seeding with train.seed (0)
    from rsz_train.runs import read_config

    config = read_config(out)
    state = torch.load(out / "last.pt", weights_only=False)["model"]
    names = [n for n in state if n.startswith("backbone.")]
    head = [n for n in state if n.startswith(("global_head.", "prototypes"))]
    initial = _initial_state(tiny_benchmark, config)
    assert names and all(torch.equal(state[n], initial[n]) for n in names)  # frozen in epoch 1
    assert all(not torch.equal(state[n], initial[n]) for n in head)  # while the head learned
    train("dsva", tiny_benchmark, default_split, out, device="cpu", resume=True)
    final = torch.load(out / "last.pt", weights_only=False)["model"]
    assert any(not torch.equal(final[n], state[n]) for n in names)  # epoch 2 trains the backbone too
    assert load_file(str(out / "model.safetensors"))


def _initial_state(bench, config) -> dict:
    from rsz_train.data.formats import load_benchmark

    data = load_benchmark(bench)
    task = TaskInfo(data.attribute_names, data.attribute_phrases, data.attribute_groups, 32, 30)
    torch.manual_seed(config.train.seed)
    return create_model("dsva", config.model, task).state_dict()


def test_latent_samples_cycle_each_class_and_add_noise_of_its_sigma():
    """CADA-VAE's sample_train_data_on_sample_per_class_basis (masuqiang/MCFA-Pytorch vaemodel.py,
    train_classifier): a class's rows repeated until `per_class`, then cut; z = mu + sigma * eps."""
    from rsz_train.models.mcfa import latent_samples

    mu = torch.tensor([[0.0, 0.0], [10.0, 10.0], [5.0, -5.0]])
    logvar = torch.full((3, 2), -40.0)  # sigma ~ 2e-9: z is mu
    z, y = latent_samples(mu, logvar, torch.tensor([0, 0, 1]), 3, torch.Generator().manual_seed(0))
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.allclose(z, mu[[0, 1, 0, 2, 2, 2]])
    z, _ = latent_samples(
        mu, torch.zeros(3, 2), torch.tensor([0, 0, 1]), 2000, torch.Generator().manual_seed(0)
    )
    assert abs(float((z[2000:] - mu[2]).std()) - 1.0) < 0.05  # sigma = exp(0.5 * logvar) = 1


def test_mcfa_final_stage_classifier_is_kept_reloaded_and_exported(
    mcfa_classifier_run, tiny_benchmark, default_split
):
    from rsz_train import evaluate as ev
    from rsz_train.data.batches import load_images
    from rsz_train.data.formats import load_benchmark, load_split
    from rsz_train.runs import load_run

    model, info = load_run(mcfa_classifier_run, kind="mcfa")
    report = info.report
    assert report["test"]["inference"] == "classifier" and {"zsl", "gzsl"} <= set(report["test"])
    classes = info.task.extra["classifier_classes"]
    assert classes == info.seen + info.unseen and model.latent_classifier.out_features == len(classes)
    # the kept classifier gives the reported GZSL figure on the test images
    data, split = load_benchmark(tiny_benchmark), load_split(tiny_benchmark, default_split)
    label_of = dict(zip(data.image_paths, np.asarray(data.labels).tolist()))
    paths = list(split.test_seen) + list(split.test_unseen)
    emb = ev.embed_images(model, load_images(data.root, paths, info.preprocess.size), info.preprocess)
    with torch.no_grad():
        logits = model.latent_classifier(torch.from_numpy(emb)).numpy()
    position = {data.class_names.index(c): i for i, c in enumerate(classes)}
    local = np.array([position[label_of[p]] for p in paths])
    seen_mask = np.arange(len(classes)) < len(info.seen)
    gzsl = ev.gzsl_report(logits, local, seen_mask, info.seen_calibration)
    assert gzsl["H"] == pytest.approx(report["test"]["gzsl"]["H"], abs=1e-9)
    graphs = {g.role: g for g in model.export_graphs()}
    classifier = graphs["classifier"]
    assert (classifier.input_names, classifier.output_names) == (["embedding"], ["logits"])
    assert classifier.module(*classifier.example_inputs).shape == (2, len(classes))
