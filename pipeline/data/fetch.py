"""Find a data set, or fetch it: a local BEIR folder first ($LMORT_DATA, ../shared/data/beir, the cache), else the
BEIR archive, else ir_datasets for the sets the archive lacks.

ir_datasets downloads the original archives (md5-checked, with its mirror as a fallback) and parses the classic
Glasgow formats; this module only renames fields, normalises whitespace and applies the conversion that
../shared/data/beir/<name>/SOURCE.txt states for our copy of the set. The download lands in ir_datasets' own
cache ($IR_DATASETS_HOME, default ~/.ir_datasets); a pre-seeded archive there is used as it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterable
from pathlib import Path

from tqdm.auto import tqdm

from ..common.atomic import atomic_dir
from ..common.errors import DataError
from ..common.paths import cache_root

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARED_BEIR = Path("..") / "shared" / "data" / "beir"  # beside the project root, where our data sets live
DOWNLOAD_TIMEOUT = 30  # seconds without data before a download gives up
BEIR_ARCHIVE = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets"
# md5 of the archive's zips, as published in the BEIR README (an unknown name needs --md5).
BEIR_MD5 = {
    "scifact": "5f7d1de60b170fc8027bb7898e2efca1",
    "nfcorpus": "a89dba18a62ef92f7d323ec890a0d38d",
    "trec-covid": "ce62140cb23feb9becf6270d0d1fe6d1",
    "fiqa": "17918ed23cd04fb15047f73e6c3bd9d9",
    "arguana": "8ad3e3c2a5867cdced806d6503f29b99",
    "scidocs": "38121350fc3a4d2f48850f6aff52e4a9",
}
# sets the archive lacks that ir_datasets fetches: our name -> ir_datasets' name of the archive they come from
IR_DATASETS = {"cranfield": "cranfield", "vaswani_npl": "vaswani", "nfcorpus_preprocessed": "nfcorpus"}


# ---------------------------------------------------------------- locating and downloading


def resolve_dataset(
    data: str, cache_dir: Path | None = None, base_url: str = BEIR_ARCHIVE, md5: str | None = None
) -> Path:
    """A path, else a name under $LMORT_DATA, else under ../shared/data/beir or the cache, else fetched: through
    ir_datasets for the sets it holds that the BEIR archive lacks (IR_DATASETS), else from the BEIR archive."""
    cache_dir = Path(cache_dir or cache_root() / "beir")
    found = locate_dataset(data, cache_dir)
    if found:
        return found
    if data in IR_DATASETS and md5 is None:
        return fetch_ir_datasets(data, cache_dir)
    return download_beir(data, cache_dir, base_url=base_url, md5=md5)


def locate_dataset(data: str, cache_dir: Path | None = None) -> Path | None:
    """The local folder `resolve_dataset` would use, without downloading: None when there is none."""
    p = Path(data)
    if p.is_dir():
        return p
    roots = [Path(os.environ["LMORT_DATA"])] if os.environ.get("LMORT_DATA") else []
    for root in [*roots, SHARED_BEIR, PROJECT_ROOT.parent / "shared" / "data" / "beir",
                 Path(cache_dir or cache_root() / "beir")]:
        if (root / data / "corpus.jsonl").exists():
            return root / data
    return None


def download_beir(name: str, dest: Path, base_url: str = BEIR_ARCHIVE, md5: str | None = None) -> Path:
    """Fetch `name`.zip, check its md5, unpack it next to `dest` and rename into place (atomic)."""
    expected = md5 or BEIR_MD5.get(name)
    if expected is None:
        raise DataError(f"{name}: not found under $LMORT_DATA, ../shared/data/beir or {dest}, and not a set the "
                        f"BEIR archive ({', '.join(BEIR_MD5)}) or ir_datasets ({', '.join(IR_DATASETS)}) is known "
                        f"to hold; put its BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv) under "
                        f"$LMORT_DATA/{name}, or pass --md5 if the BEIR archive has it")
    dest.mkdir(parents=True, exist_ok=True)
    url = f"{base_url.rstrip('/')}/{name}.zip"
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        zpath = Path(tmp) / f"{name}.zip"
        digest = hashlib.md5()
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as resp, open(zpath, "wb") as out:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}") as bar:
                    while chunk := resp.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
                        bar.update(len(chunk))
        except (OSError, ValueError) as e:  # URLError, HTTPError, timeouts and resets are all OSErrors
            reason = getattr(e, "reason", None) or e
            raise DataError(f"{url}: download failed ({reason}); without a network, put the set's folder "
                            f"(corpus.jsonl, queries.jsonl, qrels/) under $LMORT_DATA/{name}") from None
        if digest.hexdigest() != expected:
            raise DataError(f"{url}: md5 {digest.hexdigest()} does not match the expected {expected}")
        with zipfile.ZipFile(zpath) as zf:
            zf.extractall(Path(tmp) / "x")
        found = [p.parent for p in (Path(tmp) / "x").rglob("corpus.jsonl")]
        if len(found) != 1:
            raise DataError(f"{url}: the archive holds {len(found)} corpus.jsonl files, expected 1")
        os.replace(found[0], dest / name)
    return dest / name


# ---------------------------------------------------------------- ir_datasets


def _clean(text: str) -> str:
    return " ".join(str(text).split())


def _write(folder: Path, corpus: Iterable[tuple[str, str, str]], queries: Iterable[tuple[str, str]],
           qrels: dict[str, Iterable[tuple[str, str, int]]], source: str) -> None:
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as f:
        for doc_id, title, text in corpus:
            f.write(json.dumps({"_id": doc_id, "title": _clean(title), "text": _clean(text)}) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as f:
        for query_id, text in queries:
            f.write(json.dumps({"_id": query_id, "text": _clean(text)}) + "\n")
    (folder / "qrels").mkdir()
    for split, rows in qrels.items():
        with open(folder / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            f.writelines(f"{q}\t{d}\t{g}\n" for q, d, g in rows)
    (folder / "SOURCE.txt").write_text(source + "\n")


def _cranfield(folder: Path) -> None:
    import ir_datasets

    ds = ir_datasets.load("cranfield")
    # cranqrel codes 1 (a complete answer) .. 4 (minimum interest) become grades 4 .. 1; code -1 is dropped
    qrels = [(q.query_id, q.doc_id, 5 - q.relevance) for q in ds.qrels_iter() if q.relevance > 0]
    _write(folder, ((d.doc_id, d.title, d.text) for d in ds.docs_iter()),
           ((q.query_id, q.text) for q in ds.queries_iter()), {"test": qrels},
           "ir_datasets 'cranfield' (Glasgow cran.tar.gz: cran.all.1400, cran.qry, cranqrel); query ids 1..225 in "
           "file order (cranqrel numbering); grade = 5 - code, code -1 dropped; whitespace normalised")


def _vaswani(folder: Path) -> None:
    import ir_datasets

    ds = ir_datasets.load("vaswani")
    _write(folder, ((d.doc_id, "", d.text) for d in ds.docs_iter()),
           ((q.query_id, q.text) for q in ds.queries_iter()),
           {"test": [(q.query_id, q.doc_id, q.relevance) for q in ds.qrels_iter()]},
           "ir_datasets 'vaswani' (Glasgow npl.tar.gz: doc-text, query-text, rlv-ass); whitespace normalised")


def _nfcorpus_preprocessed(folder: Path) -> None:
    """The original NFCorpus release's preprocessed files (ir_datasets downloads the archive; its own nfcorpus
    dataset reads the raw, unprocessed dump instead): corpus = test.docs + dev.docs, queries = the titles,
    qrels = {split}.2-1-0.qrel, as our copy's SOURCE.txt describes."""
    import ir_datasets

    home = ir_datasets.util.home_path() / "nfcorpus"
    archive = ir_datasets.util.DownloadConfig.context("nfcorpus", home)["main"].path()

    def rows(tar: tarfile.TarFile, member: str) -> list[list[str]]:
        with tar.extractfile(f"nfcorpus/{member}") as f:
            return [line.rstrip("\n").split("\t") for line in f.read().decode("utf-8").splitlines() if line.strip()]

    with tarfile.open(archive) as tar:
        corpus = {r[0]: r[-1] for member in ("test.docs", "dev.docs") for r in rows(tar, member)}
        queries = {r[0]: r[-1] for split in ("train", "dev", "test") for r in rows(tar, f"{split}.titles.queries")}
        qrels = {}
        for split in ("train", "dev", "test"):
            judged = [line[0].split() if len(line) == 1 else line for line in rows(tar, f"{split}.2-1-0.qrel")]
            qrels[split] = [(q, d, int(g)) for q, _, d, g in judged if int(g) > 0]
    _write(folder, ((i, "", t) for i, t in corpus.items()), queries.items(), qrels,
           "the original NFCorpus release (nfcorpus.tar.gz, fetched by ir_datasets), its PREPROCESSED text: "
           "corpus = test.docs + dev.docs, queries = {train,dev,test}.titles.queries, qrels = {split}.2-1-0.qrel "
           "(grades above 0)")


