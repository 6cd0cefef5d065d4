"""CLIP checkpoints that must not export: each is refused at load time in one line naming the file and what
is wrong, before any bundle is written; never random weights, never an unpickled object, never a traceback.

Real files written here: transformers CLIPModel(tiny CLIPConfig).save_pretrained folders, edited the way
users' folders go wrong, and open_clip state dicts of a tiny registered config.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rsz_export.cli import main as export_main
from rsz_infer.errors import RszError
from rsz_train.models.clip import import_open_clip, load_clip

from .helpers import random_open_clip


def _tiny_hf(folder: Path, weights: str = "safetensors"):
    """A complete tiny CLIPModel folder (random weights, which the tests compare against)."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config={"vocab_size": 600, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    net = CLIPModel(config).eval()
    net.save_pretrained(folder)
    if weights == "bin":  # a .bin-only folder, as older checkpoints ship
        state = {k: v.contiguous() for k, v in net.state_dict().items()}
        (folder / "model.safetensors").unlink()
        torch.save(state, folder / "pytorch_model.bin")
    return net


def _edit_safetensors(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    save_file(edit(state), str(folder / "model.safetensors"))


def _export(checkpoint: Path, tmp_path: Path):
    out = tmp_path / "bundle"
    result = CliRunner().invoke(
        export_main, ["clip", "--checkpoint", str(checkpoint), "--out", str(out), "--engine", "none"]
    )
    return result, out


def _one_line_error(result, out: Path, *parts: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for part in parts:
        assert part in lines[0], lines[0]
    assert not out.exists()  # refused before anything was written
    return lines[0]


class _RunsACommand:
    """Pickles to os.system(...): a loader that unpickles it runs the command (creates `marker`)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# ---------------------------------------------------------------- Hugging Face folders: every tensor present


def test_complete_hf_folders_load_their_own_weights(tmp_path):
    for weights in ("safetensors", "bin"):
        folder = tmp_path / weights
        net = _tiny_hf(folder, weights)
        model = load_clip(folder)
        ours, theirs = model.net.state_dict(), net.state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), weights


def test_hf_folder_missing_tensors_is_refused_not_randomly_initialised(tmp_path):
    folder = tmp_path / "hf_missing"
    _tiny_hf(folder)
    _edit_safetensors(folder, lambda s: {k: v for k, v in s.items() if not k.startswith("vision_model.")})
    with pytest.raises(RszError, match=r"hf_missing: model.safetensors lacks \d+ of CLIPModel's \d+ tensors "
                                        r"\(vision_model\.embeddings\.class_embedding, "):  # fmt: skip
        load_clip(folder)
    result, out = _export(folder, tmp_path)
    line = _one_line_error(result, out, "refusing to export random weights")
    assert "MISSING" not in result.output and "newly initialized" not in result.output, line


def test_hf_folder_without_clip_tensors_or_with_wrong_shapes_is_refused(tmp_path):
    empty = tmp_path / "hf_empty"
    _tiny_hf(empty)
    _edit_safetensors(empty, lambda s: {"foo": torch.zeros(2)})
    result, out = _export(empty, tmp_path)
    empty_line = "hf_empty: model.safetensors holds no CLIPModel tensors (1 other tensor, e.g. foo)"
    _one_line_error(result, out, empty_line)

    wrong = tmp_path / "hf_wrong"
    _tiny_hf(wrong)
    _edit_safetensors(wrong, lambda s: {**s, "visual_projection.weight": torch.zeros(7, 32)})
    result, out = _export(wrong, tmp_path)
    wrong_line = (
        "hf_wrong: visual_projection.weight is [7, 32] in model.safetensors, but config.json makes it"
    )
    _one_line_error(result, out, wrong_line)


# ---------------------------------------------------------------- Hugging Face folders: unreadable weights


def test_hf_pickle_is_refused_and_never_run(tmp_path):
    folder = tmp_path / "hf_evil"
    _tiny_hf(folder, "bin")
    marker = tmp_path / "pwned"
    torch.save({"text_projection.weight": _RunsACommand(marker)}, folder / "pytorch_model.bin")
    result, out = _export(folder, tmp_path)
    _one_line_error(
        result, out, "hf_evil: cannot load this CLIPModel (pytorch_model.bin: not a PyTorch checkpoint",
        "of plain tensors: torch.load(weights_only=True) refused it (Trying to load unsupported GLOBAL",
    )  # fmt: skip
    assert not marker.exists()


def test_hf_truncated_safetensors_is_one_line(tmp_path):
    folder = tmp_path / "hf_trunc"
    _tiny_hf(folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    result, out = _export(folder, tmp_path)
    _one_line_error(result, out, "hf_trunc: cannot load this CLIPModel (model.safetensors: not a safetensors")


def test_hf_folder_without_weights_is_one_line(tmp_path):
    folder = tmp_path / "hf_none"
    _tiny_hf(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(RszError, match="hf_none: a Hugging Face CLIP folder needs model.safetensors or"):
        load_clip(folder)


# ---------------------------------------------------------------- preprocessor_config.json


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"image_mean": [0.5,0.5\n', "not readable JSON"),
        ('{"image_mean": "0.5"}', "image_mean must be 3 finite numbers"),
        ('{"image_mean": [0.5, 0.5]}', "image_mean must be 3 finite numbers"),
        ('{"image_mean": [0.5, NaN, 0.5]}', "image_mean must be 3 finite numbers"),
        ('{"image_std": [0, 0, 0]}', "image_std must be 3 numbers above 0"),
        ('{"image_std": [0.5, true, 0.5]}', "image_std must be 3 finite numbers"),
        ("[1, 2]", "expected a JSON object"),
    ],
)  # fmt: skip
def test_bad_preprocessor_config_is_refused_at_load(tmp_path, text, field):
    folder = tmp_path / "hf_pp"
    _tiny_hf(folder)
    (folder / "preprocessor_config.json").write_text(text, encoding="utf-8")
    with pytest.raises(RszError) as caught:
        load_clip(folder)
    message = str(caught.value)
    assert message.startswith(f"{folder / 'preprocessor_config.json'}: ") and field in message
    assert "\n" not in message


def test_bad_preprocessor_config_cli_and_a_good_one(tmp_path):
    folder = tmp_path / "hf_pp"
    _tiny_hf(folder)
    (folder / "preprocessor_config.json").write_text('{"image_mean": "0.5", "image_std": [0,0,0]}', "utf-8")
    result, out = _export(folder, tmp_path)
    _one_line_error(result, out, 'preprocessor_config.json: image_mean must be 3 finite numbers, got "0.5"')
    good = {"crop_size": {"height": 336, "width": 336}, "image_mean": [0.5, 0.25, 0], "image_std": 0.5}
    (folder / "preprocessor_config.json").write_text(json.dumps(good), encoding="utf-8")
    spec = load_clip(folder).preprocess
    assert (spec.size, spec.mean, spec.std) == (32, (0.5, 0.25, 0.0), (0.5, 0.5, 0.5))  # crop_size unused
    assert spec.resize == "bicubic"  # no `resample`: CLIPImageProcessor's default, PIL's BICUBIC


@pytest.mark.parametrize(("resample", "resize"), [(3, "bicubic"), (2, "bilinear"), (None, "bicubic")])
def test_hf_folder_resizes_with_its_resample_filter(tmp_path, resample, resize):
    """preprocessor_config.json's `resample` (PIL's numbering) is the bundle's preprocess.resize, as
    CLIPImageProcessor resizes with it; without a preprocessor_config.json, OpenAI CLIP's bicubic."""
    folder = tmp_path / "hf_pp"
    _tiny_hf(folder)
    if resample is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps({"resample": resample}), "utf-8")
    assert load_clip(folder).preprocess.resize == resize


