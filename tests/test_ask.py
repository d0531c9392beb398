"""`lmort ask` with the generative reader: one forward gives the query vector and the answer's cache; bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.activations.llm import FrozenLLM
from pipeline.answers.ask import Memory
from pipeline.answers.reader import Reader, build_prompt
from pipeline.common.config import Template
from pipeline.common.errors import DataError
from pipeline.retrieval.hits import Hit
from pipeline.tuner.model import Tuner
from stages.cli import main


def test_the_prompts_own_forward_gives_the_vector_of_encode_texts(memory_world):
    """The query vector read off the full LLM's forward of the prompt prefix equals `encode_texts` (the truncated
    LLM, as the stores and `lmort search` compute it)."""
    tuner = Tuner.load(memory_world["root"] / "tuner" / "best")
    reader = Reader(memory_world["model"], dtype=torch.float32, device="cpu")
    template = Template()
    question = memory_world["ds"].queries["q20"]
    states, cache = reader.prefix_forward(reader.ids(template.format_query(question), True), tuner.cfg.layers)
    one_forward = reader.query_vector(tuner, states, bf16=False)
    llm = FrozenLLM(memory_world["model"], max_layer=2, device="cpu", dtype=torch.float32)
    separate = tuner.encode_texts(llm, [question], template, 8, bf16=False)
    np.testing.assert_allclose(one_forward, separate, atol=1e-4)
    assert cache.get_seq_length() == len(reader.ids(question, True))


def test_generation_from_the_prefix_cache_equals_generation_from_scratch(memory_world):
    reader = Reader(memory_world["model"], dtype=torch.float32, device="cpu")
    parts = build_prompt("alpha beta", [Hit(1, 1.0, "d1", "", "gamma delta")], Template(), reader.tail)
    prefix, rest = reader.prompt_ids(parts)
    _, cache = reader.prefix_forward(prefix, [0])
    cached = reader.continue_answer(prefix, rest, cache, max_new_tokens=6)
    scratch, _ = reader.generate([parts], max_new_tokens=6, batch_size=1, progress=False)
    assert cached == scratch[0]


def test_ask_answers_with_the_passages_it_read_and_times_each_part(memory_world):
    fusion = memory_world["root"] / "fusion.json"
    fusion.write_text(json.dumps({memory_world["ds"].name: {"systems": {"lmort+bm25": {"dense_weight": 0.5}}}}))
    memory = Memory(memory_world["index"], memory_world["ds"], fusion_json=fusion)
    for retriever in ("lmort+bm25", "lmort", "bm25"):
        a = memory.ask(memory_world["ds"].queries["q20"], k=3, retriever=retriever, max_new_tokens=4)
        assert len(a.passages) == 3 and all(p.id in memory_world["ds"].corpus for p in a.passages)
        assert set(a.ms) == {"forward", "retrieve", "generate", "total"} and a.ms["total"] > 0
    # the dense ranking is the index's: the one-forward vector searches the same vectors
    dense = memory.ask(memory_world["ds"].queries["q20"], k=3, retriever="lmort", max_new_tokens=1)
    assert [p.rank for p in dense.passages] == [1, 2, 3]


@pytest.mark.parametrize("kwargs,match", [
    ({"question": "   "}, "empty"),
    ({"k": 10_000}, "outside 1..30"),
    ({"retriever": "minilm-l6"}, "offers"),
])
def test_ask_refuses_bad_input(memory_world, kwargs, match):
    memory = Memory(memory_world["index"], memory_world["ds"])
    args = {"question": "alpha", **kwargs}
    with pytest.raises(DataError, match=match):
        memory.ask(**args)


def test_ask_refuses_an_index_of_another_model_or_template(memory_world, tmp_path):
    import shutil

    other = tmp_path / "index"
    shutil.copytree(memory_world["index"], other)
    meta = json.loads((other / "meta.json").read_text())
    other_case = "keep" if meta["template"]["case"] == "lower" else "lower"
    paths = {name: str((memory_world["index"] / path).resolve()) for name, path in meta["paths"].items()}
    (other / "meta.json").write_text(json.dumps({**meta, "template": {**meta["template"], "case": other_case},
                                                 "tuner": str(memory_world["root"] / "tuner" / "best"),
                                                 "paths": paths}))
    with pytest.raises(DataError, match="another template"):
        Memory(other, memory_world["ds"])
    with pytest.raises(DataError, match="built with"):
        Memory(memory_world["index"], memory_world["ds"], model="smollm2-135m")


def test_an_index_names_what_it_reads_and_a_moved_one_says_what_is_missing(memory_world, tmp_path):
    """meta.json records the tuner, stores, prepared set and configuration relative to the index: a copy moved with
    its configuration answers as the original (no --data, no --fusion); one moved alone names the missing piece."""
    import shutil

    meta = json.loads((memory_world["index"] / "meta.json").read_text())
    assert set(meta["paths"]) == {"stores", "prepared", "configuration"}
    assert not any(Path(p).is_absolute() for p in [meta["tuner"], *meta["paths"].values()])
    moved = tmp_path / "moved"
    for part in ("index", "tuner", "stores", "prepared"):
        shutil.copytree(memory_world["root"] / part, moved / part)
    (moved / "fusion").mkdir()
    (moved / "fusion" / "fusion.json").write_text(json.dumps({memory_world["ds"].name: {"systems": {
        "lmort+bm25": {"dense_weight": 0.5}}}}))
    memory = Memory(moved / "index" / "lmort" / "tiny")  # the prepared set, stores and fusion, all as recorded
    assert memory.ds.folder == (moved / "prepared").resolve() and memory.fusion_json.parent.parent == moved.resolve()
    question = memory_world["ds"].queries["q20"]
    original = Memory(memory_world["index"], fusion_json=moved / "fusion" / "fusion.json")
    assert [p.id for p in memory.search(question, k=3)[0]] == [p.id for p in original.search(question, 3)[0]]
    alone = tmp_path / "alone"
    shutil.copytree(memory_world["index"], alone)
    with pytest.raises(DataError, match=r"alone/meta.json: its tuner \(\.\./\.\./\.\./tuner/best.*is missing"):
        Memory(alone)
    r = CliRunner().invoke(main, ["search", "--index", str(alone), "alpha"])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "its prepared (" in r.output, r.output  # read first


def test_lmort_ask_and_search_print_what_they_found(memory_world):
    r = CliRunner().invoke(main, ["ask", "--index", str(memory_world["index"]), "--data",
                                  str(memory_world["root"] / "prepared"), "--retriever", "lmort", "-k", "2",
                                  "--max-new-tokens", "2", "alpha", "beta"])
    assert r.exit_code == 0, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert "answer: " in r.output and "read (lmort, plain, question-first):" in lines and "ms: forward" in lines[-1]
    assert lines[lines.index("read (lmort, plain, question-first):") + 1].split()[0] == "1"
    assert "no span reader trained for this configuration" in r.output  # and it says so, in one line
    r = CliRunner().invoke(main, ["ask", "--index", str(memory_world["index"]), "--data",
                                  str(memory_world["root"] / "prepared"), " "])
    assert r.exit_code != 0 and "empty" in r.output
    r = CliRunner().invoke(main, ["search", "--index", str(memory_world["index"]), "--data",
                                  str(memory_world["root"] / "prepared"), "-k", "2", "alpha"])
    assert r.exit_code == 0, r.output
    import re

    hit = re.search(r"(?m)\s1\s+-?\d+\.\d{4}\s+(\S+)\n\s+(.+)$", r.output)  # rank, score, id; the text below
    assert hit and hit.group(1) in memory_world["ds"].corpus, r.output
    assert hit.group(2).startswith(memory_world["ds"].corpus[hit.group(1)]["text"].split()[0])


def test_bad_input_to_ask_search_and_fuse_is_one_line_before_any_model_loads(memory_world, tmp_path):
    index, data = str(memory_world["index"]), str(memory_world["root"] / "prepared")
    cases = [
        (["ask", "--index", index, "--data", data, "--max-new-tokens", "-5", "alpha"], "at least 1"),
        (["ask", "--index", index, "--data", data, "-k", "0", "alpha"], "-k"),
        (["ask", "--index", index, "--data", data, "--reader", "span", "alpha"], "no span reader"),
        (["search", "--index", index, "-k", "0", "alpha"], "-k"),
        (["search", "--index", index, "-k", "-3", "alpha"], "-k"),
    ]
    not_json = tmp_path / "fusion.json"
    not_json.write_text("weights: 0.5\n")
    cases.append((["ask", "--index", index, "--data", data, "--fusion", str(not_json), "alpha"], "not JSON"))
    listed = tmp_path / "params.yaml"
    listed.write_text("- a\n- b\n")
    cases.append((["fuse", "--params", str(listed), "--runs", str(tmp_path), "--dev-runs", str(tmp_path), "--out",
                   str(tmp_path / "fused")], "not a mapping"))
    for args, message in cases:
        r = CliRunner().invoke(main, args)
        assert r.exit_code != 0 and isinstance(r.exception, SystemExit), (args, r.output)  # no traceback
        assert message in r.output, (args, r.output)
        if message in ("at least 1", "-k"):  # checked before the model loads
            assert "Loading weights" not in r.output, args
    assert not (tmp_path / "fused").exists()
