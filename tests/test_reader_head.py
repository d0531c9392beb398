"""The span reader on the tiny random model: labels, learning a planted span, refusal of other stores."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from pipeline.activations.store import check_compatible
from pipeline.answers.reader_data import Passages, length_batches, locate, span_examples
from pipeline.answers.reader_train import (
    ReaderTrainConfig,
    dev_scores,
    open_reader_inputs,
    predict,
    reader_model_config,
    train_reader,
)
from pipeline.answers.span_reader import ReaderConfig, SpanReader, best_spans
from pipeline.common.config import Template
from pipeline.common.errors import ConfigError, DataError, StoreError
from pipeline.data.beir import load_prepared
from pipeline.data.prepare import prepare_dataset
from pipeline.data.tiny import WORDS, make_tiny_model

MARK = "omega"  # the answer is the word after this one: a span a head over layer-0 states can learn


def write_planted(folder: Path, n_docs: int = 48, seed: int = 0) -> dict[str, list[str]]:
    """A BEIR set whose every paragraph holds `omega <answer>` at a random place; one question per paragraph, its
    answer the word after `omega`; answers.jsonl beside it."""
    rng = random.Random(seed)
    words = [w for w in WORDS if w != MARK]
    folder.mkdir(parents=True)
    (folder / "qrels").mkdir()
    answers, docs = {}, {}
    for i in range(n_docs):
        body = rng.choices(words, k=rng.randint(6, 14))
        at = rng.randrange(len(body))
        answer = rng.choice([w for w in words if w not in body])  # its first occurrence is the planted one
        docs[f"d{i}"] = " ".join(body[:at] + [MARK, answer] + body[at:])
        answers[f"q{i}"] = [answer]
    with open(folder / "corpus.jsonl", "w") as f:
        for d, text in docs.items():
            f.write(json.dumps({"_id": d, "title": "cell gene", "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w") as f:
        for i in range(n_docs):
            f.write(json.dumps({"_id": f"q{i}", "text": " ".join(rng.sample(docs[f"d{i}"].split(), 3))}) + "\n")
    for split, rows in (("train", range(0, n_docs - 8)), ("test", range(n_docs - 8, n_docs))):
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                                       "".join(f"q{i}\td{i}\t1\n" for i in rows))
    (folder / "answers.jsonl").write_text("".join(json.dumps({"_id": q, "answers": a}) + "\n"
                                                  for q, a in answers.items()))
    return answers


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from pipeline.activations.extract import ExtractSpec, extract

    root = tmp_path_factory.mktemp("reader")
    model = str(make_tiny_model(root / "model", layers=2))
    write_planted(root / "beir")
    prepare_dataset(str(root / "beir"), root / "prepared", n_negatives=2, dev_fraction=0.2)
    ds = load_prepared(root / "prepared")
    for kind, length in (("corpus", 32), ("queries", 8)):
        spec = ExtractSpec(model, (0, 2), kind, length, compute_dtype="float32", shard_tokens=256, chunk_tokens=16)
        extract(ds, spec, root / "stores" / ds.name / f"{kind}.zarr", progress=False)
    return {"root": root, "model": model, "ds": ds, "stores": root / "stores", "answers": root / "beir/answers.jsonl"}


def test_offsets_round_trip_under_both_cases_and_a_title():
    from pipeline.data.beir import Prepared

    ds = Prepared("x", {"d": {"title": "Alpha Beta", "text": "Gamma beta Delta omega Cell gene"}}, {}, {}, Path("."))
    for case in ("keep", "lower"):
        template = Template(case=case)
        passages = Passages(ds, _word_tokenizer(), template, 64)
        p = passages["d"]
        s, e = locate(p, ds.corpus["d"]["text"], "Delta omega", template)
        assert p.span_text(s, e) == "Delta omega"  # cut from the text as written, whatever the stored case
        # the body is searched, not the title: "beta" is found after "gamma", not in "Alpha Beta"
        s, e = locate(p, ds.corpus["d"]["text"], "beta", template)
        assert p.offsets[s][0] > len("Alpha Beta") and p.span_text(s, e).lower() == "beta"
        assert locate(p, ds.corpus["d"]["text"], "zeta", template) is None
    short = Passages(ds, _word_tokenizer(), Template(case="lower"), 4)["d"]  # 4 tokens: the answer is past them
    assert locate(short, ds.corpus["d"]["text"], "cell gene", Template(case="lower")) == (-1, -1)


def _word_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def test_labels_are_the_stored_tokens_of_the_answer(planted):
    from transformers import AutoTokenizer

    from pipeline.activations.store import open_stores
    from pipeline.data.answers import read_answers

    ds = planted["ds"]
    _, corpus = open_stores(planted["stores"], ds.name)
    tokenizer = AutoTokenizer.from_pretrained(planted["model"])
    passages = Passages(ds, tokenizer, Template(**corpus.fingerprint["template"]),
                        32, corpus)
    answers = read_answers(planted["answers"])
    examples, counts = span_examples(ds, "train", answers, passages)
    assert counts["located"] == len(examples) == len(ds.qrels["train"]) and counts["not_found"] == 0
    for x in examples:
        tokens = corpus.token_ids(x.doc_id)
        assert x.start == x.end and passages[x.doc_id].span_text(x.start, x.end) == answers[x.qid][0]
        assert tokens[x.start - 1] == tokenizer.convert_tokens_to_ids(MARK)  # the stored token before is `omega`


def test_best_span_respects_order_and_length():
    start = torch.tensor([[0.0, 5.0, 0.0, 0.0, 9.0]])
    end = torch.tensor([[0.0, 0.0, 4.0, 8.0, 0.0]])
    s, e, score = best_spans(start, end, max_tokens=3)
    assert (int(s), int(e), float(score)) == (1, 3, 13.0)  # (4, 3) would score 17 but ends before it starts
    s, e, _ = best_spans(start, end, max_tokens=2)
    assert (int(s), int(e)) == (1, 2)  # (1, 3) is three tokens long


def test_length_batches_cover_every_index_once_and_group_lengths():
    import numpy as np

    lengths = [random.Random(i).randint(1, 100) for i in range(300)]
    batches = length_batches(lengths, 16, np.random.default_rng(0), pool=4)
    assert sorted(i for b in batches for i in b) == list(range(300))
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches])
    assert spread < 40  # random batches of 16 would spread about 90


@pytest.fixture(scope="module")
def trained_reader(planted):
    """The span reader trained on the planted world, where a configuration keeps it (ROOT/reader/<set>)."""
    cfg = ReaderTrainConfig(batch_size=8, epochs=12, lr=3e-3, evals_per_epoch=1, dev_questions=None, bf16=False)
    inputs = open_reader_inputs(planted["stores"], planted["ds"].folder, planted["answers"], cfg)
    model_cfg = reader_model_config({"reader": {"width": 32, "heads": 2, "max_answer_tokens": 4}},
                                    inputs.corpus.layers, inputs.corpus.width, True)
    out = planted["root"] / "reader" / planted["ds"].name
    return {"summary": train_reader(inputs, model_cfg, cfg, out, progress=False), "inputs": inputs, "out": out}


def test_the_reader_learns_a_planted_span_and_its_loss_falls(planted, trained_reader):
    summary, inputs, out = trained_reader["summary"], trained_reader["inputs"], trained_reader["out"]
    losses = [p["loss"] for p in summary["curve"]]
    assert losses[-1] < 0.5 * losses[0]
    assert summary["best"]["dev_em"] >= 0.75  # chance is about 1 in 12 tokens
    assert (out / "best/model.safetensors").is_file() and (out / "training.png").is_file()
    assert not (out / "checkpoint").exists()
    stores = check_compatible([inputs.queries, inputs.corpus])
    reader = SpanReader.load(out / "best", stores)
    assert dev_scores(reader, inputs, bf16=False)["em"] == pytest.approx(summary["best"]["dev_em"])
    # every prediction is a piece of the paragraph it read
    qids = inputs.dev
    docs = [next(iter(planted["ds"].qrels["dev"][q])) for q in qids]
    for (text, _), d in zip(predict(reader, inputs, qids, docs, bf16=False), docs):
        assert text and text in planted["ds"].corpus[d]["text"]
    with pytest.raises(DataError, match="no stored states for passage nosuch"):
        predict(reader, inputs, qids[:1], ["nosuch"], bf16=False)


def test_a_reader_from_other_stores_is_refused(tmp_path):
    reader = SpanReader(ReaderConfig(llm_width=8, layers=[0], width=8, heads=2))
    reader.save(tmp_path / "r", {"stores": {"model": "a", "layers": [0, 2], "template": {"case": "keep"}}})
    with pytest.raises(StoreError, match=r"trained on other stores: .*case"):
        SpanReader.load(tmp_path / "r", {"model": "a", "layers": [0, 2], "template": {"case": "lower"}})
    assert SpanReader.load(tmp_path / "r", {"model": "a", "layers": [0, 2], "template": {"case": "keep"}})
    with pytest.raises(FileNotFoundError, match="no span reader"):
        SpanReader.load(tmp_path / "none")


def test_reader_knobs_are_checked():
    with pytest.raises(ConfigError, match="unknown reader parameters"):
        reader_model_config({"reader": {"widht": 3}}, [0, 2], 8, True)
    with pytest.raises(ConfigError, match=r"reader.layers asks for \[6\]"):
        reader_model_config({"reader": {"layers": [6]}}, [0, 2], 8, True)
    assert reader_model_config({"reader": {"layers": "2"}}, [0, 2], 8, True).layers == [2]


@pytest.fixture(scope="module")
def span_memory(planted, trained_reader):
    """The planted world laid out as a configuration: a tuner's index, the stores and a trained span reader."""
    from pipeline.activations.store import open_stores
    from pipeline.common.config import TrainConfig, TunerConfig
    from pipeline.tuner.indexing import index_dataset
    from pipeline.tuner.train import train
    from pipeline.tuner.training_sets import TrainingSet

    root, ds = planted["root"], planted["ds"]
    queries, corpus = open_stores(planted["stores"], ds.name)
    cfg = TunerConfig(llm_width=queries.width, stream_layer=2, cross_layer=0, width=16, blocks=1, heads=2, out_dim=16)
    train([TrainingSet(ds, queries, corpus, ds.pairs("train").to_pylist(), ds.qrels["dev"])], cfg,
          TrainConfig(epochs=1, batch_size=8), root / "tuner", progress=False)
    index = root / "index" / "lmort" / ds.name
    index_dataset(root / "tuner" / "best", queries, corpus, list(ds.qrels["test"]), index, root / "run.trec",
                  "lmort", bf16=False, data=ds.name, prepared=ds.folder, configuration=root)
    return {**planted, "index": index, "queries": queries}


