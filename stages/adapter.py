"""`lmort adapter`: the adapter baseline. LoRA on the LLM's blocks up to the U-layer, trained with the
LLM in every step on the tuners' pairs, loss and dev selection; `lmort index --tuner OUT/best` then encodes a corpus
with it online (no --stores) and `lmort search` / `lmort evaluate` read its index and run as any tuner's."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from pipeline.common.atomic import check_writable
from pipeline.common.command_line import friendly_errors, names
from pipeline.common.errors import ConfigError
from pipeline.common.params import load_params, train_config
from pipeline.tuner.training_sets import open_training_sets


@click.command("adapter")
@click.option("--data", "data", multiple=True, required=True, help="Training set(s); their train pairs are used.")
@click.option("--layer", type=int, help="The U-layer [the U of `layer_selection` in --params].")
@click.option("--params", "params_file", type=click.Path(path_type=Path, exists=True), default="params.yaml",
              show_default=True, help="YAML with `adapter:`, `train:`, `extract:` and `model`.")
@click.option("--set", "overrides", multiple=True, help="Override a parameter, e.g. --set adapter.max_steps=50.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Writes OUT/best/ and OUT/train.json.")
@friendly_errors
def command(data, layer, params_file, overrides, out) -> None:
    """Train the LoRA adapter baseline (the LLM runs forward and backward in every step: it cannot read a store)."""
    from pipeline.activations.llm import default_device
    from pipeline.common.config import template_of
    from pipeline.tuner.adapter import AdapterConfig
    from pipeline.tuner.adapter_train import train_adapter

    check_writable(out)
    params = load_params(params_file, overrides)
    knobs = dict(params.get("adapter") or {})
    max_steps = knobs.pop("max_steps")
    if layer is None:
        selection = str(params.get("layer_selection", ""))
        if "," not in selection:
            raise ConfigError(f"layer_selection {selection!r} names no U-layer: give --layer")
        layer = int(selection.split(",")[0])
    extract = params["extract"]
    template = template_of(params)
    cfg = AdapterConfig(model=params["model"], layer=layer, query_max_length=extract["query_max_length"],
                        passage_max_length=extract["passage_max_length"], template=vars(template), **knobs)
    # the tuners' recipe, with a step budget: one pass of `max_steps` batches, dev scored once at its end
    recipe = replace(train_config(params), epochs=1, max_steps_per_epoch=max_steps, dev_every=1)
    summary = train_adapter(open_training_sets(None, names(data)), cfg, recipe, out, default_device())
    click.echo(f"adapter: {summary['trainable_parameters']:,} trainable parameters, {summary['steps']} steps at "
               f"{summary['seconds_per_step']} s/step, dev nDCG@10 {summary['dev_ndcg@10']}; wrote {out}")
