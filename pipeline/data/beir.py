"""BEIR data: validate it and write normalised Parquet tables (pipeline/data/fetch.py finds or fetches it).

Every error names the file, the line and the field; nothing is written unless the whole set is valid.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..common.atomic import atomic_dir
from ..common.errors import DataError


@dataclass
class BeirSet:
    name: str
    corpus: dict[str, dict[str, str]]  # id -> {"title", "text"}
    queries: dict[str, str]
    qrels: dict[str, dict[str, dict[str, int]]]  # split -> qid -> did -> grade
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- the source's identity


def source_digest(folder: Path) -> str:
    """sha256 over a BEIR folder's files (corpus, queries, qrels; names and bytes): what a prepared set was
    made from, so that a changed or different source of the same name is never silently reused."""
    folder = Path(folder)
    files = [folder / "corpus.jsonl", folder / "queries.jsonl", *sorted((folder / "qrels").glob("*.tsv"))]
    h = hashlib.sha256()
    for f in files:
        if f.is_file():
            h.update(f.relative_to(folder).as_posix().encode() + b"\0")
            with open(f, "rb") as fh:
                while block := fh.read(1 << 22):
                    h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- reading and validation


def _require_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")


def _text_field(path: Path, lineno: int, obj: dict, key: str) -> str:
    """A text field as a string: a JSON string, or null/absent for "" (a number or an object is an error)."""
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{path}:{lineno}: field '{key}' must be a string, got {type(value).__name__}")
    return value


def _lines(path: Path):
    """(line number, text) of a UTF-8 file's non-blank lines, a byte-order mark dropped; bad bytes are a DataError
    naming the line."""
    _require_file(path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            if line.strip():
                yield lineno, line


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict]]:
    rows = []
    for lineno, line in _lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object")
        for key in required:
            if key not in obj:
                raise DataError(f"{path}:{lineno}: missing field '{key}'")
        if isinstance(obj["_id"], bool) or not isinstance(obj["_id"], (str, int)) or not str(obj["_id"]).strip():
            raise DataError(f"{path}:{lineno}: field '_id' must be a non-empty string or an integer, "
                            f"got {obj['_id']!r}")
        obj["_id"] = str(obj["_id"])
        rows.append((lineno, obj))
    return rows


def _check_unique(path: Path, rows: list[tuple[int, dict]]) -> None:
    seen: dict[str, int] = {}
    for lineno, obj in rows:
        if obj["_id"] in seen:
            raise DataError(f"{path}:{lineno}: duplicate _id '{obj['_id']}' (first on line {seen[obj['_id']]})")
        seen[obj["_id"]] = lineno


def _read_corpus(cpath: Path, notes: list[str]) -> dict[str, dict]:
    """The documents with a title or a text; the empty ones are skipped and counted in `notes`, with their lines."""
    crow = _read_jsonl(cpath, ("_id", "text"))
    _check_unique(cpath, crow)
    corpus, empty = {}, []
    for lineno, o in crow:
        title, text = _text_field(cpath, lineno, o, "title"), _text_field(cpath, lineno, o, "text")
        if not (title.strip() or text.strip()):
            empty.append(f"{lineno} ('{o['_id']}')")  # nothing to encode: skip it, count it, say where
            continue
        corpus[o["_id"]] = {"title": title, "text": text}
    if empty:
        notes.append(f"{cpath}: skipped {len(empty)} empty documents (fields 'title' and 'text' empty) "
                     f"on lines {', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}")
    if not corpus:
        raise DataError(f"{cpath}: no documents with text")
    return corpus


def _read_queries(qpath: Path) -> dict[str, str]:
    """Every query; an empty one is an error (a query cannot be skipped without changing the qrels' meaning)."""
    qrow = _read_jsonl(qpath, ("_id", "text"))
    _check_unique(qpath, qrow)
    queries = {}
    for lineno, o in qrow:
        text = _text_field(qpath, lineno, o, "text")
        if not text.strip():
            raise DataError(f"{qpath}:{lineno}: empty field 'text' in query '{o['_id']}'")
        queries[o["_id"]] = text
    if not queries:
        raise DataError(f"{qpath}: no queries")
    return queries


def _read_qrels(tsv: Path, queries: dict, corpus: dict, notes: list[str]) -> dict[str, dict[str, int]]:
    """One split's judgements; those naming an unknown query or document are skipped and counted in `notes`, and a
    file where every judgement does is an error (the qrels of another corpus)."""
    qrels: dict[str, dict[str, int]] = {}
    unknown = judged = 0
    for lineno, line in _lines(tsv):
        parts = line.rstrip("\r\n").split("\t")
        if lineno == 1 and parts[0] == "query-id":
            continue
        if len(parts) != 3:
            raise DataError(f"{tsv}:{lineno}: expected 3 tab-separated fields, got {len(parts)}")
        qid, did, score = parts
        grade = _grade(tsv, lineno, score)
        judged += 1
        if qid not in queries or did not in corpus:
            unknown += 1
            continue
        qrels.setdefault(qid, {})[did] = grade
    if judged and unknown == judged:
        raise DataError(f"{tsv}: none of its {judged} judgements names a known query and document "
                        f"(ids from the folder's queries.jsonl and corpus.jsonl)")
    if unknown:
        notes.append(f"{tsv}: skipped {unknown} judgements naming unknown query or document ids")
    return qrels


def load_beir(folder: Path, name: str | None = None) -> BeirSet:
    """Read and validate a BEIR folder; raise DataError on the first bad line."""
    folder = Path(folder)
    cpath, qpath = folder / "corpus.jsonl", folder / "queries.jsonl"
    for p in (cpath, qpath):
        _require_file(p)
    notes: list[str] = []
    corpus = _read_corpus(cpath, notes)
    queries = _read_queries(qpath)
    qdir = folder / "qrels"
    qrels = {tsv.stem: _read_qrels(tsv, queries, corpus, notes)
             for tsv in (sorted(qdir.glob("*.tsv")) if qdir.exists() else [])}
    return BeirSet(name or folder.name, corpus, queries, qrels, notes)


def _grade(tsv: Path, lineno: int, score: str) -> int:
    """A relevance grade: an integer (written as 2 or 2.0). Fractions, inf and NaN are refused: rounding 0.9 to 0
    would silently turn a judged document into a non-relevant one."""
    try:
        value = float(score)
    except ValueError:
        raise DataError(f"{tsv}:{lineno}: field 'score' is not a number: {score!r}") from None
    if not math.isfinite(value) or value != int(value):
        raise DataError(f"{tsv}:{lineno}: field 'score' must be an integer relevance grade, got {score!r}")
    return int(value)


# ---------------------------------------------------------------- normalised tables


def write_tables(beir: BeirSet, out: Path, extra: dict[str, pa.Table] | None = None,
                 source: dict | None = None) -> None:
    """Write corpus/queries/qrels (and any extra tables) to `out` atomically: all or nothing. `source` (the
    folder, its digest and the preparation settings) goes into the manifest, which reuse checks."""
    def write(tmp: Path) -> None:
        ids = list(beir.corpus)
        pq.write_table(pa.table({"id": ids, "title": [beir.corpus[i]["title"] for i in ids],
                                 "text": [beir.corpus[i]["text"] for i in ids]}), tmp / "corpus.parquet")
        pq.write_table(pa.table({"id": list(beir.queries), "text": list(beir.queries.values())}),
                       tmp / "queries.parquet")
        for split, qr in beir.qrels.items():
            rows = [(q, d, g) for q, ds in qr.items() for d, g in ds.items()]
            pq.write_table(pa.table({"query_id": [r[0] for r in rows], "doc_id": [r[1] for r in rows],
                                     "relevance": pa.array([r[2] for r in rows], pa.int32())}),
                           tmp / f"qrels-{split}.parquet")
        for tname, table in (extra or {}).items():
            pq.write_table(table, tmp / f"{tname}.parquet")
        (tmp / "manifest.json").write_text(json.dumps({
            "name": beir.name, "docs": len(beir.corpus), "queries": len(beir.queries),
            "splits": {s: len(q) for s, q in beir.qrels.items()}, "warnings": beir.warnings,
            "source": source or {}}, indent=1))

    atomic_dir(Path(out), write)


@dataclass
class Prepared:
    """A prepared data set, read back from `lmort prepare`'s Parquet tables."""

    name: str
    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, dict[str, int]]]
    folder: Path

    def pairs(self, split: str = "train") -> pa.Table:
        return pq.read_table(self.folder / f"pairs-{split}.parquet")


def load_prepared(folder: Path) -> Prepared:
    folder = Path(folder)
    if not (folder / "manifest.json").exists():
        raise DataError(f"{folder}: not a prepared data set (no manifest.json); run `lmort prepare`")
    c = pq.read_table(folder / "corpus.parquet").to_pydict()
    q = pq.read_table(folder / "queries.parquet").to_pydict()
    qrels: dict[str, dict[str, dict[str, int]]] = {}
    for p in sorted(folder.glob("qrels-*.parquet")):
        t = pq.read_table(p).to_pydict()
        split = qrels.setdefault(p.stem.removeprefix("qrels-"), {})
        for qid, did, g in zip(t["query_id"], t["doc_id"], t["relevance"]):
            split.setdefault(qid, {})[did] = g
    name = json.loads((folder / "manifest.json").read_text())["name"]
    corpus = {i: {"title": t, "text": x} for i, t, x in zip(c["id"], c["title"], c["text"])}
    return Prepared(name, corpus, dict(zip(q["id"], q["text"])), qrels, folder)
