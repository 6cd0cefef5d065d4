"""Text tokenizer for the text graph, torch-free (the `tokenizers` library over a tokenizer.json).

Gives the same ids as Hugging Face's AutoTokenizer(texts, padding=True, truncation=True, max_length=...).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as _HFTokenizer

from rsz_infer.errors import RszError, first_line

# Token limit for sentences and class descriptions; training (rsz_train.text.encode_sentences) uses the
# same value, so a description is cut at the same place in training and at inference.
DEFAULT_MAX_LENGTH = 64


class Tokenizer:
    """Batches of texts -> `input_ids`, `attention_mask` (int64 [B, L]), padded to the batch's longest."""

    def __init__(self, tokenizer_json: Path, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        path = Path(tokenizer_json)
        if max_length < 2:
            raise RszError(f"max_length={max_length}: must be at least 2 (room for [CLS] and [SEP])")
        if not path.is_file():
            raise RszError(f"{path}: tokenizer file not found")
        try:
            tokenizer = _HFTokenizer.from_file(str(path))
        except Exception as err:  # the library raises a bare Exception for any parse problem
            raise RszError(f"{path}: not a valid tokenizer.json ({first_line(err)})") from None
        # The file may carry its own fixed padding (MiniLM's pads to 128); pad to the longest instead,
        # with the file's pad token when it names one.
        padding = tokenizer.padding or {}
        pad_id, pad_token = padding.get("pad_id", 0), padding.get("pad_token", "[PAD]")
        tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
        tokenizer.enable_truncation(max_length=max_length)
        self._tokenizer = tokenizer
        self.path = path
        self.max_length = max_length

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        if isinstance(texts, str):
            raise TypeError("Tokenizer.encode takes a list of texts, not a single string")
        if not texts:
            empty = np.zeros((0, 0), dtype=np.int64)
            return {"input_ids": empty, "attention_mask": empty.copy()}
        encodings = self._tokenizer.encode_batch(list(texts))
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }

    def cut(self, texts: list[str]) -> list[bool]:
        """Per text: True when it is longer than max_length tokens, so encode() drops its end."""
        return [bool(e.overflowing) for e in self._tokenizer.encode_batch(list(texts))]
