"""`lmort serve` under load, on loopback only (the goals, with the span reader: /ask warm p50 <= 60 ms and p99
<= 150 ms with one client; 8 clients for 30 s with no errors and RSS within 10%; ready in <= 10 s):

1. starts `lmort serve --index I` on a free port of 127.0.0.1 and times it until /health answers (ready);
2. one client: `--requests` (>= 200) requests, one after another, after `--warm` untimed ones;
3. `--clients` (8) clients for `--seconds` (30), each sending its next request when the last is answered;
4. the server's RSS (/proc/<pid>/status VmRSS) before and after the 8 clients' load (after 5 s of the same load that
   starts the server's worker threads: growth past that is what a long-running server would show); errors counted.

    python bench/serve_bench.py --index cache/rag/index/lmort/squad [--endpoint ask] [--reader span]
    python bench/serve_bench.py --index cache/default/index/lmort/scifact --endpoint search

Questions: the set's test queries, in order, cycled. Prints a Markdown table and writes it to bench/serve_bench.md.
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import click
from span_ask_bench import percentile  # bench/ is the script's folder, first on sys.path


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(client, url: str, body: dict) -> tuple[float, int]:
    t0 = time.perf_counter()
    status = client.post(url, json=body, timeout=120).status_code
    return (time.perf_counter() - t0) * 1e3, status


@click.command()
@click.option("--index", "index_dir", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--endpoint", type=click.Choice(["ask", "search"]), default="ask", show_default=True)
@click.option("--reader", type=click.Choice(["span", "generate"]), help="/ask's reader [the server's].")
@click.option("--readers", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="`lmort serve --readers`: span readers from elsewhere (bench/untrained_reader.py: timing only).")
@click.option("--k", default=3, show_default=True)
@click.option("--memory-gb", type=float, help="`lmort serve --memory-gb` [its default].")
@click.option("--retriever", help="/ask's and /search's retriever [the index's default: <system>+bm25].")
@click.option("--max-new-tokens", default=8, show_default=True, help="/ask with the generative reader.")
@click.option("--requests", "n_requests", default=200, show_default=True)
@click.option("--warm", default=5, show_default=True)
@click.option("--clients", default=8, show_default=True)
@click.option("--seconds", default=30.0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench/serve_bench.md"), show_default=True)
def main(index_dir, endpoint, reader, readers, memory_gb, retriever, k, max_new_tokens, n_requests, warm, clients,
         seconds, out) -> None:
    import httpx

    from pipeline.answers.ask import open_prepared
    from pipeline.common.tables import markdown_table

    meta = json.loads((index_dir / "meta.json").read_text())
    ds = open_prepared(index_dir, meta)
    questions = [ds.queries[q] for q in sorted(ds.qrels["test"])]
    port = free_port()
    lmort = str(Path(sys.executable).parent / "lmort")
    t0 = time.perf_counter()
    server = subprocess.Popen([lmort, "serve", "--index", str(index_dir), "--port", str(port),
                               *(["--reader", reader] if reader else []),
                               *(["--readers", str(readers)] if readers else []),
                               *(["--memory-gb", str(memory_gb)] if memory_gb is not None else [])],
                              stdout=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        ready = wait_ready(url, server, t0)
        health = httpx.get(f"{url}/health").json()
        while health.get("passages_loading") and time.perf_counter() - t0 < 300:
            time.sleep(1)  # `lmort serve` loads the span reader's passage layers after it answers (--memory-gb)
            health = httpx.get(f"{url}/health").json()
        held = time.perf_counter() - t0
        key = "query" if endpoint == "search" else "question"
        extra = {"k": k} if endpoint == "search" else {"k": k, "max_new_tokens": max_new_tokens,
                                                       **({"reader": reader} if reader else {})}
        extra.update({"retriever": retriever} if retriever else {})

        def body(i: int) -> dict:
            return {key: questions[i % len(questions)], **extra}

        with httpx.Client() as client:
            for i in range(warm):
                timed(client, f"{url}/{endpoint}", body(i))
            one = [timed(client, f"{url}/{endpoint}", body(i)) for i in range(n_requests)]
        load(f"{url}/{endpoint}", body, clients, 5.0)  # warm-up: the server's worker threads and their buffers
        rss_before = rss_mb(server.pid)
        many = load(f"{url}/{endpoint}", body, clients, seconds)
        rss_after = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(30)
    rows = []
    for name, results in ((f"1 client, {n_requests} requests", one), (f"{clients} clients, {seconds:.0f} s", many)):
        ms = [m for m, status in results if status == 200]
        rows.append({"load": name, "requests": len(results), "errors": sum(s != 200 for _, s in results),
                     "p50 ms": statistics.median(ms) if ms else float("nan"),
                     "p90 ms": percentile(ms, 0.9) if ms else float("nan"),
                     "p99 ms": percentile(ms, 0.99) if ms else float("nan"),
                     "requests/s": len(results) / (seconds if "clients" in name else sum(m for m, _ in results) / 1e3)})
    table = markdown_table(rows, list(rows[0]), floatfmt=".1f")
    what = f"/{endpoint} (k = {k}" + (f", reader {reader or health['reader']}" if endpoint == "ask" else "") + (
        f", at most {max_new_tokens} new tokens)" if endpoint == "ask" and (reader or health["reader"]) == "generate"
        else ")")
    generates = endpoint == "ask" and (reader or health["reader"]) == "generate"
    flags = (f" --reader {reader}" if reader else "") + (f" --readers {readers}" if readers else "") + (
        f" --retriever {retriever}" if retriever else "") + (
        f" --memory-gb {memory_gb:g}" if memory_gb is not None else "") + (
        f" --seconds {seconds:g}" if seconds != 30 else "") + (
        f" --max-new-tokens {max_new_tokens}" if generates else "")
    passages = (f", passages in memory after {held:.0f} s" if health["passages_in_memory"] else
                ", passages read from Zarr" if health["reader"] == "span" else "")
    text = (f"`python bench/serve_bench.py --index {index_dir} --endpoint {endpoint}{flags} --out {out}`: {what} of "
            f"{health['system']} over {health['data']}, "
            f"retriever {retriever or health['retrievers'][0]}{', reranker loaded' if health['reranker'] else ''}; "
            f"ready {ready:.1f} s after start (process start to /health answering)"
            f"{passages}; server RSS "
            f"{rss_before:.0f} MB before the {clients} clients' {seconds:.0f} s, {rss_after:.0f} MB after them "
            f"({(rss_after / rss_before - 1) * 100:+.1f}%).\n\n{table}\n")
    out.write_text(text)
    click.echo(text)


def wait_ready(url: str, server: subprocess.Popen, t0: float, limit: float = 300) -> float:
    import httpx

    while time.perf_counter() - t0 < limit:
        if server.poll() is not None:
            raise click.ClickException(f"lmort serve exited with {server.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return time.perf_counter() - t0
        except httpx.TransportError:
            time.sleep(0.05)
    raise click.ClickException(f"lmort serve not ready after {limit} s")


def load(url: str, body, clients: int, seconds: float) -> list[tuple[float, int]]:
    """`clients` threads, each with its own connection, sending until `seconds` have passed."""
    import httpx

    results: list[tuple[float, int]] = []
    stop = time.perf_counter() + seconds

    def client(c: int) -> None:
        with httpx.Client() as session:
            i = c
            while time.perf_counter() < stop:
                try:
                    results.append(timed(session, url, body(i)))
                except httpx.HTTPError:
                    results.append((float("nan"), 0))
                i += clients

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


if __name__ == "__main__":
    main()
