"""`lmort serve`: the memory of one index over HTTP (FastAPI + uvicorn), its models and stores loaded once."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.common.command_line import friendly_errors


@click.command("serve")
@click.option("--index", "index_dir", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="An index of `lmort index`; its meta.json names the stores, data and configuration it reads.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--reader", type=click.Choice(["span", "generate"]),
              help="The default reader [span where the configuration trained one, else generate].")
@click.option("--rerank/--no-rerank", default=None, help="[as dev chose for each retriever]")
@click.option("--data", help="The prepared set the index holds [the one its meta.json names].")
@click.option("--readers", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="A folder of span readers, <set>/best [the configuration's reader/].")
@click.option("--memory-gb", type=click.FloatRange(min=0), default=8.0, show_default=True,
              help="The span reader's passage layers are loaded into memory where they fit (in the background, once "
                   "the server answers): reads then skip Zarr's decoding. 0: always read from Zarr.")
@friendly_errors
def command(index_dir, host, port, reader, rerank, data, readers, memory_gb) -> None:
    """Serve search and ask over HTTP: POST /search, POST /ask, GET /health, a page at /."""
    import time

    import uvicorn

    from pipeline.answers.ask import Memory
    from pipeline.answers.service import create_app, memory_worker, warm_up
    from pipeline.data.prepare import ensure_prepared

    t0 = time.perf_counter()
    memory = Memory(index_dir, ensure_prepared(data) if data else None, reader=reader, readers_root=readers,
                    rerank=rerank)
    worker = memory_worker()
    for line in worker.submit(warm_up, memory).result():
        click.echo(f"not served: {line}")
    click.echo(f"lmort serve: {memory.system} over {memory.ds.name}, reader {memory.mode}, ready in "
               f"{time.perf_counter() - t0:.1f} s at http://{host}:{port}/ (Ctrl-C stops)")
    loading = memory_gb > 0 and memory.passages_fit(memory_gb)
    if loading:
        import threading

        threading.Thread(target=memory.hold_passages, args=(memory_gb,), daemon=True).start()
    uvicorn.run(create_app(memory, str(index_dir), loading, worker), host=host, port=port, log_level="warning")
