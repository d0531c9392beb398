"""`lmort serve`'s page in headless Chromium (Debian's `chromium` package): a question asked through the page itself
(`/?q=...` submits it on load), the DOM checked for the answer and its passages, and a screenshot.

    python bench/page_shot.py --index cache/default/index/lmort/scifact [--question "..."] [--out bench/serve_page.png]

Not part of `make test` (it needs a browser): `make bench` runs it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import click
from serve_bench import free_port, wait_ready


@click.command()
@click.option("--index", "index_dir", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--question", help="[the set's first test query]")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench/serve_page.png"), show_default=True)
def main(index_dir, question, out) -> None:
    from pipeline.answers.ask import open_prepared
    from pipeline.retrieval.index import load_index

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise click.ClickException("no chromium on PATH: `apt-get install chromium` (Debian's package)")
    ds = open_prepared(index_dir, load_index(index_dir)[1])
    question = question or ds.queries[sorted(ds.qrels["test"])[0]]
    port = free_port()
    t0 = time.perf_counter()
    server = subprocess.Popen([str(Path(sys.executable).parent / "lmort"), "serve", "--index", str(index_dir),
                               "--port", str(port)], stdout=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{port}", server, t0)
        url = f"http://127.0.0.1:{port}/?q={urllib.parse.quote(question)}"
        flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1000,1200",
                 "--virtual-time-budget=60000"]
        dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=300).stdout
        subprocess.run([*flags, f"--screenshot={out.resolve()}", url], capture_output=True, timeout=300, check=True)
    finally:
        server.terminate()
        server.wait(30)
    dom = re.sub(r"<script>.*?</script>", "", dom, flags=re.S)  # what the page shows, not its code
    answered = 'data-answered="yes"' in dom
    passages = len(re.findall(r'<div class="passage', dom))
    answer = re.search(r'<div id="answer">(.*?)</div>', dom, re.S)
    click.echo(f"page at /?q=: answered {answered}, {passages} passages shown, answer "
               f"{(answer.group(1).strip() if answer else '')[:80]!r}, marked span {'<mark>' in dom}; "
               f"screenshot {out}")
    if not answered or passages == 0:
        raise click.ClickException("the page did not show an answer and its passages")


if __name__ == "__main__":
    main()
