"""Two configurations' scores side by side: one Markdown row per (set, system), the difference, and the largest
difference. The check that bfloat16 keeps the default's scores within +-0.01 nDCG@10 of float32:

    make repro PROTOCOL=default-float32 && make repro
    python bench/reports/compare_metrics.py cache/default-float32/metrics.json cache/default/metrics.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.common.tables import markdown_table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("reference", type=Path, help="metrics.json of `lmort evaluate` (the reference run)")
    ap.add_argument("other", type=Path, help="metrics.json of the run compared with it")
    ap.add_argument("--measure", default="nDCG@10")
    args = ap.parse_args()
    ref, other = (json.loads(p.read_text()) for p in (args.reference, args.other))
    rows = []
    for data in sorted(set(ref) & set(other)):
        for system in sorted(set(ref[data]) & set(other[data])):
            a, b = ref[data][system][args.measure], other[data][system][args.measure]
            rows.append({"set": data, "system": system, args.reference.parent.name: f"{a:.4f}",
                         args.other.parent.name: f"{b:.4f}", "difference": f"{b - a:+.4f}"})
    if not rows:
        raise SystemExit(f"{args.reference} and {args.other} share no (set, system) with {args.measure}")
    print(markdown_table(rows, list(rows[0])))
    worst = max(rows, key=lambda r: abs(float(r["difference"])))
    print(f"\nlargest |difference| in {args.measure}: {abs(float(worst['difference'])):.4f} "
          f"({worst['system']} on {worst['set']})")


if __name__ == "__main__":
    main()