@pytest.mark.parametrize(
    ("resample", "says"),
    [(1, "resample 1 (Pillow's LANCZOS): "), (0, "resample 0 (Pillow's NEAREST): "),
     ('"bicubic"', 'resample "bicubic": '), ("true", "resample true: ")],
)  # fmt: skip
def test_hf_folder_with_another_resample_filter_is_one_line(tmp_path, resample, says):
    """A filter rsz does not have is refused, naming the file and the value: resizing otherwise than the
    checkpoint's own pipeline would change every embedding without a word."""
    folder = tmp_path / "hf_pp"
    _tiny_hf(folder)
    (folder / "preprocessor_config.json").write_text(f'{{"resample": {resample}}}', "utf-8")
    result, out = _export(folder, tmp_path)
    line = _one_line_error(result, out, f"{folder / 'preprocessor_config.json'}: {says}")
    assert line.endswith("rsz resizes with 2 (bilinear) or 3 (bicubic) only")


# ---------------------------------------------------------------- open_clip files: named, what they are not


@pytest.fixture(scope="module")
def tiny_state(tmp_path_factory):
    _, net = random_open_clip(tmp_path_factory.mktemp("open_clip_configs"), "rsz-tiny-vit-bad")
    return net.state_dict()


def test_open_clip_checkpoint_resizes_as_its_preprocess_config_says(tiny_state, tmp_path):
    """open_clip's image_transform resizes with bicubic (PreprocessCfg's default, what a model created without
    a pretrained tag has) unless the model's preprocess config says bilinear: preprocess.resize follows."""
    from rsz_train.models.clip import _open_clip_preprocess

    oc = import_open_clip()
    torch.save(tiny_state, tmp_path / "tiny.pt")
    model = load_clip(tmp_path / "tiny.pt")
    assert model.preprocess.resize == "bicubic"
    for interpolation, resize in (("bilinear", "bilinear"), ("random", "bicubic"), ("bicubic", "bicubic")):
        cfg = {**oc.get_model_preprocess_cfg(model.net), "interpolation": interpolation}
        oc.set_model_preprocess_cfg(model.net, cfg)
        assert _open_clip_preprocess(oc, model.net).resize == resize


