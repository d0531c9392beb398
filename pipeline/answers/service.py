"""`lmort serve`: the memory over HTTP, its models and stores loaded once and kept warm (FastAPI).

    POST /search  {"query", "k", "retriever"}                      -> the hits and ms per part
    POST /ask     {"question", "k", "reader", "retriever", ...}    -> Answer.to_dict(): answer, score, start, end, ...
    GET  /health  what the server holds;  GET /  a one-page UI;  GET /docs, /openapi.json  the schema

Bad requests get a 4xx with one line of JSON ({"error": ...}) and the server keeps serving. The models are not
thread-safe and two cores gain nothing from two forwards at once: requests are answered one at a time, on one
thread (`memory_worker`), in the order they come."""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from ..common.config import RAG
from ..common.errors import ConfigError, DataError
from .ask import READER_CHOICES, Memory

MAX_TEXT = 2000  # characters of a question or query (the stores read 64 tokens of it)
MAX_K = 100
PAGE = Path(__file__).with_name("page.html")


class SearchRequest(BaseModel):
    query: str = Field(min_length=1, max_length=MAX_TEXT, description="New text, searched as a query.")
    k: int = Field(10, ge=1, le=MAX_K, description="Hits to return.")
    retriever: str | None = Field(None, description="<system>+bm25, <system> or bm25 [<system>+bm25].")


class AskRequest(BaseModel):
    question: str = Field(min_length=1, max_length=MAX_TEXT)
    k: int = Field(3, ge=1, le=20, description="Passages read.")
    reader: Literal[READER_CHOICES] | None = Field(None, description="span or generate [the memory's].")
    retriever: str | None = Field(None, description="<system>+bm25, <system> or bm25 [<system>+bm25].")
    max_new_tokens: int = Field(RAG.max_new_tokens, ge=1, le=256, description="generate: the longest answer.")


def one_line(error: RequestValidationError) -> str:
    """The first problem of a request as one line: where (the field) and what."""
    first = error.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    if first.get("type") == "json_invalid":
        return "the body is not JSON"
    return f"{where}: {first.get('msg', 'invalid')}"


def warm_up(memory: Memory) -> list[str]:
    """Everything a first request would otherwise load: each retriever (BM25's index, the fusion's weight), the
    LLM's forward, the reranker and the span reader. Returns the retrievers that cannot be built, with why (a
    request for one gets that line)."""
    usable, missing = [], []
    for name in memory.retrievers():
        try:
            memory.retriever(name)
            usable.append(name)
        except (DataError, FileNotFoundError) as e:
            missing.append(f"{name}: {e}")
    if memory.mode == "span":
        memory.ask("warm up", k=1, retriever=usable[0])
    else:
        memory.search("warm up", k=1, retriever=usable[0])
    return missing


def memory_worker() -> ThreadPoolExecutor:
    """The one thread every request's model work runs on, one request at a time: torch and oneDNN keep per-thread
    buffers and kernels, so spreading requests over the server's pool of threads grew its memory with each new
    thread (+87% after 90 s of 8 clients, bench/serve_bench.py); one thread builds them once."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmort-memory")


def create_app(memory: Memory, index: str = "", loading: bool = False,
               worker: ThreadPoolExecutor | None = None) -> FastAPI:
    """The service over one opened memory (`Memory`): every route reads it, none reloads anything. `loading`: the
    passages' layers are being loaded into memory behind it (`/health` says so until they are). `worker`: the
    thread the memory runs on (`memory_worker`; the one warm_up ran on, so its kernels are built)."""
    app = FastAPI(title="LMORT memory", description="A frozen LLM's retrieval and reading from its own stored "
                  "states.", version="0.1.0")
    worker = worker or memory_worker()

    async def on_worker(fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(worker, functools.partial(fn, *args, **kwargs))

    readers = [r for r in READER_CHOICES if r == "generate" or memory.span is not None]

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": one_line(e)}, status_code=422)

    @app.exception_handler(DataError)
    @app.exception_handler(ConfigError)
    async def refused(_: Request, e: Exception) -> JSONResponse:
        return JSONResponse({"error": str(e).splitlines()[0]}, status_code=400)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "index": index, "system": memory.system, "data": memory.ds.name,
                "model": memory.meta["model"], "passages": len(memory.meta["ids"]), "reader": memory.mode,
                "readers": readers, "retrievers": list(memory.retrievers()),
                "reranker": memory.reranker.reranker is not None, "passages_in_memory": memory.passages_held,
                "passages_loading": loading and not memory.passages_held}

    @app.post("/search")
    async def search(body: SearchRequest) -> dict:
        hits, ms = await on_worker(memory.search, body.query, min(body.k, len(memory.meta["ids"])), body.retriever)
        return {"query": body.query, "retriever": body.retriever or memory.retrievers()[0],
                "hits": [vars(h) for h in hits], "ms": ms}

    @app.post("/ask")
    async def ask(body: AskRequest) -> dict:
        if body.reader is not None and body.reader not in readers:
            raise DataError(f"reader {body.reader!r}: this memory reads with {', '.join(readers)}")
        answer = await on_worker(memory.ask, body.question, min(body.k, len(memory.meta["ids"])), body.retriever,
                                 max_new_tokens=body.max_new_tokens, reader=body.reader)
        return answer.to_dict()

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text()

    return app
