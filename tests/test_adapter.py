"""The adapter baseline: LoRA on the tiny model's blocks, trained with the LLM in the loop."""

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from pipeline.common.config import Template, TrainConfig
from pipeline.common.errors import ConfigError
from pipeline.common.precision import autocast
from pipeline.data.beir import load_prepared
from pipeline.data.prepare import prepare_dataset
from pipeline.data.tiny import make_tiny_model, write_beir
from pipeline.tuner.adapter import Adapter, AdapterConfig
from pipeline.tuner.adapter_train import adapter_step, train_adapter
from pipeline.tuner.loop import epoch_batches
from pipeline.tuner.training_sets import TrainingSet
from stages.cli import main


@pytest.fixture(scope="module")
def adapter_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapter")
    model = str(make_tiny_model(root / "model", layers=2))
    write_beir(root / "tiny", n_docs=40, n_queries=32)
    prepare_dataset(str(root / "tiny"), root / "prepared", n_negatives=2)
    ds = load_prepared(root / "prepared")
    cfg = AdapterConfig(model=model, layer=2, rank=4, alpha=8, out_dim=16, query_max_length=8,
                        passage_max_length=24, template=asdict(Template(case="keep")))
    return {"root": root, "ds": ds, "cfg": cfg,
            "set": TrainingSet(ds, None, None, ds.pairs("train").to_pylist(), ds.qrels["dev"])}


def test_training_moves_only_the_adapter_and_the_head_and_the_adapter_changes_the_states(adapter_world):
    torch.manual_seed(0)
    adapter = Adapter(adapter_world["cfg"])
    frozen = {n: p.detach().clone() for n, p in adapter.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in adapter.named_parameters() if p.requires_grad}
    assert frozen and all("lora_" in n or n.startswith(("norm.", "head.")) for n in trained)
    opt = torch.optim.AdamW([p for p in adapter.parameters() if p.requires_grad], lr=1e-2)
    from pipeline.tuner.adapter_train import tokenized

    texts = tokenized(adapter, adapter_world["ds"])
    cfg = TrainConfig(batch_size=8, negatives=1)
    for _, batch in epoch_batches([adapter_world["set"]], cfg, 0)[:3]:
        adapter_step(adapter, opt, texts, batch, autocast("cpu", False), 1.0)
    now = dict(adapter.named_parameters())
    assert all(torch.equal(now[n], p) for n, p in frozen.items())  # the LLM's own weights never move
    assert all(not torch.equal(now[n], p) for n, p in trained.items() if "lora_B" in n)
    # the trained adapters change the LLM's states (LoRA's B starts at zero: an untrained adapter is the LLM)
    adapter.eval()
    ids, mask = adapter.llm.pad([texts[0][q] for q in list(texts[0])[:4]])
    with torch.no_grad():
        adapted = adapter.body(input_ids=ids, attention_mask=mask).last_hidden_state
        with adapter.body.disable_adapter():
            plain = adapter.body(input_ids=ids, attention_mask=mask).last_hidden_state
    assert not torch.allclose(adapted, plain, atol=1e-4)


def test_train_saves_only_trained_weights_and_lmort_index_and_search_encode_online(adapter_world, tmp_path):
    out = tmp_path / "adapter"
    cfg = TrainConfig(batch_size=4, negatives=1, epochs=1, max_steps_per_epoch=3, lr=1e-3, dev_every=1)
    summary = train_adapter([adapter_world["set"]], adapter_world["cfg"], cfg, out, progress=False)
    assert summary["steps"] == 3 and summary["seconds_per_step"] > 0 and 0.0 <= summary["dev_ndcg@10"] <= 1.0
    saved = load_file(out / "best" / "adapter.safetensors")
    assert saved and all("lora_" in k or k.startswith(("norm.", "head.")) for k in saved)
    assert sum(v.numel() for v in saved.values()) == summary["trainable_parameters"]
    ds = adapter_world["ds"]
    r = CliRunner().invoke(main, ["index", "--tuner", str(out / "best"), "--data", str(ds.folder), "--system",
                                  "adapter", "--out", str(tmp_path / "index"), "--run", str(tmp_path / "a.trec")])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "index" / "meta.json").read_text())
    assert (tmp_path / "index" / meta["adapter"]).resolve() == (out / "best").resolve()  # relative to the index
    assert meta["texts"] == len(ds.corpus)
    # the index holds what the saved adapter encodes online, and `lmort search` finds a document by its own text
    vectors = np.load(tmp_path / "index" / "vectors.npy")
    adapter = Adapter.load(out / "best")
    template = Template(**meta["template"])
    first = meta["ids"][0]
    online = adapter.encode([template.format_passage(**ds.corpus[first])], 24, progress=False)
    np.testing.assert_allclose(online[0], vectors[0], atol=1e-4)
    r = CliRunner().invoke(main, ["search", "--index", str(tmp_path / "index"), "-k", "3", "--data",
                                  str(ds.folder), ds.corpus[first]["text"]])
    assert r.exit_code == 0 and first in r.output, r.output


def test_an_adapter_needs_a_block_to_adapt(adapter_world):
    with pytest.raises(ConfigError, match="layer"):
        AdapterConfig(model=adapter_world["cfg"].model, layer=0)
