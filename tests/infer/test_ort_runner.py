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
