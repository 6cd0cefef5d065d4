from __future__ import annotations

import numpy as np
import pytest

from rsz_infer.errors import RszError
from rsz_infer.semantics import attribute_vectors, description_attribute_vectors, description_clauses


def test_rows_are_centred_unit_vectors_and_independent_of_other_classes() -> None:
    rng = np.random.default_rng(0)
    descriptions, phrases = rng.normal(size=(5, 16)), rng.normal(size=(7, 16))
    vectors = attribute_vectors(descriptions, phrases)
    assert vectors.shape == (5, 7) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors.mean(axis=1), 0.0, atol=1e-6)
    # A class's vector must not depend on which other classes are in the file.
    np.testing.assert_allclose(attribute_vectors(descriptions[2:3], phrases)[0], vectors[2], atol=1e-6)


def test_the_phrase_a_description_is_made_of_scores_highest() -> None:
    phrases = np.eye(4, 8) + 0.3  # four phrases sharing a common component
    description = 0.2 * phrases[0] + phrases[2]
    vector = attribute_vectors(description[None, :], phrases)[0]
    assert np.argmax(vector) == 2
    assert vector[0] > vector[1] and vector[0] > vector[3]


def test_phrase_ridge_credits_the_named_phrase_not_its_neighbour() -> None:
    # Phrases 0 and 1 are related (cosine 0.8), phrase 2 is unrelated; the description IS phrase 0.
    phrases = np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]])
    description = phrases[:1]
    # Plain cosines [1, 0.8, 0] -> centred [0.4, 0.2, -0.6] / sqrt(0.56): the neighbour scores high too.
    plain = attribute_vectors(description, phrases)[0]
    np.testing.assert_allclose(plain, np.array([0.4, 0.2, -0.6]) / np.sqrt(0.56), atol=1e-6)
    # Ridge 0.2: s (G + 0.2 I)^-1 with G = [[1, .8, 0], [.8, 1, 0], [0, 0, 1]] is [0.7, 0.2, 0]
    # (the 2x2 block's inverse is [[1.2, -.8], [-.8, 1.2]] / 0.8) -> centred [0.4, -0.1, -0.3] / sqrt(0.26).
    ridge = attribute_vectors(description, phrases, phrase_ridge=0.2)[0]
    np.testing.assert_allclose(ridge, np.array([0.4, -0.1, -0.3]) / np.sqrt(0.26), atol=1e-6)
    assert ridge.dtype == np.float32 and ridge[1] < 0 < plain[1]
    with pytest.raises(RszError, match="phrase_ridge -1.0: must be 0"):
        attribute_vectors(description, phrases, phrase_ridge=-1.0)


def test_descriptions_are_cut_at_commas_semicolons_and_joining_words() -> None:
    text = "An aerial view of grey concrete, blue roofs; round tanks and a road with cars or trucks."
    assert description_clauses(text) == [
        "An aerial view of grey concrete", "blue roofs", "round tanks", "a road", "cars", "trucks"
    ]  # fmt: skip
    assert description_clauses("Sandy beach") == ["Sandy beach"]
    assert description_clauses("island") == ["island"]  # "and" inside a word does not cut it
    assert description_clauses(" , ") == [" , "]  # nothing left: the text as it is


def test_a_class_gets_each_phrase_from_its_best_clause() -> None:
    # Orthogonal phrases; class 0 has two clauses (phrase 0; halfway between phrases 0 and 1), class 1
    # one (phrase 2). The rows are not in class order: owners say whose they are.
    phrases = np.eye(3)
    clauses = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    vectors = attribute_vectors(clauses, phrases, owners=np.array([1, 0, 0]))
    # class 0: cosines [1, 0, 0] and [.707, .707, 0], best of each [1, .707, 0], centred and normalised
    # (the mean of the clauses would give [.854, .354, 0], another direction); class 1: [0, 0, 1]
    best = np.array([1.0, 2**-0.5, 0.0]) - (1 + 2**-0.5) / 3
    np.testing.assert_allclose(vectors[0], best / np.linalg.norm(best), atol=1e-6)
    np.testing.assert_allclose(vectors[1], np.array([-1, -1, 2]) / np.sqrt(6), atol=1e-6)
    with pytest.raises(RszError, match="2 owners for 3 clause rows"):
        attribute_vectors(clauses, phrases, owners=np.array([0, 1]))
    with pytest.raises(RszError, match="every class 0..C-1 a clause row"):
        attribute_vectors(clauses, phrases, owners=np.array([0, 2, 2]))  # class 1 has none


def test_clauses_credit_every_attribute_of_a_long_description(minilm) -> None:
    """The reason for the clause route, with the real MiniLM: of a six-item description (the synthetic
    benchmark's industrial_area) the whole sentence scores its storage tanks below a phrase it does not
    name; read clause by clause, each of its six phrases outranks every phrase it does not name."""
    from rsz_train.text import encode_sentences

    phrases = [
        "light grey concrete", "blue metal roofs", "large rectangular buildings", "round storage tanks",
        "a straight road", "scattered irregularly", "small rectangular buildings", "white roofs",
        "dense", "trees", "water", "a runway",
    ]  # fmt: skip
    description = (
        "An aerial view of light grey concrete, blue metal roofs, large rectangular buildings, round storage "
        "tanks and a straight road, scattered irregularly."
    )
    phrase_emb = encode_sentences(phrases)
    whole = description_attribute_vectors([description], encode_sentences, phrase_emb, 0.3)[0]
    by_clause = description_attribute_vectors([description], encode_sentences, phrase_emb, 0.3, True)[0]
    tanks, small = phrases.index("round storage tanks"), phrases.index("small rectangular buildings")
    named, others = slice(0, 6), slice(6, None)
    assert whole[tanks] < whole[small]  # the long sentence loses its tanks among the buildings
    assert by_clause[named].min() > by_clause[others].max()


def test_dimension_mismatch_is_an_error() -> None:
    with pytest.raises(RszError, match="384-d but attribute phrase embeddings are 512-d"):
        attribute_vectors(np.ones((2, 384)), np.ones((3, 512)))
    with pytest.raises(RszError, match="at least 2 attribute phrases"):
        attribute_vectors(np.ones((2, 4)), np.ones((1, 4)))


def test_inference_side_modules_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, rsz_infer.classfile, rsz_infer.semantics, rsz_infer.tokenizer, rsz_infer.metrics;"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
