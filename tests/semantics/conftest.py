"""Shared fixtures: the real MiniLM, loaded once per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def minilm():
    """(SentenceEncoder, Hugging Face tokenizer) of the stock all-MiniLM-L6-v2."""
    from rsz_train.text import load_minilm

    return load_minilm()
