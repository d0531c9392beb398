import hashlib
import http.server
import io
import json
import re
import threading
import zipfile
from functools import partial

import pytest
from click.testing import CliRunner

from pipeline.common.errors import DataError
from pipeline.data.beir import load_beir, load_prepared
from pipeline.data.bm25 import BM25
from pipeline.data.fetch import download_beir
from pipeline.data.prepare import judged_relevant, prepare_dataset, training_pairs
from stages.cli import main


def _lines(path):
    return path.read_text().splitlines(keepends=True)


@pytest.mark.parametrize("corrupt, message", [
    (lambda ls: ls[:2] + ['{"_id": "x", "text": \n'] + ls[2:], "corpus.jsonl:3: malformed JSON"),
    (lambda ls: ls[:1] + ['{"title": "t", "text": "cell"}\n'] + ls[1:], "corpus.jsonl:2: missing field '_id'"),
    (lambda ls: ls[:1] + ['{"_id": "z", "title": "t"}\n'] + ls[1:], "corpus.jsonl:2: missing field 'text'"),
    (lambda ls: ls + [ls[0]], "duplicate _id 'd0'"),
    (lambda ls: ls[:1] + ['{"_id": null, "text": "cell"}\n'] + ls[1:], "corpus.jsonl:2: field '_id' must be"),
    (lambda ls: ls[:1] + ['{"_id": "", "text": "cell"}\n'] + ls[1:], "corpus.jsonl:2: field '_id' must be"),
    (lambda ls: ls[:1] + ['{"_id": "o", "text": {"a": 1}}\n'] + ls[1:],
     "corpus.jsonl:2: field 'text' must be a string, got dict"),
    (lambda ls: [], "corpus.jsonl: no documents with text"),
])
def test_bad_corpus_lines_name_file_and_line(tiny_beir, tmp_path, corrupt, message):
    path = tiny_beir / "corpus.jsonl"
    path.write_text("".join(corrupt(_lines(path))))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["prepare", "--data", str(tiny_beir), "--out", str(out)])
    assert result.exit_code != 0
    assert message in result.output
    assert not out.exists() and not list(tmp_path.glob(".out*"))  # nothing half-written