def test_open_clip_shapes_of_no_architecture_name_the_file(tiny_state, tmp_path):
    path = tmp_path / "wrongshape.pt"
    torch.save({**tiny_state, "visual.proj": torch.zeros(64, 99)}, path)
    result, out = _export(path, tmp_path)
    _one_line_error(
        result, out, f"{path}: no open_clip architecture has these weights' shapes (", "embed_dim 99"
    )


def test_text_and_truncated_files_say_they_are_no_checkpoint(tiny_state, tmp_path):
    text = tmp_path / "text.pt"
    text.write_text("hello\n", encoding="utf-8")
    with pytest.raises(RszError, match="text.pt: not a PyTorch checkpoint: neither a torch.save zip archive"):
        load_clip(text)
    full = tmp_path / "full.pt"
    torch.save(tiny_state, full)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(full.read_bytes()[:5000])
    with pytest.raises(
        RszError, match=r"cut.pt: not a PyTorch checkpoint: a zip archive cut short or damaged"
    ):
        load_clip(cut)
    object_pt = tmp_path / "object.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "config": Path("/")}, object_pt)  # needs unpickling
    with pytest.raises(RszError, match="object.pt: not a PyTorch checkpoint of plain tensors: torch.load"):
        load_clip(object_pt)


def test_plain_pickle_is_one_line_without_torch_warning_and_never_run(tmp_path):
    """A protocol-4 pickle (not torch.save's): torch warns on stderr before refusing it; the CLI prints only
    its one line. A fresh process, so no earlier test has already shown (and so hidden) the warning."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_plain.bin"
    path.write_bytes(pickle.dumps({"visual.proj": _RunsACommand(marker)}, protocol=4))
    out = tmp_path / "bundle"
    code = "import sys; from rsz_export.cli import main; main(sys.argv[1:])"
    proc = subprocess.run(
        [sys.executable, "-c", code, "clip", "--checkpoint", path, "--out", out, "--engine", "none"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith(f"error: {path}: "), proc.stderr
    assert "not a PyTorch checkpoint of plain tensors: torch.load(weights_only=True) refused it (" in lines[0]
    assert "In PyTorch 2.6" not in lines[0] and "Unsupported operand" in lines[0]
    assert not marker.exists() and not out.exists()


def test_a_whole_model_saved_with_torch_save_names_its_class_not_torchs_advice(tmp_path):
    """torch.save(model) instead of its state_dict(): torch's refusal is a page of advice ("(1) In PyTorch
    2.6 ... Re-running torch.load with weights_only set to False"); the one line names what it met."""
    path = tmp_path / "whole_model.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    result, out = _export(path, tmp_path)
    line = _one_line_error(result, out, "Unsupported global: GLOBAL torch.nn.modules.linear.Linear")
    assert "PyTorch 2.6" not in line and "weights_only set to" not in line


