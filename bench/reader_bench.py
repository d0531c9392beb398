"""What the span reader's training step costs, by design choice (the reader's step cost is part of the
work): bf16 autocast or float32, one or two model-encoder blocks, the width, one stored layer or three, and
batches sorted by passage length against random batches (the padding they carry).

    python bench/reader_bench.py [--steps 6] [--threads 2]

The states are random tensors of SQuAD's shapes under the rag configuration's stores (width 576, passages of
SmolLM2 tokens as the squad corpus store holds them, questions of 16 tokens); the lengths of a random and a sorted
batch come from the store when it exists (cache/rag/stores/squad), else from a fixed spread. Prints a Markdown
table (seconds per step of 32 questions, questions per second) and writes it to bench/reader_bench.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np
import torch

from pipeline.answers.reader_data import length_batches
from pipeline.answers.span_reader import ReaderConfig, SpanReader, span_loss
from pipeline.common.precision import autocast
from pipeline.common.tables import markdown_table

STORE = Path("cache/rag/stores/squad/corpus.zarr")


def passage_lengths() -> np.ndarray:
    if (STORE / "zarr.json").exists():
        from pipeline.activations.store import ActivationStore

        return np.asarray(ActivationStore(STORE).lengths)
    return np.random.default_rng(0).integers(60, 257, 20000)


def step_seconds(cfg: ReaderConfig, widths: list[int], bf16: bool, steps: int, batch: int = 32) -> float:
    torch.manual_seed(0)
    reader = SpanReader(cfg)
    opt = torch.optim.AdamW(reader.parameters(), 1e-3)
    dtype = torch.bfloat16 if bf16 else torch.float32
    times = []
    for i in range(steps + 1):
        tp = widths[i % len(widths)]
        p = {layer: torch.randn(batch, tp, cfg.llm_width).to(dtype) for layer in cfg.layers}
        q = {layer: torch.randn(batch, 16, cfg.llm_width).to(dtype) for layer in cfg.layers}
        pm, qm = torch.ones(batch, tp, dtype=torch.bool), torch.ones(batch, 16, dtype=torch.bool)
        gold = torch.randint(1, tp, (batch,))
        t0 = time.perf_counter()
        with autocast("cpu", bf16):
            start, end = reader(p, pm, q, qm)
        loss = span_loss(start, end, gold, gold)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return float(np.mean(times[1:]))  # the first step builds kernels


@click.command()
@click.option("--steps", default=6, show_default=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench/reader_bench.md"), show_default=True)
def main(steps, threads, out) -> None:
    torch.set_num_threads(threads)
    lengths = passage_lengths()
    rng = np.random.default_rng(0)
    sorted_w = [max(lengths[i] for i in b) for b in length_batches(lengths.tolist(), 32, rng)[:steps + 1]]
    random_w = [max(lengths[rng.integers(0, len(lengths), 32)]) for _ in range(steps + 1)]
    base = dict(llm_width=576, layers=[0, 2, 6])
    rows = []
    for name, kw, bf16, widths in [
        ("default: 3 layers, width 128, 1 model block, bf16, sorted batches", {}, True, sorted_w),
        ("random batches (padded to the longest of 32 random passages)", {}, True, random_w),
        ("float32", {}, False, sorted_w),
        ("2 model blocks", {"model_blocks": 2}, True, sorted_w),
        ("width 96", {"width": 96}, True, sorted_w),
        ("one stored layer (6)", {"layers": [6]}, True, sorted_w),
    ]:
        s = step_seconds(ReaderConfig(**{**base, **kw}), widths, bf16, steps)
        rows.append({"variant": name, "mean passage width": float(np.mean(widths)), "s/step": s,
                     "questions/s": 32 / s})
        click.echo(f"{name}: {s:.3f} s/step")
    table = markdown_table(rows, ["variant", "mean passage width", "s/step", "questions/s"], floatfmt=".3f")
    text = (f"`python bench/reader_bench.py --steps {steps} --threads {threads}` (training steps of 32 questions, "
            f"forward, backward, AdamW; random states of the squad stores' shapes):\n\n{table}\n")
    out.write_text(text)
    click.echo(text)


if __name__ == "__main__":
    main()
