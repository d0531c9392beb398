"""`lmort rag`: answer quality. The same reader (the configuration's LLM) answers a seeded sample of test
questions from each system's passages; the prompt order and k are chosen on dev questions first."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.common.atomic import atomic_file, check_writable
from pipeline.common.command_line import friendly_errors
from pipeline.common.config import section
from pipeline.common.params import load_params


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
@click.option("--readers", "readers_root", type=click.Path(path_type=Path),
              help="`lmort train-reader`'s folder (READERS/<set>/best): the span reader's rows, where one was trained.")
@click.option("--stores", type=click.Path(path_type=Path),
              help="cache/<name>/stores: the states the span reader reads (questions and passages).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="rag.json, rag.md, predictions.json, "
              "one PNG per set.")
@friendly_errors
def command(params_file, runs_dirs, dev_dirs, index_root, answers, readers_root, stores, out) -> None:
    """EM, F1, answer-in-output, Recall@k and seconds per question for every `rag.systems` entry."""
    check_writable(out)
    params = load_params(params_file)
    results, predictions, md = {}, {}, ""
    sets = section(params, "rag").sets
    if sets:
        import torch

        from pipeline.activations.llm import default_device
        from pipeline.answers.rag_run import rag_set
        from pipeline.answers.reader import Reader
        from pipeline.common.precision import resolve_compute_dtype
        from pipeline.data.prepare import ensure_prepared

        reader = Reader(params["model"], dtype=resolve_compute_dtype(params["extract"]["compute_dtype"],
                                                                     default_device()))
        torch.manual_seed(0)
        for data in sets:
            name = ensure_prepared(data).name
            results[name], predictions[name], part = rag_set(reader, data, params, runs_dirs, dev_dirs, index_root,
                                                             answers, out, readers_root, stores)
            md += part
    atomic_file(Path(out) / "rag.json", lambda tmp: tmp.write_text(json.dumps(results, indent=1)))
    atomic_file(Path(out) / "predictions.json", lambda tmp: tmp.write_text(json.dumps(predictions)))
    atomic_file(Path(out) / "rag.md", lambda tmp: tmp.write_text(md))
    click.echo(md or "no rag.sets in the params: nothing to read")
