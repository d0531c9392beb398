#!/bin/bash
# The layer sweep of the protocol layers on a lent GPU machine (H100/H200): no model hub, 64 MiB of carried files
# a call, so two calls back to back (the machine keeps /tmp while it stays warm):
#   python bench/gpu/gpu_pack.py --stores <stores of these sets> --blocks 30 --parts 2 --out .gpusw   (here, once)
#   bash bench/gpu/gpu_sweep.sh setup   carry .whl (missing wheels) and .gpusw-1 (blocks 15-29): install, keep the part
#   bash bench/gpu/gpu_sweep.sh run     carry .gpusw (embedding, blocks 0-14) and .gpusw-data (prepared sets, tar.xz):
#                                   build the model, `lmort analyze` (the rule's pair), `lmort extract` of the seven
#                                   layers for every set at once, then `lmort sweep` in $PROCS processes sharing
#                                   the grid; every point.json reaches $OUT as soon as it is written.
# Knobs (environment): PROCS (8), LAYERS, MIN_STEPS; the rest is the protocol layers (configs/protocol/layers.yaml).
set -u
phase=${1:?setup or run}
export LMORT_CACHE=${LMORT_CACHE:-/tmp/lmort} PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
export JAX_PLATFORMS=cpu XLA_PYTHON_CLIENT_PREALLOCATE=false   # the image's JAX would take 75% of the GPU per process
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT" "$LMORT_CACHE"
TRAIN=${TRAIN:-scifact,nfcorpus_preprocessed}
SETS=${SETS:-"scifact nfcorpus_preprocessed cranfield cacm vaswani_npl"}
LAYERS=${LAYERS:-0,2,6,12,18,24,30}
lmort() { python3 -c 'from stages.cli import main; main()' "$@"; }
now() { date +%s; }
quiet() { tr '\r' '\n' | grep --line-buffered -v "it/s]\|step/s]\|s/step]\|tok/s]\|text/s]\|point/s]\|s/point]\|^$"; }

if [ "$phase" = setup ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
  mkdir -p /tmp/parts && cp .gpusw-1/* /tmp/parts/ && ls -la /tmp/parts
  python3 -c "import zarr, faiss, ir_measures, bm25s, gguf, torch, stages.cli, pipeline.tuner.sweep
print('imports ok: torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1
  exit 0
fi

t0=$(now)
root=$LMORT_CACHE/layers
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  tar -xJf .gpusw-data/data.tar.xz -C "$LMORT_CACHE" || exit 1
  cp /tmp/parts/* .gpusw/ || exit 1
  python3 bench/gpu/gpu_model.py --packed .gpusw --out "$LMORT_CACHE/models/smollm2-135m" || exit 1
  echo "## lmort analyze (the geometric rule on the training pairs), $(( $(now) - t0 )) s"
  lmort compose --protocol layers --out .layers.yaml || exit 1
  flags=$(python3 bench/gpu/extract_flags.py .layers.yaml)
  lmort analyze --model smollm2-135m --data $TRAIN --split train --out "$root/analysis" --max-pairs 5000 --seed 0 \
    $(python3 bench/gpu/extract_flags.py .layers.yaml analyze) 2>&1 | quiet | tail -4
  cp "$root/analysis/geometry.json" "$OUT/" 2>/dev/null
  echo "## lmort extract, every set at once (layers $LAYERS + the rule's), $(( $(now) - t0 )) s"
  for s in $SETS; do
    lmort extract --model smollm2-135m --data "$LMORT_CACHE/data/$s" --geometry "$root/analysis/geometry.json" \
      --last-layer true --layers "$LAYERS" $flags --out "$root/stores/$s" > "$LMORT_CACHE/extract-$s.log" 2>&1 &
  done
  wait
  for s in $SETS; do grep -h "tok/s\|Error\|error" "$LMORT_CACHE/extract-$s.log" | quiet | tail -2; done
  du -sh "$root/stores"
  echo "extraction done after $(( $(now) - t0 )) s"
  ( while sleep 4; do for p in "$root"/sweep/*/point.json; do
      [ -f "$p" ] && cp "$p" "$OUT/$(basename "$(dirname "$p")").json"; done; done ) &
  watcher=$!
  n=${PROCS:-8}
  lmort compose --protocol layers --out .layers.yaml || exit 1
  for i in $(seq 0 $((n - 1))); do
    OMP_NUM_THREADS=2 lmort sweep --stores "$root/stores" --data $TRAIN --geometry "$root/analysis/geometry.json" \
      --params .layers.yaml --set "sweep.min_steps=${MIN_STEPS:-400}" --set train.memory_gb=100 \
      --shard "$i/$n" --points-only --out "$root/sweep" > "$LMORT_CACHE/sweep-$i.log" 2>&1 &
  done
  wait $(jobs -p | grep -v "^$watcher$")
  for i in $(seq 0 $((n - 1))); do quiet < "$LMORT_CACHE/sweep-$i.log" | grep -v "^epoch\|^resuming" | tail -3; done
  sleep 5; kill $watcher
  echo "all done after $(( $(now) - t0 )) s"
} 2>&1 | tee "$OUT/run.log"
