"""Markdown tables: how results are shown in the terminal, the reports and the benchmarks."""

from __future__ import annotations


def markdown_table(rows: list[dict], columns: list[str], floatfmt: str = ".3f") -> str:
    """A GitHub Markdown table; floats formatted, missing cells left empty."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 100 else format(v, floatfmt)  # counts and rates need no decimals
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return "" if v is None else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"
