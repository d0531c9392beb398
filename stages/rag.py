"""`lmort rag`: answer quality. The same reader (the configuration's LLM) answers a seeded sample of test
questions from each system's passages; the prompt order and k are chosen on dev questions first."""

from __future__ import annotations

import json
from pathlib import Path

import click
import yaml

from pipeline.atomic import atomic_file, check_writable
from pipeline.command_line import friendly_errors
from pipeline.data import DataError
from pipeline.llm import Template
from pipeline.metrics import read_trec_run
from pipeline.prepare import ensure_prepared
from pipeline.rag import (
    CLOSED_BOOK,
    COLUMNS,
    ORACLE,
    answers_file,
    choose_prompt,
    read_answers,
    sample_questions,
    score_reader,
    time_retrieval,
    with_gaps,
)
from pipeline.runs import find_run
from pipeline.tables import markdown_table


def reader_template(index_dirs: dict[str, Path], params: dict) -> Template:
    """The stores' own template (an index's meta.json), so the reader's prompt starts with exactly the text the
    query vectors were read from; without an index, the params' (`\\n` written for a newline, as extract reads it)."""
    for folder in sorted(index_dirs.values()):
        return Template(**json.loads((folder / "meta.json").read_text())["template"])
    extract = params["extract"]
    return Template(query=extract["query_template"].replace("\\n", "\n"), case=extract["case"])


def bar_plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["F1"] for r in rows], width=0.4, label="F1")
    ax.bar([i + 0.2 for i in x], [r["answer in output"] for r in rows], width=0.4, label="answer in output")
    ax.set_xticks(list(x), [r["system"] for r in rows], rotation=25, ha="right")
    ax.set_ylabel("mean over questions")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    atomic_file(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def rag_set(reader, data: str, params: dict, runs_dirs, dev_dirs, index_root: Path, answers: str | None,
            out: Path) -> tuple[dict, dict, str]:
    """One set: the prompt chosen on dev questions, then every `rag.systems` entry on the test sample. Returns its
    results, its predictions and its Markdown."""
    rag, split = params["rag"], params.get("eval_split", "test")
    dev_split = (params.get("fusion") or {}).get("dev_split", "dev")
    ds = ensure_prepared(data)
    index_dirs = {p.parent.name: p for p in Path(index_root).glob(f"*/{ds.name}")}
    template = reader_template(index_dirs, params)
    path = answers_file(data, answers)
    refs = read_answers(path)
    missing = [q for q in ds.qrels[split] if q not in refs]
    if missing:
        raise DataError(f"{path}: no answers for {len(missing)} {split} questions of {ds.name} (e.g. {missing[0]})")
    test_q = sample_questions(list(ds.qrels[split]), rag["questions"], rag["seed"])
    dev_q = sample_questions([q for q in ds.qrels[dev_split] if q in refs], rag["dev_questions"], rag["seed"])
    best, choices = choose_prompt(reader, ds, dev_split, dev_q, refs,
                                  read_trec_run(find_run(dev_dirs, ds.name, dev_split, "bm25")), rag["orders"],
                                  rag["ks"], template, rag["max_new_tokens"], rag["batch_size"])
    fusion_json = Path(out).parent / "fusion" / "fusion.json"
    fused = json.loads(fusion_json.read_text()).get(ds.name, {}).get("systems", {}) if fusion_json.exists() else {}
    rows, preds, f1s = [], {}, {}
    for system in rag["systems"]:
        run = None if system in (CLOSED_BOOK, ORACLE) else read_trec_run(find_run(runs_dirs, ds.name, split, system))
        r = score_reader(reader, ds, split, test_q, refs, run, best["k"], best["order"], template,
                         oracle=system == ORACLE, max_new_tokens=rag["max_new_tokens"],
                         batch_size=rag["batch_size"], desc=f"test {system}")
        preds[system], f1s[system] = r.pop("predictions"), r.pop("f1_per_question")
        timed = [ds.queries[q] for q in test_q[: rag["timing_questions"]]]
        rows.append({"system": system, "F1": r["f1"], "EM": r["em"], "answer in output": r["contains"],
                     "recall@k": r["recall@k"], "retrieve s/q": time_retrieval(system, timed, ds, index_dirs, fused),
                     "generate s/q": r["generate_s_per_question"]})
        click.echo(f"{ds.name} {system}: F1 {r['f1']:.3f}, EM {r['em']:.3f}, in output {r['contains']:.3f}")
    rows = with_gaps(rows, f1s)
    result = {"split": split, "questions": len(test_q), "dev_split": dev_split, "dev_questions": len(dev_q),
              "choice": best, "choices": choices, "rows": rows, "columns": COLUMNS, "model": params["model"],
              "template": template.query}
    bar_plot(rows, Path(out) / f"rag-{ds.name}.png",
             f"{ds.name} {split}: {len(test_q)} questions, k={best['k']}, {best['order']}")
    dev_table = markdown_table(choices, ["order", "k", "dev F1", "dev EM", "dev answer in output", "generate s/q"])
    md = f"### {ds.name}\n\n{dev_table}\n{markdown_table(rows, COLUMNS)}\n"
    return result, preds, md


@click.command("rag")
@click.option("--params", "params_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              required=True, help="The configuration (model, extract's template, rag.*, fusion.*).")
@click.option("--runs", "runs_dirs", type=click.Path(path_type=Path), multiple=True, required=True,
              help="Folders of RUNS/<data>/<split>/<system>.trec on the eval split (tuners, baselines, fused).")
@click.option("--dev-runs", "dev_dirs", type=click.Path(path_type=Path), multiple=True, required=True,
              help="Folders of the dev runs (BM25's passages choose the prompt order and k).")
@click.option("--index-root", type=click.Path(path_type=Path), required=True,
              help="cache/<name>/index: the tuners' indexes, to time their online retrieval.")
@click.option("--answers", help="answers.jsonl [beside the set's BEIR folder].")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="rag.json, rag.md, predictions.json, "
              "one PNG per set.")
@friendly_errors
def command(params_file, runs_dirs, dev_dirs, index_root, answers, out) -> None:
    """EM, F1, answer-in-output, Recall@k and seconds per question for every `rag.systems` entry."""
    check_writable(out)
    params = yaml.safe_load(params_file.read_text())
    results, predictions, md = {}, {}, ""
    if (params.get("rag") or {}).get("sets"):
        import torch

        from pipeline.llm import default_device
        from pipeline.precision import resolve_compute_dtype
        from pipeline.reader import Reader

        reader = Reader(params["model"], dtype=resolve_compute_dtype(params["extract"]["compute_dtype"],
                                                                     default_device()))
        torch.manual_seed(0)
        for data in params["rag"]["sets"]:
            name = ensure_prepared(data).name
            results[name], predictions[name], part = rag_set(reader, data, params, runs_dirs, dev_dirs, index_root,
                                                             answers, out)
            md += part
    atomic_file(Path(out) / "rag.json", lambda tmp: tmp.write_text(json.dumps(results, indent=1)))
    atomic_file(Path(out) / "predictions.json", lambda tmp: tmp.write_text(json.dumps(predictions)))
    atomic_file(Path(out) / "rag.md", lambda tmp: tmp.write_text(md))
    click.echo(md or "no rag.sets in the params: nothing to read")