def test_ask_with_the_span_reader_answers_from_a_retrieved_passage(span_memory):
    from pipeline.answers.ask import Memory

    ds = span_memory["ds"]
    memory = Memory(span_memory["index"], ds)  # span: the configuration trained a reader
    assert memory.mode == "span" and memory.notice is None
    for qid in sorted(ds.qrels["test"]):
        a = memory.ask(ds.queries[qid], k=3, retriever="lmort", bf16=False)
        assert set(a.ms) == {"forward", "retrieve", "read", "total"}
        assert a.source.doc_id in [p.id for p in a.passages] and a.answer
        assert a.answer in ds.corpus[a.source.doc_id]["text"] and a.answer in a.source.sentence
        d = a.to_dict()  # what the API and /ask return: the answer is context[start:end] of its passage
        assert d["context"][d["start"] : d["end"]] == a.answer and d["passage"]["id"] == a.source.doc_id
        # the question's own forward reads what the queries store holds (up to its float16): the same span scores
        docs = [p.id for p in a.passages]
        ids = memory.llm.tokenize([memory.template.format_query(ds.queries[qid])], 8)[0]
        states, mask = memory.llm.forward(ids, memory.span.layers)
        online = {x.doc_id: x.score for x in memory.span.read({k: v[:, : int(mask.sum())] for k, v in states.items()},
                                                              docs)}
        stored = {x.doc_id: x.score for x in memory.span.read_stored_question(span_memory["queries"], qid, docs)}
        assert stored == pytest.approx(online, rel=0.02, abs=0.05)
    question = ds.queries[sorted(ds.qrels["test"])[0]]
    from_zarr = memory.ask(question, k=3, retriever="lmort", bf16=False).to_dict()
    assert not memory.hold_passages(0.0) and memory.hold_passages(8.0) and memory.passages_held  # `serve --memory-gb`
    held = memory.ask(question, k=3, retriever="lmort", bf16=False).to_dict()
    assert (held["answer"], held["start"], held["end"]) == (from_zarr["answer"], from_zarr["start"], from_zarr["end"])
    assert held["score"] == pytest.approx(from_zarr["score"], abs=1e-5)
    generating = Memory(span_memory["index"], ds, reader="generate")
    assert generating.mode == "generate"


