"""SQuAD-style answer files (answers.jsonl beside a BEIR folder) and the seeded question samples read against them:
what the rag stage and the span reader's training share, without the generative reader."""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..common.errors import DataError


def answers_file(data: str, given: str | Path | None) -> Path:
    """answers.jsonl: the one given, or the one beside the set's BEIR folder."""
    from .fetch import locate_dataset

    if given:
        return Path(given)
    folder = locate_dataset(data)
    if folder is None:
        raise FileNotFoundError(f"no BEIR folder for {data}, so no answers.jsonl: put it under $LMORT_DATA/{data}")
    return Path(folder) / "answers.jsonl"


def read_answers(path: Path) -> dict[str, list[str]]:
    """answers.jsonl: one {"_id", "answers": [...]} per line; a bad line names the file, the line and the field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no answers file (one {{\"_id\", \"answers\"}} per line; SQuAD's is built "
                                "by pipeline/data/fetch.py or found beside the BEIR folder)")
    out = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not JSON ({e.msg})") from None
            if not isinstance(obj.get("_id"), str):
                raise DataError(f"{path}:{lineno}: field '_id' must be a string")
            answers = obj.get("answers")
            if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
                raise DataError(f"{path}:{lineno}: field 'answers' must be a non-empty list of strings")
            out[obj["_id"]] = answers
    return out


def sample_questions(qids: list[str], n: int, seed: int) -> list[str]:
    """A seeded sample of n questions (all of them when n is larger), in a stable order."""
    qids = sorted(qids)
    return sorted(random.Random(seed).sample(qids, n)) if n < len(qids) else qids
