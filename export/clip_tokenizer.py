"""CLIP's BPE tokenizer as a `tokenizers` tokenizer.json, so rsz_infer tokenizes prompts without torch.

open_clip's SimpleTokenizer: ftfy + HTML unescape, whitespace squashed, lower-cased, split by CLIP's regex,
byte-level BPE with "</w>" ending each word, <start_of_text> ... <end_of_text>, cut to the context length
keeping the end token, padded with id 0. The same steps in `tokenizers`' terms: NFC + the quote and
ligature repairs ftfy makes + lower-casing, a Split on CLIP's regex, ByteLevel without its own regex, BPE
with end_of_word_suffix "</w>", a start/end template; truncation happens before the template, so the end
token survives. Not reproduced: ftfy's repair of mojibake and HTML entities other than the common five.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from rsz_infer.errors import RszError, first_line

# open_clip.tokenizer.SimpleTokenizer.pat without its special-token alternatives (those are added tokens)
CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# What ftfy.fix_text changes in ordinary text (uncurl_quotes, fix_latin_ligatures) and html.unescape
_REPAIRS = [
    ("\u2018", "'"), ("\u2019", "'"), ("\u201a", "'"), ("\u201b", "'"),
    ("\u201c", '"'), ("\u201d", '"'), ("\u201e", '"'), ("\u201f", '"'),
    ("\ufb01", "fi"), ("\ufb02", "fl"), ("\ufb00", "ff"), ("\ufb03", "ffi"), ("\ufb04", "ffl"),
    ("&quot;", '"'), ("&#39;", "'"), ("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&"),
]  # fmt: skip


def clip_tokenizer(
    vocab: dict[str, int], merges: list[tuple[str, str]], start: str, end: str, pad_id: int = 0
) -> Tokenizer:
    """A CLIP tokenizer over this vocabulary and merge list (in rank order)."""
    for token in (start, end):
        if token not in vocab:
            raise RszError(f"tokenizer vocabulary: no {token!r} token")
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", fuse_unk=False))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC()]
        + [normalizers.Replace(a, b) for a, b in _REPAIRS]
        + [normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([start, end])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{start} $A {end}", special_tokens=[(start, vocab[start]), (end, vocab[end])]
    )
    pad_token = next((t for t, i in vocab.items() if i == pad_id), end)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
    return tokenizer


def open_clip_tokenizer() -> Tokenizer:
    """From the vocabulary the open_clip package ships (bpe_simple_vocab_16e6.txt.gz)."""
    from rsz_train.models.clip import import_open_clip

    simple = import_open_clip().tokenizer.SimpleTokenizer()
    merges = sorted(simple.bpe_ranks, key=simple.bpe_ranks.get)
    return clip_tokenizer(dict(simple.encoder), list(merges), "<start_of_text>", "<end_of_text>", 0)


HF_START, HF_END = "<|startoftext|>", "<|endoftext|>"  # CLIPTokenizer's names of the start and end tokens


def hf_clip_tokenizer(folder: Path) -> Tokenizer:
    """From a Hugging Face CLIP folder's vocab.json + merges.txt (CLIPTokenizer's files), or from its
    tokenizer.json alone: transformers 5 saves a CLIP tokenizer as tokenizer.json only."""
    from rsz_train.models.clip import hf_tokenizer_json  # the PyTorch tokenizer's rule

    tokenizer_json = hf_tokenizer_json(folder)
    if tokenizer_json is not None:
        vocab, merges = _tokenizer_json_bpe(tokenizer_json)
    else:
        vocab, merges = _vocab_and_merges(folder / "vocab.json", folder / "merges.txt")
    vocab = _clip_vocab(vocab, tokenizer_json or folder / "vocab.json")
    try:
        return clip_tokenizer(vocab, merges, HF_START, HF_END, vocab.get(HF_END, 0))
    except Exception as err:  # tokenizers raises a plain Exception: "Token `q` out of vocabulary"
        what = (
            f"{tokenizer_json}: not a CLIP tokenizer"
            if tokenizer_json
            else f"{folder / 'merges.txt'}: does not fit vocab.json"
        )
        raise RszError(f"{what} ({first_line(err)})") from None


def _clip_vocab(vocab: object, path: Path) -> dict[str, int]:
    """The vocabulary as BPE takes it (token -> integer id, CLIP's start and end tokens among them), else one
    line naming its file: `tokenizers` would raise a TypeError far from the file it came from."""
    ids_ok = isinstance(vocab, dict) and all(
        isinstance(k, str) and type(v) is int and v >= 0 for k, v in vocab.items()
    )
    if not ids_ok:
        raise RszError(f"{path}: not a CLIP vocabulary (an object of token: integer id)")
    for token in (HF_START, HF_END):
        if token not in vocab:
            raise RszError(f"{path}: no {token!r} token (not a CLIP tokenizer's vocabulary)")
    return vocab


def _vocab_and_merges(vocab_path: Path, merges_path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    for path in (vocab_path, merges_path):
        if not path.is_file():
            raise RszError(
                f"{path}: missing (a CLIP folder's tokenizer is vocab.json + merges.txt, or tokenizer.json)"
            )
    try:
        vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # ValueError: JSONDecodeError and UnicodeDecodeError
        raise RszError(f"{vocab_path}: not readable JSON ({err})") from None
    try:
        lines = merges_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise RszError(f"{merges_path}: not UTF-8 text ({err})") from None
    merges = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#version"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise RszError(f"{merges_path}:{number}: expected two symbols, got {line!r}")
        merges.append((parts[0], parts[1]))
    return vocab, merges


def _tokenizer_json_bpe(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE vocabulary and merges (in rank order) of a `tokenizers` tokenizer.json; its other steps are
    not used: clip_tokenizer rebuilds open_clip's normalisation around them."""
    try:
        model = json.loads(path.read_text(encoding="utf-8"))["model"]
        vocab, raw_merges = model["vocab"], model["merges"]
        # merges are "a b" strings (tokenizers < 0.20) or ["a", "b"] pairs
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in raw_merges]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise RszError(f"{path}: not a BPE tokenizer.json ({type(err).__name__}: {err})") from None
    pairs = all(len(m) == 2 and all(isinstance(p, str) for p in m) for m in merges)
    if not isinstance(vocab, dict) or not pairs:
        raise RszError(f"{path}: not a BPE tokenizer.json (model.vocab / model.merges)")
    return vocab, merges


def write_tokenizer_json(tokenizer: Tokenizer, path: Path) -> Path:
    tokenizer.save(str(path))
    return path
