#!/usr/bin/env bash
# Distillation in the default configuration (issue 39, item 3), from the default's stores (`make repro` first):
# the late reranker retrained on scifact + nfcorpus with `reranker.teacher: minilm+bm25`, then `lmort rerank` over
# the default's first stages with the same dev choice and guard. Writes into $OUT (default: cache/default/distill),
# leaving the default's own reranker and reports untouched; reports/default/distill/ holds its committed outputs.
#   bash bench/reports/default_distill.sh        # about 5 min on 2 cores
set -euo pipefail
out=${OUT:-cache/default/distill}
lmort train-reranker --params params.yaml --set reranker.teacher=minilm+bm25 --set 'reranker.designs=[late]' \
  --stores cache/default/stores --out "$out/reranker"
lmort rerank --params params.yaml --reranker "$out/reranker" --stores cache/default/stores \
  --runs cache/default/runs --runs cache/default/baseline-runs --runs cache/default/fusion/runs \
  --dev-runs cache/default/baseline-runs --dev-runs cache/default/dev-runs --dev-runs cache/default/fusion/dev-runs \
  --out "$out/rerank"
