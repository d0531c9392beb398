"""`lmort train-reader`: the span reader, trained from the stores alone; the LLM is never loaded."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.common.atomic import atomic_dir, check_writable
from pipeline.common.command_line import friendly_errors, names
from pipeline.common.config import section
from pipeline.common.params import load_params


@click.command("train-reader")
@click.option("--stores", type=click.Path(path_type=Path), required=True,
              help="Folder of <data set>/{queries,corpus}.zarr written by `lmort extract`.")
@click.option("--data", multiple=True, help="The set(s) whose train questions teach a reader each (their dev "
              "selects it) [the params' rag.sets; none: nothing to train, an empty OUT].")
@click.option("--answers", "answers_path", type=click.Path(path_type=Path),
              help="answers.jsonl [beside the set's BEIR folder] (with one --data).")
@click.option("--params", "params_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default="params.yaml", show_default=True, help="YAML with a `reader:` section.")
@click.option("--set", "overrides", multiple=True, help="Override a parameter, e.g. --set reader.max_questions=5000.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="OUT/<set>/: best/ (safetensors + reader.json), train.json, training.png.")
@friendly_errors
def command(stores, data, answers_path, params_file, overrides, out) -> None:
    """Train a span reader on each set's train questions from the stores; dev EM/F1 selects it."""
    check_writable(out)
    params = load_params(params_file, overrides)
    sets = names(data) or list(section(params, "rag").sets)
    if answers_path and len(sets) != 1:
        raise click.UsageError("--answers goes with exactly one --data")
    if not sets:  # the configuration reads no answers: an empty folder, and no torch imported
        atomic_dir(out, lambda tmp: (tmp / "readers.json").write_text(json.dumps({})))
        click.echo("no rag.sets in the params: no reader to train")
        return
    from pipeline.answers.reader_train import open_reader_inputs, reader_model_config, reader_train_config, train_reader
    from pipeline.data.answers import answers_file

    train_cfg = reader_train_config(params)
    for name in sets:
        inputs = open_reader_inputs(stores, name, answers_file(name, answers_path), train_cfg)
        model_cfg = reader_model_config(params, inputs.corpus.layers, inputs.corpus.width,
                                        bool(inputs.corpus.fingerprint.get("attention_sink")))
        summary = train_reader(inputs, model_cfg, train_cfg, Path(out) / inputs.ds.name)
        best = summary["best"]
        click.echo(f"{inputs.ds.name} span reader: {summary['parameters']:,} parameters, layers {model_cfg.layers}, "
                   f"{summary['questions_seen']:,} questions in {summary['train_seconds']} s; best dev EM "
                   f"{best['dev_em']:.3f}, F1 {best['dev_f1']:.3f} after {best['questions_seen']:,}")
