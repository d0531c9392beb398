"""What a search found, as a person reads it: rank, score, id, title and the start of the text."""

from __future__ import annotations

from dataclasses import dataclass

from ..data.beir import Prepared


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    id: str
    title: str
    text: str


def ranked_hits(scores: dict[str, float], ds: Prepared | None, k: int) -> list[Hit]:
    """The top `k` of one query's run (doc id -> score) as hits, best first (ties keep the run's order); titles
    and texts from the prepared set, if any."""
    out = []
    for rank, (did, s) in enumerate(sorted(scores.items(), key=lambda x: -x[1])[:k], 1):
        doc = ds.corpus.get(did, {}) if ds is not None else {}
        out.append(Hit(rank, float(s), did, doc.get("title", ""), doc.get("text", "")))
    return out


def format_hits(hits: list[Hit], width: int = 100) -> str:
    lines = []
    for h in hits:
        head = f"{h.rank:>3}  {h.score:8.4f}  {h.id}" + (f"  {h.title}" if h.title else "")
        lines.append(head)
        if h.text:
            text = " ".join(h.text.split())
            lines.append("     " + (text[:width] + ("..." if len(text) > width else "")))
    return "\n".join(lines)
