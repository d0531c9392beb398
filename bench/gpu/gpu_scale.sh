#!/bin/bash
# The paper-size points of the data-scaling curve on a lent GPU machine (H100/H200), which has torch and
# transformers but no model hub and takes 64 MiB of carried files a call; so two calls, back to back (the machine
# keeps /tmp while it stays warm):
#   bash bench/gpu/gpu_scale.sh setup   carry .whl (missing packages as wheels) and .gpudata (the prepared sets as
#                                   uncompressed Parquet in one tar.xz): installs into /tmp/site, unpacks the data
#   bash bench/gpu/gpu_scale.sh run     carry .gpu (bench/gpu/gpu_pack.py: SmolLM2's embedding and first blocks as the
#                                   GGUF's own quantised bytes): builds the model folder, extracts the `large`
#                                   stores (layers 0,2, every set at once), then `lmort scale` trains the points;
#                                   each point.json reaches $OUT as soon as it is written.
# Knobs (environment): SETS, ZERO, QUERIES, SIZES, VARIANTS, MIN_STEPS; the rest is the protocol large (configs/protocol/large.yaml).
set -u
phase=${1:?setup or run}
export LMORT_CACHE=${LMORT_CACHE:-/tmp/lmort} PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
# the image's JAX (imported by a library on the way) otherwise takes 75% of the GPU in every process: the first
# run's eight parallel extractions died of CUDA out-of-memory
export JAX_PLATFORMS=cpu XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT" "$LMORT_CACHE"
SETS=${SETS:-scifact,nfcorpus_preprocessed,wikiqa,squad,medquad}
ZERO=${ZERO:-cranfield,cacm,vaswani_npl}
lmort() { python3 -c 'from stages.cli import main; main()' "$@"; }
now() { date +%s; }

if [ "$phase" = setup ]; then
  if [ -z "${SKIP_PIP:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl || exit 1
  fi
  tar -xJf .gpudata/data.tar.xz -C "$LMORT_CACHE" || exit 1
  python3 -c "import zarr, faiss, ir_measures, bm25s, gguf, torch, transformers, stages.cli, pipeline.tuner.scaling
print('imports ok: zarr', zarr.__version__, 'faiss', faiss.__version__, 'torch', torch.__version__,
      'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" || exit 1
  ls "$LMORT_CACHE/data"
  exit 0
fi

t0=$(now)
log="$OUT/run.log"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  python3 bench/gpu/gpu_model.py --packed .gpu --out "$LMORT_CACHE/models/smollm2-135m" || exit 1
  lmort compose --protocol large --out .large.yaml || exit 1
  echo "## lmort extract, every set at once (layers 0,2; bf16 compute, float16 stores)"
  for s in ${SETS//,/ } ${ZERO//,/ }; do
    lmort extract --model smollm2-135m --data "$LMORT_CACHE/data/$s" --geometry .gpu/geometry.json \
      --last-layer false $(python3 bench/gpu/extract_flags.py .large.yaml) --out "$LMORT_CACHE/large/stores/$s" > "$LMORT_CACHE/extract-$s.log" 2>&1 &
  done
  wait
  for s in ${SETS//,/ } ${ZERO//,/ }; do grep -H "tok/s\|Error\|error" "$LMORT_CACHE/extract-$s.log" | tail -3; done
  echo "extraction done after $(( $(now) - t0 )) s"
  # each finished point goes to $OUT at once, so a run cut by the time limit still returns what it finished
  ( while sleep 5; do for p in "$LMORT_CACHE"/large/scaling/*/point.json; do
      [ -f "$p" ] && cp "$p" "$OUT/$(basename "$(dirname "$p")").json"; done; done ) &
  watcher=$!
  lmort scale --stores "$LMORT_CACHE/large/stores" --data "$SETS" --zero-shot "$ZERO" --geometry .gpu/geometry.json \
    --params .large.yaml --set "scaling.sizes=[${SIZES:-paper}]" --set "scaling.variants=[${VARIANTS:-lmort}]" \
    --set "scaling.queries=[${QUERIES:-1000,16000,all,4000,64000}]" --set "scaling.min_steps=${MIN_STEPS:-500}" \
    --set train.memory_gb=100 --points-only --out "$LMORT_CACHE/large/scaling" 2>&1 \
    | tr '\r' '\n' | grep --line-buffered -v "it/s]\|step/s]\|s/step]\|tok/s]\|text/s]\|^$"
  sleep 6; kill $watcher
  echo "all done after $(( $(now) - t0 )) s"
} 2>&1 | tee "$log"
