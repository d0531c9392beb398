"""`lmort rerank`'s record as tables: rerank.json and rerank.md, one row per set and reranked system (what dev
chose, the paired tests on the test split). Apart from the reranking itself, so the report reads it without torch."""

from __future__ import annotations

import json
from pathlib import Path

from ..common.atomic import atomic_file
from ..common.tables import markdown_table
from ..retrieval.fusion import chosen_with_tests


def write_rerank_report(report: dict, out: Path) -> str:
    """OUT/rerank.json and OUT/rerank.md (one row per set and reranked system: dev's choice and the test deltas)."""
    atomic_file(Path(out) / "rerank.json", lambda tmp: tmp.write_text(json.dumps(report, indent=1)))
    md = markdown_table(rerank_rows(report), RERANK_COLUMNS, floatfmt=".3f")
    atomic_file(Path(out) / "rerank.md", lambda tmp: tmp.write_text(md))
    return md


RERANK_COLUMNS = ["set", "system", "design", "chosen on", "depth", "weight", "dev", "dev first stage", "dev p",
                  "guarded", "test minus first stage", "p (first stage)", "test minus bm25", "p (bm25)",
                  "unguarded: test minus first stage", "p (unguarded)", "ms/query"]


def rerank_rows(report: dict) -> list[dict]:
    return [{"set": data, "system": name, "design": per["design"], "chosen on": c["tuned_on"], "depth": c["depth"],
             "weight": c["weight"], "dev": c["dev_reranked"], "dev first stage": c["dev_first"],
             "dev p": f"{c['dev_p']:.2g}", "guarded": "yes" if c["guarded"] else "",
             "test minus first stage": c["test_minus_first"], "p (first stage)": f"{c['p_first']:.2g}",
             "test minus bm25": s.get("delta"), "p (bm25)": f"{s['p']:.2g}" if s else None,
             "unguarded: test minus first stage": c.get("unguarded_minus_first"),
             "p (unguarded)": f"{c['p_unguarded']:.2g}" if "p_unguarded" in c else None,
             "ms/query": c["ms_per_query"]}
            for data, per, name, c, s in chosen_with_tests(report)]