def test_lmort_ask_span_prints_the_answer_its_passage_and_the_time_of_each_part(span_memory):
    from click.testing import CliRunner

    from stages.cli import main

    ds = span_memory["ds"]
    question = ds.queries[sorted(ds.qrels["test"])[0]]
    r = CliRunner().invoke(main, ["ask", "--index", str(span_memory["index"]), "--data", str(ds.folder),
                                  "--retriever", "lmort", "--reader", "span", *question.split()])
    assert r.exit_code == 0, r.output
    assert "answer: " in r.output and "span score" in r.output and "read (lmort, span):" in r.output
    assert r.output.strip().splitlines()[-1].startswith("ms: forward")
    assert "read " in r.output.strip().splitlines()[-1] and "generate" not in r.output.strip().splitlines()[-1]


def test_lmort_rag_reads_with_both_readers_and_chooses_each_on_dev(span_memory, tmp_path):
    from click.testing import CliRunner

    from pipeline.common.metrics import write_trec_run
    from pipeline.retrieval.baselines import bm25_run
    from stages.cli import main

    ds, root = span_memory["ds"], span_memory["root"]
    runs = tmp_path / "runs"
    for split in ("test", "dev"):
        write_trec_run(bm25_run(ds, list(ds.qrels[split])), runs / ds.name / split / "bm25.trec", "bm25")
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({
        "model": span_memory["model"], "eval_split": "test", "fusion": {"dev_split": "dev"},
        "extract": {"compute_dtype": "float32", "case": "lower", "query_template": "{text}"},
        "rag": {"sets": [str(ds.folder)], "questions": 6, "dev_questions": 4, "seed": 0,
                "systems": ["closed-book", "bm25", "oracle"], "orders": ["question-first", "passages-first"],
                "ks": [1], "max_new_tokens": 3, "batch_size": 4, "timing_questions": 1,
                "readers": ["generate", "span"], "prompts": ["plain", "few-shot", "constrained"], "shots": 2,
                "span_ks": [1, 3], "span_dev_questions": 8}}))
    r = CliRunner().invoke(main, ["rag", "--params", str(params), "--runs", str(runs), "--dev-runs", str(runs),
                                  "--index-root", str(root / "index"), "--answers", str(span_memory["answers"]),
                                  "--readers", str(root / "reader"), "--stores", str(span_memory["stores"]),
                                  "--out", str(tmp_path / "rag")])
    assert r.exit_code == 0, r.output
    out = json.loads((tmp_path / "rag" / "rag.json").read_text())[ds.name]
    # the generative prompt: plain and constrained in both orders, few-shot passages-first only
    assert sorted((c["prompt"], c["order"]) for c in out["choices"]) == sorted(
        [(p, o) for p in ("plain", "constrained") for o in ("question-first", "passages-first")]
        + [("few-shot", "passages-first")])
    assert out["choice"] == max(out["choices"], key=lambda c: c["dev F1"]) and len(out["shots"]) == 2
    assert out["span_choice"] == max(out["span_choices"], key=lambda c: c["dev F1"])
    rows = {(row["system"], row["reader"]): row for row in out["rows"]}
    assert set(rows) == {(s, "generate") for s in ("closed-book", "bm25", "oracle")} | {("bm25", "span"),
                                                                                        ("oracle", "span")}
    assert rows[("oracle", "span")]["EM"] >= 0.5 and rows[("oracle", "span")]["read ms/q"] > 0
    assert "F1 minus bm25" in rows[("oracle", "span")] and "F1 minus bm25" in rows[("oracle", "generate")]
    for outcome in out["span_outcomes"]:
        assert sum(v for k, v in outcome.items() if k != "system") == pytest.approx(1.0)
    predictions = json.loads((tmp_path / "rag" / "predictions.json").read_text())[ds.name]
    for qid, text in predictions["oracle span"].items():  # a span of the gold paragraph
        assert text in ds.corpus[next(iter(ds.qrels["test"][qid]))]["text"]


