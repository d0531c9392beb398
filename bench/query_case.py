"""Does the query case explain a set's score? Online-encode its test queries as given and lower-cased, search
the configuration's index and score both (vaswani_npl's queries are upper-case, its corpus lower-case).

    python bench/query_case.py --name full --data vaswani_npl lmort pooled-linear
"""

import argparse
from pathlib import Path

from pipeline.data import cache_root
from pipeline.index import encode_online, load_index, retrieve
from pipeline.llm import FrozenLLM, Template
from pipeline.metrics import evaluate, markdown_table
from pipeline.prepare import ensure_prepared
from pipeline.train import load_tuner

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--name", default="full", help="configuration (artifacts in cache/<name>)")
ap.add_argument("--data", default="vaswani_npl")
ap.add_argument("--split", default="test")
ap.add_argument("systems", nargs="+")
args = ap.parse_args()

ds = ensure_prepared(str(cache_root() / "data" / args.data))
qids = list(ds.qrels[args.split])
rows = []
for system in args.systems:
    index, meta = load_index(cache_root() / args.name / "index" / system / args.data)
    tuner = load_tuner(Path(meta["tuner"]))
    llm = FrozenLLM(meta["model"], max_layer=max(tuner.cfg.layers))
    row = {"system": system}
    for case, f in (("as given", str), ("lower-cased", str.lower)):
        vec = encode_online(llm, tuner, [f(ds.queries[q]) for q in qids], Template(**meta["template"]),
                            meta["query_max_length"])
        row[case] = evaluate(retrieve(index, meta["ids"], qids, vec), ds.qrels[args.split])["nDCG@10"]
    rows.append(row)
print(f"{args.data} {args.split}, nDCG@10 of queries as given and lower-cased ({args.name} configuration):\n")
print(markdown_table(rows, ["system", "as given", "lower-cased"]))
