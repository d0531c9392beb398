"""Does the query case explain a set's score? Online-encode its test queries as given, lower-cased and
upper-cased, search the configuration's index and score all three (vaswani_npl's queries are upper-case, its
corpus lower-case). With a `case: lower` template the three columns must agree.

    python bench/query_case.py --name full --data vaswani_npl lmort pooled-linear
    python bench/query_case.py --name default --data scifact lmort pooled-linear
"""

import argparse
from pathlib import Path

from pipeline.index import load_index, retrieve
from pipeline.llm import FrozenLLM, Template, default_device
from pipeline.metrics import evaluate
from pipeline.paths import cache_root
from pipeline.precision import resolve_compute_dtype
from pipeline.prepare import ensure_prepared
from pipeline.tables import markdown_table
from pipeline.tuner import Tuner

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
    tuner = Tuner.load(Path(meta["tuner"]))
    llm = FrozenLLM(meta["model"], max_layer=max(tuner.cfg.layers),
                    dtype=resolve_compute_dtype(meta.get("compute_dtype", "float32"), default_device()))
    row = {"system": system, "template case": meta["template"].get("case", "keep")}
    for case, f in (("as given", str), ("lower-cased", str.lower), ("upper-cased", str.upper)):
        vec = tuner.encode_texts(llm, [f(ds.queries[q]) for q in qids], Template(**meta["template"]),
                            meta["query_max_length"])
        row[case] = evaluate(retrieve(index, meta["ids"], qids, vec), ds.qrels[args.split])["nDCG@10"]
    rows.append(row)
print(f"{args.data} {args.split}, nDCG@10 of queries as given, lower-cased and upper-cased "
      f"({args.name} configuration):\n")
print(markdown_table(rows, ["system", "template case", "as given", "lower-cased", "upper-cased"]))
