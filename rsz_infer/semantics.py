"""Attribute vectors of classes from their descriptions (numpy; training and inference share it).

A class's attribute vector says how strongly its description speaks of each attribute phrase
("a runway", "dense buildings", ...). Training (rsz_train.text.class_attribute_vectors, PyTorch MiniLM) and
inference (ONNX text graph) feed this same function, so a new class at inference gets exactly what
training saw.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from rsz_infer.errors import RszError
from rsz_infer.scoring import l2_normalize


def attribute_vectors(
    description_emb: np.ndarray,
    phrase_emb: np.ndarray,
    phrase_ridge: float = 0.0,
    owners: np.ndarray | None = None,
) -> np.ndarray:
    """[C, E] description embeddings x [A, E] phrase embeddings -> [C, A] float32 attribute vectors.

    Each entry starts as the cosine similarity of a description to a phrase. Raw MiniLM cosines share a
    large offset (every remote-sensing sentence is somewhat similar to every other, and a long, generic
    description is similar to all phrases), so per class we subtract the mean over attributes: what is
    left says which phrases this description favours over the others. Rows are then L2-normalised so
    every class has the same scale (dividing by the std first, a z-score, would be the same after that).
    The normalisation is per class only, so a class's vector never depends on which other classes are in
    the file (centring per attribute over classes would make inference depend on the class list).

    `phrase_ridge` > 0 first decorrelates the phrases: the cosine row s becomes s (G + ridge I)^-1, with G the
    [A, A] phrase-phrase cosines, i.e. the ridge-regression weights that rebuild the description from the
    phrases. Why: related phrases ("large buildings", "small buildings", "white roofs") have similar MiniLM
    embeddings, so a description naming one scores high on all of them, every building class looks alike
    and ZSL predictions crowd onto a few classes; the regression credits the phrase actually named.
    0 keeps the plain cosines. It depends on the phrases only, never on the other classes.

    `owners` [R] (class index of each row): the rows are the clauses of the descriptions
    (description_clauses), and a class's entry for a phrase is its best clause's, before the centring.
    """
    description_emb = np.asarray(description_emb, dtype=np.float32)
    phrase_emb = np.asarray(phrase_emb, dtype=np.float32)
    if description_emb.ndim != 2 or phrase_emb.ndim != 2:
        raise RszError(
            f"attribute_vectors: expected 2-d embeddings, "
            f"got shapes {description_emb.shape} and {phrase_emb.shape}"
        )
    if description_emb.shape[1] != phrase_emb.shape[1]:
        raise RszError(
            f"attribute_vectors: description embeddings are {description_emb.shape[1]}-d "
            f"but attribute phrase embeddings are {phrase_emb.shape[1]}-d"
        )
    if phrase_emb.shape[0] < 2:
        raise RszError(f"attribute_vectors: need at least 2 attribute phrases, got {phrase_emb.shape[0]}")
    similarity = l2_normalize(description_emb) @ l2_normalize(phrase_emb).T
    similarity = decorrelate_phrases(similarity, phrase_emb, phrase_ridge)
    if owners is not None:
        owners = np.asarray(owners, dtype=np.int64)
        if owners.shape != (len(similarity),):
            raise RszError(f"attribute_vectors: {len(owners)} owners for {len(similarity)} clause rows")
        if len(owners) == 0 or owners.min() < 0 or np.bincount(owners).min() == 0:
            raise RszError("attribute_vectors: owners must give every class 0..C-1 a clause row")
        best = np.full((int(owners.max()) + 1, similarity.shape[1]), -np.inf, np.float32)
        np.maximum.at(best, owners, similarity)
        similarity = best
    return normalize_attribute_rows(similarity)


# Where a description is cut into clauses: commas, semicolons and the words "and", "with", "or".
CLAUSE_BREAK = re.compile(r"\s*[,;]\s*|\s+(?:and|with|or)\s+", re.IGNORECASE)


def description_clauses(description: str) -> list[str]:
    """The clauses of a description ("red roofs, a pool and trees" -> "red roofs", "a pool", "trees"); the
    whole text when nothing splits it. Why: one sentence embedding of a long list blurs every item (a
    class with six attributes scores each of them weakly), while a clause names one thing."""
    parts = [p.strip(" .") for p in CLAUSE_BREAK.split(description)]
    return [p for p in parts if p] or [description]


def description_attribute_vectors(
    descriptions: list[str],
    encode: Callable[[list[str]], np.ndarray],
    phrase_emb: np.ndarray,
    phrase_ridge: float = 0.0,
    clauses: bool = False,
) -> np.ndarray:
    """[C, A] attribute vectors of descriptions, `encode` being the text encoder (texts -> [N, E]): of each
    whole description, or with `clauses` of its clauses (the best clause per phrase, attribute_vectors)."""
    if not clauses:
        return attribute_vectors(encode(list(descriptions)), phrase_emb, phrase_ridge)
    parts = [description_clauses(d) for d in descriptions]
    owners = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
    return attribute_vectors(encode([c for p in parts for c in p]), phrase_emb, phrase_ridge, owners)


def decorrelate_phrases(similarity: np.ndarray, phrase_emb: np.ndarray, phrase_ridge: float) -> np.ndarray:
    """[C, A] cosines to the [A, E] phrases -> s (G + phrase_ridge I)^-1, G the phrase cosines; 0: unchanged.

    See attribute_vectors; image-derived rows (rsz_train.attribute_generation) take the same step."""
    if not phrase_ridge >= 0:
        raise RszError(f"phrase_ridge {phrase_ridge}: must be 0 (plain cosines) or positive")
    similarity = np.asarray(similarity, dtype=np.float32)
    if phrase_ridge == 0:
        return similarity
    phrases = l2_normalize(np.asarray(phrase_emb, dtype=np.float64))
    system = phrases @ phrases.T + phrase_ridge * np.eye(len(phrases))
    # the system is symmetric, so s (G + ridge I)^-1 = solve(G + ridge I, s^T)^T
    return np.linalg.solve(system, similarity.T.astype(np.float64)).T.astype(np.float32)


def normalize_attribute_rows(similarity: np.ndarray) -> np.ndarray:
    """Centre each class row over its attributes, then L2-normalise it (see attribute_vectors).

    Image-derived attribute rows (rsz_train.attribute_generation) go through the same rule, so both
    routes sit on one scale."""
    similarity = np.asarray(similarity, dtype=np.float32)
    return l2_normalize(similarity - similarity.mean(axis=1, keepdims=True)).astype(np.float32)
