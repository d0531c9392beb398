"""A span reader of the configuration's shape with untrained weights, for timing only: what `/ask` with the span
reader costs depends on the reader's shape, the stores and the passages, not on what it learnt. Where no trained
reader exists for a set (the default trains none; the rag protocol's cache takes hours of stage one here), this lets
`bench/serve_bench.py --readers` time the span path over a real index and real stores. Its answers mean nothing.

    python bench/untrained_reader.py --params params.yaml --stores cache/default/stores --data scifact \
        --out /tmp/untrained-readers
    python bench/serve_bench.py --index cache/default/index/lmort/scifact --endpoint ask --reader span \
        --readers /tmp/untrained-readers --out bench/serve_bench_span.md
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--params", "params_file", type=click.Path(path_type=Path, exists=True), default=Path("params.yaml"),
              show_default=True, help="The configuration whose `reader:` section gives the shape.")
@click.option("--stores", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--data", required=True, help="The set's name (its stores: STORES/<data>/).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Writes OUT/<data>/best.")
def main(params_file, stores, data, out) -> None:
    import torch

    from pipeline.activations.store import open_stores, shared_fingerprint
    from pipeline.answers.reader_train import reader_model_config
    from pipeline.answers.span_reader import SpanReader
    from pipeline.common.params import load_params

    queries, corpus = open_stores(stores, data)
    cfg = reader_model_config(load_params(params_file), corpus.layers, corpus.width,
                              bool(corpus.fingerprint.get("attention_sink")))
    torch.manual_seed(0)
    SpanReader(cfg).eval().save(Path(out) / data / "best", {"stores": shared_fingerprint(corpus.fingerprint),
                                                            "untrained": "for timing only"})
    click.echo(f"wrote {Path(out) / data / 'best'}: an untrained span reader over layers {cfg.layers} (width "
               f"{cfg.width}); for timing only")


if __name__ == "__main__":
    main()