def test_non_utf8_bytes(tiny_beir):
    path = tiny_beir / "queries.jsonl"
    path.write_bytes(path.read_bytes() + b'{"_id": "bad", "text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"queries.jsonl:25: not valid UTF-8"):
        load_beir(tiny_beir)


def test_empty_query_is_an_error_and_empty_doc_a_counted_skip(tiny_beir):
    q = tiny_beir / "queries.jsonl"
    q.write_text(q.read_text() + '{"_id": "e", "text": "  "}\n')
    with pytest.raises(DataError, match=r"queries.jsonl:25: empty field 'text'"):
        load_beir(tiny_beir)
    q.write_text("".join(_lines(q)[:-1]))
    c = tiny_beir / "corpus.jsonl"
    c.write_text(c.read_text() + '{"_id": "empty", "title": "", "text": ""}\n')
    beir = load_beir(tiny_beir)
    assert "empty" not in beir.corpus
    assert any("skipped 1 empty documents" in w and "41" in w for w in beir.warnings)


def test_qrels_to_unknown_ids_are_counted_and_skipped(tiny_beir):
    t = tiny_beir / "qrels" / "train.tsv"
    t.write_text(t.read_text() + "q0\tnope\t1\nghost\td1\t1\n")
    beir = load_beir(tiny_beir)
    assert "nope" not in beir.qrels["train"]["q0"]
    assert any("skipped 2 judgements" in w for w in beir.warnings)


@pytest.mark.parametrize("score", ["high", "inf", "nan", "0.9", "-1e400x"])
def test_bad_qrels_score(tiny_beir, score):
    t = tiny_beir / "qrels" / "test.tsv"
    t.write_text(t.read_text() + f"q0\td0\t{score}\n")
    with pytest.raises(DataError, match=r"test.tsv:8: field 'score'"):
        load_beir(tiny_beir)


def test_qrels_bom_whole_numbers_and_crlf_are_read(tiny_beir):
    t = tiny_beir / "qrels" / "test.tsv"
    t.write_bytes(b"\xef\xbb\xbf" + t.read_bytes().replace(b"\n", b"\r\n") + b"q0\td0\t2.0\r\n")
    assert load_beir(tiny_beir).qrels["test"]["q0"]["d0"] == 2


@pytest.mark.parametrize("case, message", [
    ("qrels bad utf-8", r"train.tsv:2: not valid UTF-8"),
    ("qrels all unknown", r"train.tsv: none of its 2 judgements names a known query and document"),
    ("qrels a directory", r"test.tsv: not a regular file"),
    ("corpus a directory", r"corpus.jsonl: not a regular file"),
    ("no queries", r"queries.jsonl: no queries"),
])
def test_bad_files_are_one_clear_line(tiny_beir, tmp_path, case, message):
    import shutil

    train, test = tiny_beir / "qrels" / "train.tsv", tiny_beir / "qrels" / "test.tsv"
    if case == "qrels bad utf-8":
        train.write_bytes(b"query-id\tcorpus-id\tscore\nq\xe9\td0\t1\n")
    elif case == "qrels all unknown":
        train.write_text("query-id\tcorpus-id\tscore\nghost\td0\t1\nq0\tnope\t1\n")
    elif case == "qrels a directory":
        test.unlink()
        test.mkdir()
    elif case == "corpus a directory":
        (tiny_beir / "corpus.jsonl").unlink()
        (tiny_beir / "corpus.jsonl").mkdir()
    elif case == "no queries":
        (tiny_beir / "queries.jsonl").write_text("")
        shutil.rmtree(tiny_beir / "qrels")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["prepare", "--data", str(tiny_beir), "--out", str(out)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # a ClickException, no traceback
    assert re.search(message, result.output), result.output
    assert "Traceback" not in result.output and not out.exists()


@pytest.mark.parametrize("line, message", [
    ("q0 Q0 d0 1 0.5\n", "run.trec:2: expected 6 fields"),
    ("q0 Q0 d0 1 nan lmort\n", "run.trec:2: field 'score' must be finite"),
    ("q0 Q0 d0 1 x lmort\n", "run.trec:2: field 'score' is not a number"),
])
def test_bad_run_lines_are_refused(tmp_path, line, message):
    from pipeline.common.metrics import read_trec_run

    path = tmp_path / "run.trec"
    path.write_text("q0 Q0 d1 1 0.9 lmort\n" + line)
    with pytest.raises(DataError, match=message):
        read_trec_run(path)


def test_prepare_writes_tables_pairs_and_dev(tiny_beir, tmp_path):
    summary = prepare_dataset(str(tiny_beir), tmp_path / "p", n_negatives=5)
    ds = load_prepared(tmp_path / "p")
    assert len(ds.corpus) == 40 and len(ds.queries) == 24
    assert summary["dev_carved_from_train"]["queries"] >= 1
    assert not set(ds.qrels["dev"]) & set(ds.pairs("train").to_pydict()["query_id"])
    # the sanity score is BM25's on the test split, as `lmort baselines` computes it
    from pipeline.common.metrics import evaluate
    from pipeline.retrieval.baselines import bm25_run

    test = list(ds.qrels["test"])
    assert summary["bm25"]["test"]["nDCG@10"] == pytest.approx(
        evaluate(bm25_run(ds, test), ds.qrels["test"])["nDCG@10"])


def test_hard_negatives_never_contain_a_judged_positive(tiny_beir):
    beir = load_beir(tiny_beir)
    # make several documents relevant to q0, in two splits, to tempt the miner
    beir.qrels["train"]["q0"] = {"d0": 1, "d1": 1, "d2": 2}
    beir.qrels.setdefault("test", {})["q0"] = {"d3": 1}
    judged = judged_relevant(beir.qrels)
    pairs = training_pairs(beir.queries, beir.qrels["train"], BM25(beir.corpus), judged, n_negatives=30).to_pylist()
    assert pairs
    for row in pairs:
        assert not set(row["negative_ids"]) & judged[row["query_id"]]
        assert row["negative_ids"], "BM25 should find some negatives on this data"
    assert {"d0", "d1", "d2"} == set(next(r for r in pairs if r["query_id"] == "q0")["positive_ids"])


def _zip_of(folder):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in folder.rglob("*"):
            if p.is_file():
                zf.write(p, f"tinyset/{p.relative_to(folder)}")
    return buf.getvalue()


@pytest.fixture
def loopback(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_over_loopback_checks_md5(tiny_beir, tmp_path, loopback):
    root, url = loopback
    blob = _zip_of(tiny_beir)
    (root / "tinyset.zip").write_bytes(blob)
    dest = tmp_path / "cache"
    with pytest.raises(DataError, match="md5"):
        download_beir("tinyset", dest, base_url=url, md5="0" * 32)
    assert not (dest / "tinyset").exists()
    got = download_beir("tinyset", dest, base_url=url, md5=hashlib.md5(blob).hexdigest())
    assert json.loads((got / "corpus.jsonl").read_text().splitlines()[0])["_id"] == "d0"
    assert len(load_beir(got).corpus) == 40


def test_unreachable_archive_is_one_clear_line(tmp_path, loopback, monkeypatch):
    """No network (a closed port) or a missing file: a DataError naming the URL and $LMORT_DATA, no traceback,
    nothing half-written; a server that stalls is cut off by the timeout."""
    import socket

    import pipeline.data.fetch as data_module

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    for base in (closed, loopback[1]):  # refused; 404
        with pytest.raises(DataError, match=r"tinyset\.zip: download failed .*\$LMORT_DATA/tinyset"):
            download_beir("tinyset", tmp_path / "cache", base_url=base, md5="0" * 32)
    assert not list((tmp_path / "cache").iterdir())
    stalled = socket.socket()
    stalled.bind(("127.0.0.1", 0))
    stalled.listen()  # accepts the connection, never answers
    monkeypatch.setattr(data_module, "DOWNLOAD_TIMEOUT", 0.5)
    try:
        with pytest.raises(DataError, match="timed out"):
            download_beir("tinyset", tmp_path / "cache", base_url=f"http://127.0.0.1:{stalled.getsockname()[1]}",
                          md5="0" * 32)
    finally:
        stalled.close()


def test_atomic_folders_get_the_mode_of_a_plain_mkdir(tmp_path):
    import os

    from pipeline.common.atomic import atomic_dir

    atomic_dir(tmp_path / "made", lambda tmp: (tmp / "f").write_text("x"))
    (tmp_path / "plain").mkdir()
    assert os.stat(tmp_path / "made").st_mode == os.stat(tmp_path / "plain").st_mode


def test_a_prepared_set_is_reused_only_for_the_source_it_was_made_from(tmp_path, monkeypatch, caplog):
    """cache/data/<name> records its source folder and digest: another folder of the same name, or the same
    folder changed, is prepared again instead of silently reusing the old tables."""
    from pipeline.data.prepare import ensure_prepared
    from pipeline.data.tiny import write_beir

    monkeypatch.setenv("LMORT_CACHE", str(tmp_path / "cache"))
    first = write_beir(tmp_path / "a" / "cranfield", n_docs=40)
    assert len(ensure_prepared(str(first)).corpus) == 40
    caplog.set_level("INFO")
    assert len(ensure_prepared(str(first)).corpus) == 40 and "preparing it again" not in caplog.text
    other = write_beir(tmp_path / "b" / "cranfield", n_docs=30)  # same name, another folder
    assert len(ensure_prepared(str(other)).corpus) == 30
    assert "prepared from" in caplog.text
    with open(other / "corpus.jsonl", "a") as f:  # the same folder, changed
        f.write(json.dumps({"_id": "extra", "title": "", "text": "one more passage"}) + "\n")
    assert len(ensure_prepared(str(other)).corpus) == 31
    assert "changed since" in caplog.text
    manifest = json.loads((tmp_path / "cache" / "data" / "cranfield" / "manifest.json").read_text())
    assert manifest["source"]["path"] == str(other.resolve()) and len(manifest["source"]["sha256"]) == 64


def test_a_set_found_nowhere_and_not_in_the_archive_says_where_to_put_it(tmp_path, monkeypatch):
    """cacm is in neither the BEIR archive nor ir_datasets: without ../shared a user is told what to do."""
    import pipeline.data.fetch as data

    monkeypatch.setenv("LMORT_DATA", str(tmp_path / "nothing"))
    monkeypatch.setattr(data, "SHARED_BEIR", tmp_path / "no-shared")
    monkeypatch.setattr(data, "PROJECT_ROOT", tmp_path / "no-root")
    result = CliRunner().invoke(main, ["prepare", "--data", "cacm", "--out", str(tmp_path / "out")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    line = result.output.strip().splitlines()[-1]
    assert "$LMORT_DATA/cacm" in line and "corpus.jsonl" in line and "scifact" in line
    assert not (tmp_path / "out").exists()
