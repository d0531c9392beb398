"""SQuAD v1.1 in BEIR layout, with its answers, from the official JSON files (train-v1.1.json, dev-v1.1.json).

The ids and splits are those of ../shared/data/beir/squad (its SOURCE.txt): a paragraph is
`<split>-<article>-<paragraph index>` (split train or dev, the article's title as the JSON writes it, with
underscores), a question `<paragraph id>-q<question index>`; qrels/train.tsv holds the train questions,
qrels/test.tsv the official dev questions; answers.jsonl every question's answers in the release's order.
"""

from __future__ import annotations

import json
import tempfile
import urllib.request
from pathlib import Path

from ..common.atomic import atomic_dir
from ..common.errors import DataError

SQUAD_URL = "https://rajpurkar.github.io/SQuAD-explorer/dataset"
FILES = {"train": "train-v1.1.json", "dev": "dev-v1.1.json"}  # our split prefix -> the official file
QRELS = {"train": "train", "dev": "test"}  # the official dev questions are the test split
TIMEOUT = 30


def _clean(text: str) -> str:
    return " ".join(str(text).split())


def _articles(path: Path) -> list[dict]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not JSON ({e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{path}: field 'data' (the list of articles) is missing")
    return data["data"]


def squad_to_beir(train_json: Path, dev_json: Path, out: Path) -> Path:
    """Write corpus.jsonl, queries.jsonl, qrels/{train,test}.tsv, answers.jsonl and SOURCE.txt to `out`
    (atomically: a bad file leaves nothing behind)."""
    sources = {"train": Path(train_json), "dev": Path(dev_json)}

    def write(tmp: Path) -> None:
        (tmp / "qrels").mkdir()
        with open(tmp / "corpus.jsonl", "w", encoding="utf-8") as corpus, \
                open(tmp / "queries.jsonl", "w", encoding="utf-8") as queries, \
                open(tmp / "answers.jsonl", "w", encoding="utf-8") as answers:
            for split, path in sources.items():
                with open(tmp / "qrels" / f"{QRELS[split]}.tsv", "w", encoding="utf-8") as qrels:
                    qrels.write("query-id\tcorpus-id\tscore\n")
                    for a, article in enumerate(_articles(path)):
                        title = article.get("title")
                        if not isinstance(title, str) or not isinstance(article.get("paragraphs"), list):
                            raise DataError(f"{path}: article {a}: fields 'title' and 'paragraphs' are required")
                        for p, para in enumerate(article["paragraphs"]):
                            pid = f"{split}-{title}-{p}"
                            corpus.write(json.dumps({"_id": pid, "title": title.replace("_", " "),
                                                     "text": _clean(para["context"])}) + "\n")
                            for q, qa in enumerate(para.get("qas", [])):
                                qid = f"{pid}-q{q}"
                                texts = [x["text"] for x in qa.get("answers", [])]
                                if not texts:
                                    raise DataError(f"{path}: {qid}: field 'answers' is empty")
                                queries.write(json.dumps({"_id": qid, "text": _clean(qa["question"])}) + "\n")
                                answers.write(json.dumps({"_id": qid, "answers": texts}) + "\n")
                                qrels.write(f"{qid}\t{pid}\t1\n")
        (tmp / "SOURCE.txt").write_text(f"Built by pipeline/data/squad.py from the official SQuAD v1.1 files "
                                        f"{FILES['train']} and {FILES['dev']} ({SQUAD_URL}); ids and splits as "
                                        "../shared/data/beir/squad. License: CC BY-SA 4.0.\n")

    atomic_dir(Path(out), write)
    return Path(out)


def download(url: str, dest: Path) -> Path:
    """Fetch one file; without a network, one line naming the URL and what to do instead."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp, \
                tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
            while chunk := resp.read(1 << 20):
                tmp.write(chunk)
        Path(tmp.name).replace(dest)
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(f"{url}: download failed ({reason}); without a network, pass the official "
                        f"{FILES['train']} and {FILES['dev']} with --train-json and --dev-json") from None
    return dest


def fetch_squad(out: Path, train_json: Path | None = None, dev_json: Path | None = None,
                base_url: str = SQUAD_URL) -> Path:
    """squad in BEIR layout at `out`, from the given official files or downloaded ones."""
    with tempfile.TemporaryDirectory() as tmp:
        train_json = train_json or download(f"{base_url}/{FILES['train']}", Path(tmp) / FILES["train"])
        dev_json = dev_json or download(f"{base_url}/{FILES['dev']}", Path(tmp) / FILES["dev"])
        return squad_to_beir(train_json, dev_json, out)
