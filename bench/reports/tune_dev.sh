#!/usr/bin/env bash
# Tuning on dev only (item 5): one DVC experiment per setting, each changing one knob of a protocol's
# recipe ($PROTOCOL, default: the default configuration), training only `train@lmort` (`-s`: that stage alone)
# from the stores `dvc repro` (or `dvc exp run -S protocol=$PROTOCOL`) extracted in this workspace. DVC records
# every experiment (params, the dvclive metrics: best dev nDCG@10, its epoch, steps, seconds); test splits are
# never read (train scores dev only). Rerunning skips experiments that exist already (by name), so a cut run
# resumes. Then `bash bench/reports/tune_dev.sh table` prints the experiments' dev table (Markdown, from `dvc exp show`).
#
#   dvc exp run -S protocol=$PROTOCOL   # the baseline: the protocol as committed
#   bash bench/reports/tune_dev.sh run       # the one-knob grid below (about 5 min an experiment on 2 cores)
#   bash bench/reports/tune_dev.sh table > reports/<name>/tuning.md
set -euo pipefail
protocol=${PROTOCOL:-default}
lmort compose --protocol "$protocol" --out .tune-params.yaml >/dev/null
metric="$(python -c 'import yaml; print(yaml.safe_load(open(".tune-params.yaml"))["report_dir"])')/live/lmort/metrics.json"
rm -f .tune-params.yaml

# name | overrides (-S key=value ...): the recipe as it is (the baseline, trained by the same code), lr, batch size,
# hard negatives, width, blocks, temperature, epochs, residual dropout, and one pair: 8 epochs without dropout.
# Width and blocks use `++` (add or override): the default's tuner section leaves them to the `small` size.
GRID=(
  "recipe|"
  "epochs-8|-S train.epochs=8"
  "temp-0.02|-S tuner.temperature=0.02"
  "temp-0.1|-S tuner.temperature=0.1"
  "neg-3|-S train.negatives=3"
  "batch-64|-S train.batch_size=64"
  "epochs-8-dropout-0|-S train.epochs=8 -S tuner.dropout=0.0"
  "dropout-0|-S tuner.dropout=0.0"
  "epochs-6|-S train.epochs=6"
  "width-256|-S tuner.size=null -S ++tuner.width=256 -S ++tuner.blocks=2 -S ++tuner.heads=4 -S ++tuner.ff_ratio=2"
  "blocks-3|-S tuner.size=null -S ++tuner.width=128 -S ++tuner.blocks=3 -S ++tuner.heads=4 -S ++tuner.ff_ratio=2"
  "lr-1e-3|-S train.lr=0.001"
  "lr-2.5e-4|-S train.lr=0.00025"
  "neg-0|-S train.negatives=0"
  "lr-2e-3|-S train.lr=0.002"
)

run() {
  local done_names
  for entry in "${GRID[@]}"; do
    local exp=${entry%%|*} overrides=${entry#*|}
    done_names=$(dvc exp list --name-only 2>/dev/null || true)
    if grep -qx -- "$exp" <<<"$done_names"; then echo "== $exp: done already"; continue; fi
    echo "== $exp: $overrides ($(date +%T))"
    # shellcheck disable=SC2086
    dvc exp run -n "$exp" -S "protocol=$protocol" $overrides -s "train@lmort"
  done
}

table() {
  # dev only: every column is dropped but the experiment's best dev nDCG@10, its epoch and steps, and the knobs
  # (the evaluate stage's test-split metrics are in the same workspace: they must not choose anything)
  dvc exp show --md --no-pager --sort-by "${metric}:best.dev_ndcg@10" --sort-order desc --drop '.*' \
    --keep "^Experiment$|${metric}:best\\.(dev_ndcg@10|best_epoch|steps|train_seconds)|^train\\.(lr|batch_size|negatives|epochs)$|^tuner\\.(size|width|blocks|temperature|dropout)$" \
    2>/dev/null | grep -v '^| workspace'
}

case "${1:-run}" in
  run) run ;;
  table) table ;;
  *) echo "usage: $0 run|table" >&2; exit 2 ;;
esac