CONVERTERS = {"cranfield": _cranfield, "vaswani_npl": _vaswani, "nfcorpus_preprocessed": _nfcorpus_preprocessed}


def fetch_ir_datasets(name: str, dest: Path) -> Path:
    """Fetch `name` through ir_datasets into dest/name (BEIR layout, written atomically). A failed download
    ends in one line naming the archive's URL and where to put the set instead."""
    try:
        import ir_datasets
    except ImportError:
        raise DataError(f"{name}: not found locally; fetching it needs ir_datasets (pip install ir_datasets), or put "
                        f"its BEIR folder under $LMORT_DATA/{name}") from None
    url = ir_datasets.util.DownloadConfig.contents()[IR_DATASETS[name]]["main"]["url"]
    os.environ.setdefault("IR_DATASETS_DL_TIMEOUT", str(DOWNLOAD_TIMEOUT))
    log.info(f"{name}: fetching through ir_datasets from {url} (or its cache {ir_datasets.util.home_path()})")
    target = Path(dest) / name
    try:
        atomic_dir(target, CONVERTERS[name])
    except DataError:
        raise
    except Exception as e:  # network errors, a truncated or foreign archive: one line, nothing written
        if len(e.args) == 2 and isinstance(e.args[1], list):  # ir_datasets: ('All download sources failed', [...])
            reason = "every source failed: " + ", ".join(type(err).__name__ for _, err in e.args[1])
        else:
            reason = f"{type(e).__name__}: {str(e)[:200]}"
        raise DataError(f"{url}: fetching {name} through ir_datasets failed ({reason}); without a network, put the "
                        f"set's BEIR folder (corpus.jsonl, queries.jsonl, qrels/) under $LMORT_DATA/{name}, or the "
                        f"archive under {ir_datasets.util.home_path() / IR_DATASETS[name]}/") from None
    return target