def test_constrained_decoding_continues_only_spans_of_the_passages():
    from pipeline.answers.reader import allowed_next

    seqs = [[5, 6, 7, 8], [6, 9]]
    assert allowed_next([], seqs, [2], 0) == [5, 6, 7, 8, 9]  # any passage token starts an answer
    assert allowed_next([6], seqs, [2], 0) == [2, 7, 9]  # what follows 6 in either passage, or stop
    assert allowed_next([6, 7, 8], seqs, [2], 0) == [2]  # the passage ends: only stop
    assert allowed_next([7, 2], seqs, [2], 0) == [0]  # a finished row of the batch takes padding


def test_a_few_shot_prompt_puts_worked_examples_before_the_question():
    from pipeline.answers.reader import Shot, build_prompt
    from pipeline.retrieval.hits import Hit

    shots = [Shot("who wrote it", Hit(1, 1.0, "d1", "Book", "It was written by Ann."), "Ann")]
    hits = [Hit(1, 1.0, "d2", "Song", "Sung by Bob.")]
    parts = build_prompt("who sang it", hits, Template(case="keep"), "<tail>", "passages-first", shots, "<end>\n")
    text = parts.text
    assert parts.prefix == "" and text.index("who wrote it") < text.index("Ann<end>") < text.index("who sang it")
    assert text.endswith("<tail>") and "Sung by Bob." in text
    with pytest.raises(ValueError, match="passages-first only"):
        build_prompt("who sang it", hits, Template(), "<tail>", "question-first", shots)
