"""`lmort train-reader`: the span reader, trained from the stores alone (issue 31); the LLM is never loaded."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.atomic import check_writable
from pipeline.command_line import friendly_errors
from pipeline.params import load_params


@click.command("train-reader")
@click.option("--stores", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="Folder of <data set>/{queries,corpus}.zarr written by `lmort extract`.")
@click.option("--data", required=True, help="The set whose train questions teach the reader (its dev selects it).")
@click.option("--answers", "answers_path", type=click.Path(path_type=Path),
              help="answers.jsonl [beside the set's BEIR folder].")
@click.option("--params", "params_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default="params.yaml", show_default=True, help="YAML with a `reader:` section.")
@click.option("--set", "overrides", multiple=True, help="Override a parameter, e.g. --set reader.max_questions=5000.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="best/ (safetensors + reader.json), train.json, training.png.")
@friendly_errors
def command(stores, data, answers_path, params_file, overrides, out) -> None:
    """Train the span reader on DATA's train questions from the stores; dev EM/F1 selects it."""
    from pipeline.rag import answers_file
    from pipeline.reader_train import open_reader_inputs, reader_model_config, reader_train_config, train_reader

    check_writable(out)
    params = load_params(params_file, overrides)
    train_cfg = reader_train_config(params)
    inputs = open_reader_inputs(stores, data, answers_file(data, answers_path), train_cfg)
    model_cfg = reader_model_config(params, inputs.corpus.layers, inputs.corpus.width,
                                    bool(inputs.corpus.fingerprint.get("attention_sink")))
    summary = train_reader(inputs, model_cfg, train_cfg, out)
    best = summary["best"]
    click.echo(f"span reader: {summary['parameters']:,} parameters, layers {model_cfg.layers}, "
               f"{summary['questions_seen']:,} questions in {summary['train_seconds']} s; best dev EM "
               f"{best['dev_em']:.3f}, F1 {best['dev_f1']:.3f} after {best['questions_seen']:,}; wrote {out}")
