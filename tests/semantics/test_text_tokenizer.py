from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rsz_infer.errors import RszError
from rsz_infer.tokenizer import Tokenizer
from rsz_train.text import minilm_tokenizer_json

TEXTS = [
    "Airport",
    "Many planes are parked next to the long runway, near two buildings.",
    "Café über Straße — naïve façade, 1,200 m² (approx.)",
    "",
    "storage_tanks and a baseball-diamond" + " near the river" * 30,  # longer than max_length tokens
]


@pytest.mark.parametrize("max_length", [64, 8])
def test_equals_hugging_face_tokenizer(minilm, max_length: int) -> None:
    _, hf_tokenizer = minilm
    ours = Tokenizer(minilm_tokenizer_json(), max_length=max_length).encode(TEXTS)
    theirs = hf_tokenizer(TEXTS, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    for name in ("input_ids", "attention_mask"):
        assert ours[name].dtype == np.int64
        np.testing.assert_array_equal(ours[name], theirs[name])
    assert ours["input_ids"].shape[1] == max_length  # the long text sets the width, cut at max_length


def test_pads_to_the_longest_in_the_batch() -> None:
    batch = Tokenizer(minilm_tokenizer_json()).encode(["a river", "a very wide river"])
    assert batch["input_ids"].shape == (2, 6)  # [CLS] a very wide river [SEP]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6]


def test_missing_and_corrupt_tokenizer_files(tmp_path: Path) -> None:
    with pytest.raises(RszError, match="nope.json: tokenizer file not found"):
        Tokenizer(tmp_path / "nope.json")
    corrupt = tmp_path / "tokenizer.json"
    corrupt.write_text('{"model": ', encoding="utf-8")
    with pytest.raises(RszError, match="tokenizer.json: not a valid tokenizer.json") as err:
        Tokenizer(corrupt)
    assert "\n" not in str(err.value)
