"""The rag protocol's run on one set (`lmort rag`): the generative reader's prompt (style, order, k) and the span
reader's k chosen on dev questions, then every `rag.systems` entry with each reader on the test sample."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..common.atomic import atomic_file
from ..common.config import Template, run_config, section, template_of
from ..common.errors import DataError
from ..common.metrics import read_trec_run
from ..common.tables import markdown_table
from ..data.answers import answers_file, read_answers, sample_questions
from ..data.prepare import ensure_prepared
from ..retrieval.runs import find_run
from .rag import (
    CLOSED_BOOK,
    COLUMNS,
    FAILURES,
    ORACLE,
    choose_prompt,
    choose_span_k,
    few_shot_examples,
    score_reader,
    score_span_reader,
    time_generation,
    time_retrieval,
    with_gaps,
)

log = logging.getLogger(__name__)


def reader_template(index_dirs: dict[str, Path], params: dict) -> Template:
    """The stores' own template (an index's meta.json), so the reader's prompt starts with exactly the text the
    query vectors were read from; without an index, the params' (`\\n` written for a newline, as extract reads it)."""
    for folder in sorted(index_dirs.values()):
        return Template(**json.loads((folder / "meta.json").read_text())["template"])
    return template_of(params)


def bar_plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(rows)), 3.8))
    x = range(len(rows))
    ax.bar([i - 0.27 for i in x], [r["F1"] for r in rows], width=0.27, label="F1")
    ax.bar(list(x), [r["EM"] for r in rows], width=0.27, label="EM")
    ax.bar([i + 0.27 for i in x], [r["answer in output"] for r in rows], width=0.27, label="answer in output")
    ax.set_xticks(list(x), [f"{r['system']} ({r.get('reader', 'generate')})" for r in rows], rotation=30, ha="right")
    ax.set_ylabel("mean over questions")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    atomic_file(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def span_reader_of(readers_root: Path | None, stores: Path | None, ds, tokenizer):
    """The set's trained span reader with its two stores, or None where the configuration trained none."""
    folder = Path(readers_root or "") / ds.name / "best"
    if readers_root is None or stores is None or not (folder / "reader.json").is_file():
        return None
    from pipeline.activations.store import open_stores
    from pipeline.answers.span_read import StoredPassageReader

    queries, corpus = open_stores(stores, ds.name)
    return StoredPassageReader(folder, corpus, ds, tokenizer), queries


def reader_rows(system: str, scored: dict, reader_name: str, retrieve_s: float | None, read_ms: float) -> dict:
    return {"system": system, "reader": reader_name, "F1": scored["f1"], "EM": scored["em"],
            "answer in output": scored["contains"], "recall@k": scored["recall@k"],
            "retrieve ms/q": None if retrieve_s is None else 1e3 * retrieve_s, "read ms/q": read_ms}


def test_rows(ctx: dict, gen_best: dict, span_best: dict | None) -> tuple[list[dict], dict]:
    """Every (system, reader) on the test sample: the rows (F1 gaps within each reader) and the predictions."""
    rag, ds, split, qids, refs = ctx["rag"], ctx["ds"], ctx["split"], ctx["test_q"], ctx["refs"]
    rows: dict[str, list[dict]] = {"generate": [], "span": []}
    preds, f1s = {}, {"generate": {}, "span": {}}
    timed = [ds.queries[q] for q in qids[: rag.timing_questions]]
    for system in rag.systems:
        run = None if system in (CLOSED_BOOK, ORACLE) else read_trec_run(find_run(ctx["runs"], ds.name, split, system))
        retrieve_s = time_retrieval(system, timed, ds, ctx["index_dirs"], ctx["fused"])
        r = score_reader(ctx["reader"], ds, split, qids, refs, run, gen_best["k"], gen_best["order"], ctx["template"],
                         oracle=system == ORACLE, max_new_tokens=rag.max_new_tokens, batch_size=rag.batch_size,
                         desc=f"test {system}", prompt=gen_best.get("prompt", "plain"), shots=ctx["shots"])
        read_ms = time_generation(ctx["reader"], r, rag.timing_questions, rag.max_new_tokens)
        rows["generate"].append(reader_rows(system, r, "generate", retrieve_s, read_ms))
        preds[f"{system} generate"], f1s["generate"][system] = r["predictions"], r["f1_per_question"]
        log.info(f"{ds.name} {system} generate: F1 {r['f1']:.3f}, EM {r['em']:.3f}")
        if span_best is not None and system != CLOSED_BOOK:
            span, queries = ctx["span"]
            r = score_span_reader(span, queries, ds, split, qids, refs, run, span_best["k"], system == ORACLE)
            rows["span"].append(reader_rows(system, r, "span", retrieve_s, r["read_ms_per_question"]))
            ctx["outcomes"].append({"system": system, **r["outcomes"]})
            preds[f"{system} span"], f1s["span"][system] = r["predictions"], r["f1_per_question"]
            log.info(f"{ds.name} {system} span: F1 {r['f1']:.3f}, EM {r['em']:.3f}")
    return with_gaps(rows["generate"], f1s["generate"]) + with_gaps(rows["span"], f1s["span"]), preds


def rag_set(reader, data: str, params: dict, runs_dirs, dev_dirs, index_root: Path, answers: str | None,
            out: Path, readers_root: Path | None = None, stores: Path | None = None) -> tuple[dict, dict, str]:
    """One set: the generative prompt (style, order, k) and the span reader's k chosen on dev questions, then
    every `rag.systems` entry with each reader on the test sample. Returns its results, predictions, Markdown."""
    rag, split = section(params, "rag"), run_config(params).eval_split
    dev_split = section(params, "fusion").dev_split
    ds = ensure_prepared(data)
    index_dirs = {p.parent.name: p for p in Path(index_root).glob(f"*/{ds.name}")}
    path = answers_file(data, answers)
    refs = read_answers(path)
    missing = [q for q in ds.qrels[split] if q not in refs]
    if missing:
        raise DataError(f"{path}: no answers for {len(missing)} {split} questions of {ds.name} (e.g. {missing[0]})")
    fusion_json = Path(out).parent / "fusion" / "fusion.json"
    ctx = {"outcomes": [], "rag": rag, "ds": ds, "split": split, "refs": refs, "reader": reader, "runs": runs_dirs,
           "index_dirs": index_dirs, "template": reader_template(index_dirs, params),
           "test_q": sample_questions(list(ds.qrels[split]), rag.questions, rag.seed),
           "shots": few_shot_examples(ds, refs, rag.shots, rag.seed),
           "fused": json.loads(fusion_json.read_text()).get(ds.name, {}).get("systems", {})
           if fusion_json.exists() else {},
           "span": span_reader_of(readers_root, stores, ds, reader.tokenizer) if "span" in rag.readers else None}
    dev_q = sample_questions([q for q in ds.qrels[dev_split] if q in refs], rag.dev_questions, rag.seed)
    bm25_dev = read_trec_run(find_run(dev_dirs, ds.name, dev_split, "bm25"))
    gen_best, gen_choices = choose_prompt(reader, ds, dev_split, dev_q, refs, bm25_dev, rag.orders, rag.ks,
                                          ctx["template"], rag.max_new_tokens, rag.batch_size,
                                          rag.prompts, ctx["shots"])
    span_best, span_choices = None, []
    if ctx["span"] is not None:
        span_dev = sample_questions([q for q in ds.qrels[dev_split] if q in refs], rag.span_dev_questions,
                                    rag.seed)
        span_best, span_choices = choose_span_k(*ctx["span"], ds, dev_split, span_dev, refs, bm25_dev,
                                                rag.span_ks)
    rows, preds = test_rows(ctx, gen_best, span_best)
    result = {"split": split, "questions": len(ctx["test_q"]), "dev_split": dev_split, "dev_questions": len(dev_q),
              "choice": gen_best, "choices": gen_choices, "span_choice": span_best, "span_choices": span_choices,
              "span_outcomes": ctx["outcomes"],
              "rows": rows, "columns": COLUMNS, "model": params["model"], "template": ctx["template"].query,
              "shots": [{"question": x.question, "doc_id": x.passage.id, "title": x.passage.title,
                         "text": x.passage.text, "answer": x.answer} for x in ctx["shots"]]}
    bar_plot(rows, Path(out) / f"rag-{ds.name}.png", f"{ds.name} {split}: {len(ctx['test_q'])} questions")
    md = (f"### {ds.name}\n\n{markdown_table(gen_choices, GEN_CHOICE_COLUMNS)}\n"
          + (f"{markdown_table(span_choices, SPAN_CHOICE_COLUMNS)}\n" if span_choices else "")
          + (f"{markdown_table(ctx['outcomes'], ['system', *FAILURES])}\n" if ctx["outcomes"] else "")
          + f"{markdown_table(rows, COLUMNS)}\n")
    return result, preds, md


GEN_CHOICE_COLUMNS = ["prompt", "order", "k", "dev F1", "dev EM", "dev answer in output", "generate s/q"]
SPAN_CHOICE_COLUMNS = ["k", "dev F1", "dev EM", "dev recall@k", "read ms/q"]
