"""`lmort train`: stage two. Train one tuner variant from the activation stores; the LLM is never loaded."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.common.atomic import check_writable
from pipeline.common.command_line import friendly_errors, names
from pipeline.common.config import LAYER_FUSIONS, RUN, VARIANTS
from pipeline.common.params import load_params, train_config, tuner_config
from pipeline.tuner.train import layer_pair, train
from pipeline.tuner.training_sets import open_training_sets


@click.command("train")
@click.option("--stores", type=click.Path(path_type=Path, exists=True), required=True,
              help="Folder of <data set>/{queries,corpus}.zarr written by `lmort extract`.")
@click.option("--data", "data", multiple=True, required=True, help="Training set(s); their train pairs are used.")
@click.option("--geometry", type=click.Path(path_type=Path, exists=True), required=True,
              help="geometry.json of `lmort analyze` (the A- and U-layers).")
@click.option("--variant", type=click.Choice(VARIANTS + LAYER_FUSIONS), default="lmort", show_default=True)
@click.option("--layer-selection", default=RUN.layer_selection, show_default=True,
              help="(U, A): `geometry` (the rule in --geometry), `dev` (the best pair on dev of `lmort sweep`, read "
                   "from --selection), or an explicit pair `U,A` (say, a sweep's dev pick in another configuration).")
@click.option("--selection", type=click.Path(path_type=Path),
              help="dev-pick.json (or selection.json) of `lmort sweep` (read with --layer-selection dev).")
@click.option("--params", "params_file", type=click.Path(path_type=Path, exists=True), default="params.yaml",
              show_default=True, help="YAML with `tuner:` and `train:` sections.")
@click.option("--set", "overrides", multiple=True, help="Override a parameter, e.g. --set tuner.blocks=3.")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--live", type=click.Path(path_type=Path),
              help="dvclive folder for the loss and dev curves and the best dev score [default: OUT/live].")
@friendly_errors
def command(stores, data, geometry, variant, layer_selection, selection, params_file, overrides, out, live) -> None:
    """Train one tuner variant from the stores (InfoNCE, BM25 hard negatives, dev-selected)."""
    check_writable(out)
    if live:
        check_writable(live)
    pair = layer_pair(layer_selection, selection)
    params = load_params(params_file, overrides)
    sets = open_training_sets(stores, names(data))
    first = sets[0].corpus
    if pair and not set(pair) <= set(first.layers):
        raise click.ClickException(f"--layer-selection {layer_selection} asks for (U, A) = {pair}, but the stores "
                                   f"hold layers {first.layers}: extract the missing ones (extract.layers)")
    cfg = tuner_config(params, variant, geometry, first.width, bool(first.fingerprint.get("attention_sink")),
                       list(first.layers), pair)
    summary = train(sets, cfg, train_config(params), out, live=live)
    click.echo(f"{variant}: {summary['parameters']:,} parameters, best dev nDCG@10 {summary['dev_ndcg@10']} "
               f"(epoch {summary['best_epoch']}), {summary['train_seconds']} s training; wrote {out}")
