#!/bin/bash
# reports/adapter: the LoRA adapter baseline on the default configuration's training sets, with a CPU step
# budget, against LMORT trained from the default's stores to the same budget; then one table beside the default's
# rows. Needs the default's artifacts (`make repro`). Run from the repository root: bash bench/gpu/adapter_run.sh
set -e
export PATH="$PWD/.venv/bin:$PATH"
STEPS=${STEPS:-80}
echo "start $(date) at $(git rev-parse --short HEAD), $STEPS steps"
lmort adapter --data scifact,nfcorpus_preprocessed --params params.yaml --set adapter.max_steps=$STEPS \
  --out cache/adapter/default
lmort train --stores cache/default/stores --data scifact,nfcorpus_preprocessed \
  --geometry cache/default/analysis/geometry.json --variant lmort --layer-selection 6,0 --params params.yaml \
  --set train.epochs=1 --set train.max_steps_per_epoch=$STEPS --set train.dev_every=1 --out cache/adapter/lmort-$STEPS
for data in scifact cranfield; do
  lmort index --tuner cache/adapter/default/best --data $data --split test --system adapter \
    --out cache/adapter/index/$data --run cache/adapter/runs/$data/test/adapter.trec
  lmort index --tuner cache/adapter/lmort-$STEPS/best --stores cache/default/stores --data $data --split test \
    --system lmort-$STEPS --out cache/adapter/lmort-index/$data --run cache/adapter/runs/$data/test/lmort-$STEPS.trec
done
mkdir -p reports/adapter
lmort compare --config default=cache/default --sets scifact,cranfield \
  --systems lmort,pooled-linear,lmort+bm25,bm25,minilm-l6 --trained adapter=cache/adapter/default \
  --trained lmort-$STEPS=cache/adapter/lmort-$STEPS --trained-runs cache/adapter/runs --out reports/adapter/compare.md
python bench/adapter_bench.py --steps 3 | tee reports/adapter/step-cost.md
echo "end $(date)"
