"""Length-bucketed batching: the one rule by which extraction (the LLM), encoding (the tuner) and the MiniLM
baseline group texts. Sorting by length, longest first, keeps padding small and shows the worst memory first."""

from __future__ import annotations

from collections.abc import Iterator, Sequence


def length_buckets(lengths: Sequence[int], batch_tokens: int | None = None,
                   batch_size: int | None = None) -> Iterator[list[int]]:
    """Indices into `lengths`, longest first, in batches of at most `batch_size` texts, or else as many as keep
    the padded batch (its longest text x its count) within `batch_tokens`."""
    if (batch_tokens is None) == (batch_size is None):
        raise ValueError("give batch_tokens or batch_size")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    start = 0
    while start < len(order):
        size = batch_size or max(1, batch_tokens // max(1, lengths[order[start]]))
        yield order[start : start + size]
        start += size
