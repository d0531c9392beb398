"""The Python API (`from pipeline import Index, Memory`) and `lmort serve` over HTTP, on the tiny model's index."""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def configuration(memory_world, tmp_path) -> Path:
    """The tiny world laid out as a configuration's folder (cache/<name>), with the fusion weight dev would choose."""
    root = tmp_path / "cache" / "default"
    for part in ("index", "tuner", "stores", "prepared"):
        shutil.copytree(memory_world["root"] / part, root / part)
    (root / "fusion").mkdir()
    choice = {"tiny": {"systems": {"lmort+bm25": {"dense_weight": 0.5}}}}
    (root / "fusion" / "fusion.json").write_text(json.dumps(choice))
    return root


def test_the_readme_python_example_runs(configuration, monkeypatch, capsys):
    """The README's example, as a new user copies it: only the index's path differs (the tiny model's)."""
    block = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    assert "cache/default/index/lmort/scifact" in block
    monkeypatch.chdir(configuration.parents[1])
    code = block.replace("cache/default/index/lmort/scifact", "cache/default/index/lmort/tiny")
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert re.search(r"^1 +-?\d+\.\d+ d\d+", printed, re.M), printed  # the first hit: rank, score, id
    assert re.search(r"\['d\d+', 'd\d+', 'd\d+'\] \{'forward'.*'total'", printed), printed  # passages read, ms


def test_index_searches_and_encodes_new_text_and_refuses_bad_input(configuration):
    from pipeline import DataError, Index

    index = Index(configuration / "index" / "lmort" / "tiny")
    one = index.search("alpha beta", k=3)
    assert [h.rank for h in one] == [1, 2, 3] and all(h.id in index.ds.corpus and h.text for h in one)
    assert one[0].score >= one[1].score >= one[2].score
    both = index.search(["alpha beta", "gamma"], k=2)
    assert len(both) == 2 and [h.id for h in both[0]] == [h.id for h in one[:2]]
    vectors = index.encode(["alpha beta", "gamma"])
    assert vectors.shape == (2, index.meta["dim"]) and vectors.dtype == np.float32
    scores, ids = index.retriever.index.search(vectors[:1], 1)
    assert index.meta["ids"][ids[0][0]] == one[0].id and scores[0][0] == pytest.approx(one[0].score, rel=1e-5)
    for bad, message in (("", "empty"), ([], "no text"), (["a", "  "], "text 1")):
        with pytest.raises(DataError, match=message):
            index.search(bad)
    with pytest.raises(DataError, match="k 0"):
        index.search("alpha", k=0)
    with pytest.raises(DataError, match="no index here"):
        Index(configuration)


def test_memory_asks_with_the_answer_its_passage_and_ms(configuration):
    from pipeline import Memory

    memory = Memory(configuration / "index" / "lmort" / "tiny")  # no --data, no --fusion: meta.json names them
    a = memory.ask("alpha beta", k=2, max_new_tokens=2)
    d = a.to_dict()
    assert d["retriever"] == "lmort+bm25" and d["reader"] == "generate" and len(d["passages"]) == 2
    assert {"forward", "retrieve", "generate", "total"} <= set(d["ms"]) and d["start"] is None
    json.dumps(d)  # what /ask returns


@pytest.fixture
def server(configuration):
    """`lmort serve`'s app on 127.0.0.1, a free port, in a thread of this process."""
    import uvicorn

    from pipeline import Memory
    from pipeline.answers.service import create_app, warm_up

    memory = Memory(configuration / "index" / "lmort" / "tiny")
    assert warm_up(memory) == []
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(memory), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", memory
    server.should_exit = True
    thread.join(10)


def test_serve_answers_search_ask_health_and_the_page(server):
    url, memory = server
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["readers"] == ["generate"] and health["retrievers"][0] == "lmort+bm25"
    assert health["passages_loading"] is False and health["passages_in_memory"] is False  # no span reader here
    found = httpx.post(f"{url}/search", json={"query": "alpha beta", "k": 3}).json()
    assert [h["id"] for h in found["hits"]] == [h.id for h in memory.search("alpha beta", 3)[0]]
    answer = httpx.post(f"{url}/ask", json={"question": "alpha beta", "k": 2, "max_new_tokens": 2}, timeout=60)
    assert answer.status_code == 200 and len(answer.json()["passages"]) == 2 and "total" in answer.json()["ms"]
    page = httpx.get(url)
    assert page.status_code == 200 and 'id="question"' in page.text and "fetch(\"ask\"" in page.text
    assert {"/search", "/ask", "/health"} <= set(httpx.get(f"{url}/openapi.json").json()["paths"])


def test_serve_refuses_bad_requests_in_one_json_line_and_keeps_serving(server):
    url, _ = server
    cases = [({"question": ""}, 422, "question"), ({"question": "x" * 3000}, 422, "question"),
             ({"question": "a", "k": 0}, 422, "k"), ({"question": "a", "k": 10**6}, 422, "k"),
             ({"question": "a", "reader": "oracle"}, 422, "reader"), ({"question": "a", "reader": "span"}, 400, "span"),
             ({"question": "   "}, 400, "empty"), ({"question": "a", "retriever": "nope"}, 400, "nope"),
             ({"k": 3}, 422, "question")]
    for body, status, word in cases:
        r = httpx.post(f"{url}/ask", json=body, timeout=60)
        assert r.status_code == status and word in r.json()["error"], (body, r.status_code, r.text)
        assert "\n" not in r.json()["error"]
    r = httpx.post(f"{url}/ask", content=b"question: alpha", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json() == {"error": "the body is not JSON"}
    r = httpx.post(f"{url}/search", json={"query": "alpha", "k": -1})
    assert r.status_code == 422 and r.json()["error"].startswith("k:")
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        httpx.post(f"{url}/search", json={"query": "alpha", "k": 2}, timeout=60).status_code)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 4 and httpx.get(f"{url}/health").status_code == 200


def test_serve_runs_every_request_s_model_work_on_one_thread(server, monkeypatch):
    """torch and oneDNN keep per-thread buffers and kernels: spread over the server's thread pool, the server's
    memory grew with each new thread (bench/serve_bench.py, 8 clients), so the model work has one thread."""
    url, memory = server
    names, search = [], memory.search

    def recorded(*args, **kwargs):
        names.append(threading.current_thread().name)
        return search(*args, **kwargs)

    monkeypatch.setattr(memory, "search", recorded)
    threads = [threading.Thread(target=lambda: httpx.post(f"{url}/search", json={"query": "alpha", "k": 2},
                                                          timeout=60)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(names) == 6 and len(set(names)) == 1 and names[0].startswith("lmort-memory"), names
