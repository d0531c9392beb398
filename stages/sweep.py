"""`lmort sweep`: the (U, A) layer sweep and the fusion baselines (stage two only), from one multi-layer store:
dev nDCG@10 per pair as a heatmap, the geometric rule's rank, test scores reported beside them, and
`selection.json` (the rule's pair and the dev pick) for `lmort train --layer-selection dev`."""

from __future__ import annotations

import json
from pathlib import Path

import click
from tqdm.auto import tqdm

from pipeline.common.atomic import atomic_file, check_writable
from pipeline.common.command_line import friendly_errors, names
from pipeline.common.config import section
from pipeline.common.params import load_params, train_config, tuner_config
from pipeline.tuner.sweep import plan, plot_heatmap, read_grid, run_sweep, selection, sweep_tables


def shard_of(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise click.BadParameter(f"{text!r}: give i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise click.BadParameter(f"{text!r}: need 0 <= i < n")
    return i, n


@click.command("sweep")
@click.option("--stores", type=click.Path(path_type=Path, exists=True), required=True,
              help="Folder of <data set>/{queries,corpus}.zarr holding every layer of the grid.")
@click.option("--data", "data", multiple=True, required=True, help="Training set(s), as for `lmort train`.")
@click.option("--test", "tests", multiple=True,
              help="Sets scored on their test split (reported, never chosen on); default: `sweep.test`.")
@click.option("--geometry", type=click.Path(path_type=Path, exists=True), required=True,
              help="geometry.json of `lmort analyze`: the rule's (U, A), marked on the heatmap.")
@click.option("--params", "params_file", type=click.Path(path_type=Path, exists=True), default="params.yaml",
              show_default=True, help="YAML with `tuner:`, `train:` (the recipe) and `sweep:` sections.")
@click.option("--set", "overrides", multiple=True, help="Override a parameter, e.g. --set 'sweep.layers=[0,12]'.")
@click.option("--shard", default="0/1", show_default=True,
              help="i/n: train every n-th point from the i-th (several processes share one grid).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder of points, heatmap, table.")
@click.option("--points-only", is_flag=True, help="Train and score the points; leave the summary for later.")
@click.option("--summarize", is_flag=True,
              help="Train nothing: summarise the finished points of the planned grid (points trained elsewhere).")
@friendly_errors
def command(stores, data, tests, geometry, params_file, overrides, shard, out, points_only, summarize) -> None:
    """Train every sweep point not done yet, then draw the heatmap and write selection.json and dev-pick.json."""
    i, n = shard_of(shard)
    check_writable(out)
    params = load_params(params_file, overrides)
    sw = section(params, "sweep")
    geo = json.loads(Path(geometry).read_text())
    layers, pairs, baselines = sw.layers, list(sw.pairs), list(sw.baselines)
    points = []
    if layers or pairs or baselines:
        if summarize:
            points = plan(None, layers, pairs, baselines)
        else:  # torch, only where there is a point to train (a sweep with nothing planned takes under a second)
            from pipeline.activations.llm import device_name
            from pipeline.tuner.training_sets import open_training_sets

            sets = open_training_sets(stores, names(data))
            evals = open_training_sets(stores, names(tests) or list(sw.test), pairs=False)
            first = sets[0].corpus
            stored = list(first.layers)
            points = plan(stored, layers, pairs, baselines)
            size = sw.size
            tuner = dict(params.get("tuner", {}))
            if size:  # a size sets the stack's shape: the section's own shape knobs give way
                tuner = {**{k: v for k, v in tuner.items() if k not in ("width", "blocks", "heads", "ff_ratio")},
                         "size": size}
            shaped = {**params, "tuner": tuner}

            def config_of(p):
                pair = (p.u_layer, p.a_layer) if p.u_layer is not None else None
                return tuner_config(shaped, p.variant, geometry, first.width,
                                    bool(first.fingerprint.get("attention_sink")), stored, pair)

            bar = lambda xs: tqdm(xs, desc=f"sweep points ({i}/{n})", unit="point")  # noqa: E731
            run_sweep(sets, evals, points[i::n], config_of, train_config(params), sw.min_steps,
                      out, {"size": size, "device": device_name()}, bar)
    if points_only:
        return
    found = read_grid(out, points) if out.exists() else []
    sel = selection(found, geo, planned=sum(p.variant == "lmort" for p in points))
    out.mkdir(parents=True, exist_ok=True)
    atomic_file(out / "selection.json", lambda tmp: tmp.write_text(json.dumps(sel, indent=1)))
    # what `lmort train --layer-selection dev` reads (and dvc.yaml's train stage depends on): the pick alone
    atomic_file(out / "dev-pick.json", lambda tmp: tmp.write_text(json.dumps({"dev": sel["dev"]}) + "\n"))
    if any(p["variant"] == "lmort" for p in found):
        plot_heatmap(found, sel, out / "sweep.png")
        if "test_rank" in sel:
            plot_heatmap(found, sel, out / "sweep-test.png", key="test_mean", title="test (mean)")
    atomic_file(out / "sweep.md", lambda tmp: tmp.write_text(sweep_tables(found, sel)))
    click.echo(f"{len(found)} of {len(points)} planned points; wrote {out / 'selection.json'} and {out / 'sweep.md'}")
