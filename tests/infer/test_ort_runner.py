"""ONNX Runtime runner: the IO-binding path (the default on GPU providers) gives what session.run gives."""

from __future__ import annotations

import numpy as np

from rsz_infer.runners.ort import OrtRunner

from .helpers import SIZE


def test_io_binding_matches_plain_run(bundles):
    bundle = bundles["msa"]  # image graph with two outputs: embedding and scales
    plain = OrtRunner(bundle / "image.onnx", io_binding=False)
    bound = OrtRunner(bundle / "image.onnx", io_binding=True)
    assert not OrtRunner(bundle / "image.onnx").io_binding  # CPU provider: plain run by default
    rng = np.random.default_rng(0)
    for batch in (1, 5):  # dynamic batch: the binding allocates outputs of each call's shape
        image = rng.normal(size=(batch, 3, SIZE, SIZE)).astype(np.float32)
        a, b = plain.infer({"image": image}), bound.infer({"image": image})
        assert list(a) == list(b) == ["embedding", "scales"]
        for name in a:
            assert b[name].shape[0] == batch and np.array_equal(a[name], b[name])


def test_runner_template_checks_inputs_casts_and_words_errors(bundles):
    """Runner.infer (the template method) for every backend: the same missing-input error, dtype casts, and
    a backend failure as one RszError line."""
    import pytest
    import torch

    from rsz_infer.errors import RszError
    from rsz_infer.runners.torch import TorchRunner

    ort = OrtRunner(bundles["msa"] / "text.onnx")
    ids = np.array([[101, 2000, 102]], np.int32)  # int32 ids: cast to the graph's int64
    out = ort.infer({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    assert out["embedding"].dtype == np.float32 and out["embedding"].shape[0] == 1
    with pytest.raises(RszError) as missing:
        ort.infer({"input_ids": ids.astype(np.int64)})  # ONNX Runtime alone raises a bare KeyError here
    assert (
        str(missing.value)
        == "attention_mask: missing input(s) of ort:cpu (it takes input_ids, attention_mask)"
    )
    torch_runner = TorchRunner(torch.nn.Linear(4, 2), input_names=["x"], output_names=["y"])
    with pytest.raises(RszError, match=r"^x: missing input\(s\) of torch:cpu \(it takes x\)$"):
        torch_runner.infer({"image": np.zeros((1, 4), np.float32)})
    with pytest.raises(RszError) as failed:
        ort.infer({"input_ids": np.zeros((1, 3, 2), np.int64), "attention_mask": np.ones((1, 3), np.int64)})
    assert str(failed.value).startswith("ort:cpu: inference failed (") and "\n" not in str(failed.value)