def test_torchscript_archive_says_how_to_get_a_state_dict(tmp_path):
    """OpenAI's original CLIP files are TorchScript archives: torch's refusal talks about weights_only
    defaults; the one line says what the file is and how to turn it into a state dict rsz reads."""
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), str(path))
    result, out = _export(path, tmp_path)
    line = _one_line_error(result, out, f"{path}: a TorchScript archive", "load_openai_model('ViT-B-32.pt')")
    assert "quickgelu" in line and "PyTorch 2.6" not in line and "weights_only" not in line


def test_tensors_almost_an_architecture_name_the_closest_and_what_differs(tiny_state, tmp_path):
    """Towers of an architecture's sizes with an extra, a missing or a reshaped tensor: the line says which
    architecture is closest and which tensors keep it from loading (not just "no architecture")."""
    path = tmp_path / "almost.pt"
    state = {k: v for k, v in tiny_state.items() if k != "ln_final.weight"}
    state["attn_mask"] = torch.zeros(77, 77)
    state["logit_scale"] = tiny_state["logit_scale"].reshape(1)
    torch.save(state, path)
    result, out = _export(path, tmp_path)
    line = _one_line_error(result, out, f"{path}: no open_clip architecture has exactly these tensors")
    assert re.search(
        r"the closest is (rsz-tiny-vit(-bad)?): it has attn_mask, which \1 has not; it lacks "
        r"ln_final.weight; its logit_scale is \[1\], \1's \[\]$",
        line,
    ), line


def test_a_state_dict_of_another_model_names_a_key_not_arch_advice(tmp_path):
    """Another model's weights (or CLIP's under a key prefix): no --arch fits, so none is suggested; a key
    of the file is shown."""
    path = tmp_path / "resnet.pt"
    torch.save({"_orig_mod.fc.weight": torch.zeros(10, 512), "_orig_mod.fc.bias": torch.zeros(10)}, path)
    result, out = _export(path, tmp_path)
    line = _one_line_error(
        result, out, f"{path}: holds no open_clip CLIP tensors (2 tensors, e.g. _orig_mod.fc.bias;"
    )
    assert "--arch" not in line


def test_a_folder_of_open_clip_files_names_them(tiny_state, tmp_path):
    """A downloaded repository of open_clip checkpoints (RemoteCLIP's: one .pt per architecture) given as
    --checkpoint: the line names the files to pass instead of asking for a Hugging Face config.json."""
    folder = tmp_path / "RemoteCLIP"
    folder.mkdir()
    for name in ("RemoteCLIP-ViT-B-32.pt", "RemoteCLIP-RN50.pt"):
        torch.save(tiny_state, folder / name)
    (folder / "README.md").write_text("# RemoteCLIP\n", encoding="utf-8")
    result, out = _export(folder, tmp_path)
    _one_line_error(
        result, out, f"{folder}: no config.json", "RemoteCLIP-RN50.pt, RemoteCLIP-ViT-B-32.pt: pass one"
    )


