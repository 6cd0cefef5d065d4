from __future__ import annotations

import numpy as np
import pytest
import torch

from rsz_infer.errors import RszError
from rsz_train.text import (
    SentenceEncoder,
    class_attribute_vectors,
    class_name_text,
    class_name_words,
    encode_sentences,
    glove_class_vectors,
    text_export_graph,
)


def test_similar_descriptions_are_nearer_than_unrelated_ones() -> None:
    airport, runway, forest = encode_sentences(
        [
            "an airport with planes parked beside a runway",
            "aircraft on an airfield runway",
            "a dense green forest",
        ]
    )
    assert airport.shape == (384,)
    np.testing.assert_allclose(np.linalg.norm([airport, runway, forest], axis=1), 1.0, atol=1e-5)
    assert airport @ runway > airport @ forest + 0.2


def test_encoder_equals_sentence_transformers_pooling(minilm) -> None:
    encoder, hf_tokenizer = minilm
    assert isinstance(encoder, SentenceEncoder)
    texts = ["a harbour", "boats moored in a harbour next to a long pier and warehouses"]
    batch = hf_tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder.transformer(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)
        embedding, tokens = encoder.forward_tokens(batch["input_ids"], batch["attention_mask"])
        alone = encoder(
            *[hf_tokenizer(texts[:1], return_tensors="pt")[k] for k in ("input_ids", "attention_mask")]
        )
    torch.testing.assert_close(embedding, expected, atol=1e-5, rtol=1e-5)
    assert tokens.shape == (2, batch["input_ids"].shape[1], 384)
    # Padding must not change a sentence's embedding.
    torch.testing.assert_close(alone[0], embedding[0], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(encode_sentences(texts), embedding.numpy(), atol=1e-5)


def test_attribute_vector_favours_the_phrase_in_the_description() -> None:
    phrases = ["a runway with planes", "a river", "tall trees", "a parking lot full of cars", "sandy beach"]
    descriptions = [
        "an area with a runway with planes",
        "farmland crossed by a river",
        "a park of tall trees",
        "a mall with a parking lot full of cars",
        "a coast with a sandy beach",
    ]
    vectors = class_attribute_vectors(descriptions, phrases)
    assert vectors.shape == (5, 5)
    assert vectors.argmax(axis=1).tolist() == [0, 1, 2, 3, 4]


def test_text_export_graph_contract(minilm) -> None:
    encoder, _ = minilm
    graph = text_export_graph(encoder)
    assert graph.role == "text"
    assert graph.input_names == ["input_ids", "attention_mask"] and graph.output_names == ["embedding"]
    assert all(t.dtype == torch.int64 and t.ndim == 2 for t in graph.example_inputs)
    assert graph.dynamic_axes["input_ids"] == {0: "batch", 1: "seq"}
    with torch.no_grad():
        out = graph.module(*graph.example_inputs)
    assert out.shape == (graph.example_inputs[0].shape[0], 384)


def test_glove_class_vector_is_mean_of_word_vectors() -> None:
    vectors, missing = glove_class_vectors(["storage_tanks", "storage", "tanks", "DenseResidential"])
    assert vectors.shape == (4, 50) and vectors.dtype == np.float32 and missing == {}
    np.testing.assert_allclose(vectors[0], (vectors[1] + vectors[2]) / 2, atol=1e-6)
    assert class_name_words("DenseResidential") == ["dense", "residential"]
    forest, airport, woods = glove_class_vectors(["forest", "airport", "woods"])[0]
    assert forest @ woods > forest @ airport


@pytest.mark.parametrize(
    "name, words",
    [
        ("mobilehomepark", "mobile home park"),  # UCM's folder names
        ("storagetanks", "storage tanks"),
        ("baseballdiamond", "baseball diamond"),
        ("bareland", "bare land"),  # RSICD's; not "barel and" (a rare GloVe word)
        ("thermalpowerstation", "thermal power station"),
        ("MobileHomePark", "mobile home park"),  # AID's
        ("dense_residential", "dense residential"),  # NWPU-RESISC45's
        ("chaparral", "chaparral"),  # a GloVe word stays whole
        ("qzxvwblorpt", "qzxvwblorpt"),  # no split into common words: as it is
        ("class01", "class01"),
    ],
)
def test_run_together_class_names_become_words(name: str, words: str) -> None:
    assert class_name_text(name) == words


def test_glove_knows_ucm_class_names() -> None:
    """UCM's run-together folder names get GloVe vectors of their words (they had none)."""
    vectors, missing = glove_class_vectors(["tenniscourt", "tennis court"])
    assert missing == {}
    np.testing.assert_allclose(vectors[0], vectors[1])


def test_glove_reports_missing_words() -> None:
    vectors, missing = glove_class_vectors(["park", "qzxvw park"])
    assert missing == {"qzxvw park": ["qzxvw"]}
    np.testing.assert_allclose(vectors[1], vectors[0])  # only the known word counts
    with pytest.raises(RszError, match=r"class 'qzxvw_blorpt': none of its words \['qzxvw', 'blorpt'\]"):
        glove_class_vectors(["forest", "qzxvw_blorpt"])
