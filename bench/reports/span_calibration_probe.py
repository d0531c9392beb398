"""A dev probe (not adopted): how the span reader should compare spans of different passages. On squad's
200 dev questions with BM25's top 3 (the rag configuration's cache), the best passage by (a) raw start + end logits
(what `lmort rag` and `lmort ask` use), (b) per-passage log-softmax of start and end, (c) raw logits plus the
z-scored BM25 score of the passage (weight 1, untuned). Prints dev F1 for each.

    python bench/reports/span_calibration_probe.py
"""

import numpy as np
import torch
from transformers import AutoTokenizer

from pipeline.activations.llm import resolve_model
from pipeline.activations.store import open_stores
from pipeline.answers.reader import answer_scores
from pipeline.answers.reader_data import gather
from pipeline.answers.span_read import StoredPassageReader
from pipeline.answers.span_reader import best_spans
from pipeline.common.metrics import read_trec_run
from pipeline.data.answers import read_answers
from pipeline.data.prepare import ensure_prepared

ds = ensure_prepared("squad")
queries, corpus = open_stores("cache/rag/stores", "squad")
tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m")[0])
span = StoredPassageReader("cache/rag/reader/squad/best", corpus, ds, tok)
run = read_trec_run("cache/rag/baseline-runs/squad/dev/bm25.trec")
refs = read_answers("../shared/data/beir/squad/answers.jsonl")
res = {"raw": [], "logsoftmax": [], "raw+bm25": []}
for q in sorted(ds.qrels["dev"]):
    ranked = sorted(run.get(q, {}).items(), key=lambda x: -x[1])[:3]
    docs = [d for d, _ in ranked]
    qs, qm = gather(queries, [q], span.layers, torch.float32, "q")
    n = int(qm.sum())
    p, pm = gather(corpus, docs, span.layers, torch.bfloat16, "p")
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        qq = {layer: v[:, :n].to(torch.bfloat16).expand(len(docs), -1, -1) for layer, v in qs.items()}
        st, en = span.reader(p, pm, qq, torch.ones(len(docs), n, dtype=torch.bool))
    for name, (a, b) in {"raw": (st, en), "logsoftmax": (st.log_softmax(1), en.log_softmax(1))}.items():
        s, e, sc = best_spans(a, b, 30)
        i = int(sc.argmax())
        res[name].append(answer_scores(span.passages[docs[i]].span_text(int(s[i]), int(e[i])), refs[q])["f1"])
    s, e, sc = best_spans(st, en, 30)
    bm = torch.tensor([x for _, x in ranked])
    z = (bm - bm.mean()) / (bm.std() + 1e-6)
    i = int((sc + 1.0 * z).argmax())
    res["raw+bm25"].append(answer_scores(span.passages[docs[i]].span_text(int(s[i]), int(e[i])), refs[q])["f1"])
for k, v in res.items():
    print(k, round(float(np.mean(v)), 3), len(v))
