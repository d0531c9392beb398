"""Do two configurations' stores of one data set hold the same arrays for layers 0 and 2?

Every query slot and six windows of 20,000 corpus slots are compared, with the ids, the starts and the fingerprints.
Used to show that protocol full-last's stores (layers 0, 2, 30) repeat protocol full's layers 0 and 2:

    python bench/compare_stores.py cache/full/stores cache/full-last/stores scifact
"""
import sys

import numpy as np
import zarr

a_root, b_root, name = sys.argv[1:4]
for kind in ("queries", "corpus"):
    a = zarr.open_group(f"{a_root}/{name}/{kind}.zarr", mode="r")
    b = zarr.open_group(f"{b_root}/{name}/{kind}.zarr", mode="r")
    fa, fb = a.attrs["fingerprint"], b.attrs["fingerprint"]
    diff = {k: (fa[k], fb.get(k)) for k in fa if fa[k] != fb.get(k)}
    same_ids = a.attrs["ids"] == b.attrs["ids"] and np.array_equal(a["starts"][:], b["starts"][:])
    for layer in (0, 2):
        x, y = a[f"layer_{layer}"], b[f"layer_{layer}"]
        n = x.shape[0]
        starts = np.linspace(0, n - 1, 6, dtype=int)
        windows = [(0, n)] if kind == "queries" else [(s, min(n, s + 20000)) for s in starts]
        equal = all(np.array_equal(x[s:e], y[s:e]) for s, e in windows)
        rows = sum(e - s for s, e in windows)
        print(f"{name} {kind} layer {layer}: {rows:,} of {n:,} slots compared, identical={equal}, "
              f"same ids/starts={same_ids}, fingerprint differs in {sorted(diff)}")