def test_one_rule_picks_tokenizer_json_and_a_hostile_one_is_one_line(tmp_path):
    """vocab.json + merges.txt, else tokenizer.json: the PyTorch tokenizer and the exported one read the
    same files (merges.txt alone is no pair); a tokenizer.json with non-string merges is one line."""
    from rsz_export.clip_tokenizer import hf_clip_tokenizer
    from rsz_train.models.clip import hf_tokenizer_json

    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0}, "merges": [1]}}))
    assert hf_tokenizer_json(folder) == folder / "tokenizer.json"
    with pytest.raises(RszError, match=r"tokenizer.json: not a BPE tokenizer.json") as err:
        hf_clip_tokenizer(folder)
    assert "\n" not in str(err.value)


_START_END = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2}
_MERGES = "#version: 0.2\n"
_FLOAT_ID_TOKENIZER_JSON = json.dumps({"model": {"vocab": {"<|startoftext|>": 0.5}, "merges": []}}).encode()


@pytest.mark.parametrize(
    "files, named, says",
    [
        ({"vocab.json": b'["<|startoftext|>", "<|endoftext|>"]'}, "vocab.json", "token: integer id"),
        ({"vocab.json": b'{"<|startoftext|>": "0", "<|endoftext|>": 1}'}, "vocab.json", "token: integer id"),
        ({"vocab.json": b'{"<|endoftext|>": 1, "a</w>": 2}'}, "vocab.json", "no '<|startoftext|>' token"),
        ({"vocab.json": b"\xff\xfe{}"}, "vocab.json", "not readable JSON"),
        ({"merges.txt": b"a \xff\n"}, "merges.txt", "not UTF-8 text"),
        ({"merges.txt": b"q z\n"}, "merges.txt", "Token `q` out of vocabulary"),
        ({"tokenizer.json": _FLOAT_ID_TOKENIZER_JSON}, "tokenizer.json", "token: integer id"),
    ],
)
def test_a_hf_folders_bad_tokenizer_files_are_one_line_naming_the_file(tmp_path, files, named, says):
    """A CLIP folder's vocab.json / merges.txt / tokenizer.json that is not a CLIP tokenizer (a list, ids that
    are no integers, no start token, bytes that are not UTF-8, merges of tokens the vocabulary lacks) is one
    line naming the file, before any bundle is written (before: AttributeError, TypeError,
    UnicodeDecodeError or tokenizers' Exception tracebacks from deep inside)."""
    folder = tmp_path / "hf_tok"
    _tiny_hf(folder)
    if "tokenizer.json" not in files:
        (folder / "vocab.json").write_text(json.dumps(_START_END), encoding="utf-8")
        (folder / "merges.txt").write_text(_MERGES, encoding="utf-8")
    for name, data in files.items():
        (folder / name).write_bytes(data)
    result, out = _export(folder, tmp_path)
    _one_line_error(result, out, f"{folder / named}: ", says)


def test_openai_arch_spelling_and_a_wrapped_state_dict_say_what_to_pass(tiny_state, tmp_path):
    """GeoRSCLIP's and RemoteCLIP's own code name architectures as OpenAI does ("ViT-B/32"): the line gives
    open_clip's spelling. A checkpoint of another trainer that wraps the weights ({"model": ..., "epoch"})
    names its keys, so the user sees where the state dict is."""
    path = tmp_path / "georsclip.pt"
    torch.save(tiny_state, path)
    with pytest.raises(RszError, match=r"^--arch ViT-B/32: open_clip spells it ViT-B-32$"):
        load_clip(path, "ViT-B/32")
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"model": tiny_state, "epoch": torch.tensor(3)}, wrapped)
    with pytest.raises(
        RszError, match=r"wrapped.pt: holds no state dict of tensors \(its keys: model, epoch\)$"
    ):
        load_clip(wrapped)
