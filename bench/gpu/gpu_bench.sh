#!/bin/bash
# The GPU check: the test suite with CUDA visible, then stage one and stage two timed on one data set.
#
# Written for a lent H100/H200 that has torch and transformers but no model hub and room for 64 MiB of carried
# files, so the model is SmolLM2-135M's ARCHITECTURE with RANDOM weights (real config, real tokenizer, real
# texts): the shapes, and so the timings, are the real model's; retrieval quality from these runs means nothing.
#
#   MODEL_DIR  folder with config.json + tokenizer files to build the random model from  [.gpu/smollm2-135m]
#   DATA       a prepared data set (`lmort prepare`)                                       [cache/data/scifact]
#   GEOMETRY   the analysis whose A/U layers the stores keep                                [.gpu/geometry.json]
#   OUT        where logs and summaries go                                                  [/tmp/gpu-bench]
#   LAST_LAYER  which extractions to time ("false true": without and with layer L)          [false true]
#
# Packages missing there travel as wheels in .whl/ (see /work/.library/device/README.md); here they are
# installed already. Run from the repository root: `bash bench/gpu/gpu_bench.sh`.
set -u
OUT=${OUT:-/tmp/gpu-bench}
MODEL_DIR=${MODEL_DIR:-.gpu/smollm2-135m}
DATA=${DATA:-cache/data/scifact}
GEOMETRY=${GEOMETRY:-.gpu/geometry.json}
STEPS=${STEPS:-20}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 LMORT_CACHE=${LMORT_CACHE:-$PWD/cache}
if [ -d .whl ] && ! python3 -c "import zarr" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
lmort() { python3 -c 'from stages.cli import main; main()' "$@"; }
stamp() { date +%s.%N; }
took() { python3 -c "print(f'{$(stamp) - $1:.1f}')"; }
data=$(basename "$DATA")
log="$OUT/bench.log"

{
  echo "## machine"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
'transformers', transformers.__version__, 'threads', torch.get_num_threads())"

  if [ -z "${SKIP_TESTS:-}" ]; then
    echo "## tests with CUDA visible (test_dvc needs the dvc CLI, not carried)"
    t=$(stamp)
    timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -p no:cacheprovider --ignore=tests/test_dvc.py 2>&1 | tail -40
    echo "tests: $(took "$t") s"
  fi

  echo "## random model with the real architecture"
  python3 - "$MODEL_DIR" <<'EOF'
import shutil, sys
from pathlib import Path
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from pipeline.activations.llm import models_cache
src = Path(sys.argv[1])
target = models_cache() / "smollm2-135m"
if not (target / "config.json").exists():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src), dtype=torch.float32)
    model.save_pretrained(target, safe_serialization=True)
    for f in src.iterdir():
        if f.name.startswith("tokenizer") or f.suffix == ".jinja":
            shutil.copy(f, target / f.name)
print(target, sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(target).parameters()), "parameters")
EOF

  for last in ${LAST_LAYER:-false true}; do
    echo "## lmort extract $data, last layer $last"
    t=$(stamp)
    lmort extract --model smollm2-135m --data "$DATA" --geometry "$GEOMETRY" --last-layer $last \
      $(python3 bench/gpu/extract_flags.py params.yaml) --rebuild-on-mismatch \
      --out "cache/gpu-last-$last/stores/$data" 2>&1 | grep -v "it/s]\|tok/s]" | tail -6
    echo "extract (last layer $last): $(took "$t") s wall"
  done

  echo "## lmort train (params.yaml's tuner and schedule, on the cuda device, bf16 autocast)"
  t=$(stamp)
  lmort train --stores cache/gpu-last-false/stores --data "$DATA" --geometry "$GEOMETRY" --variant lmort \
    --params params.yaml --out cache/gpu/tuners/lmort 2>&1 | grep -v "it/s]\|s/it]" | tail -6
  echo "train: $(took "$t") s wall"
  cp cache/gpu/tuners/lmort/train.json "$OUT/train.json"

  echo "## lmort index (faiss-cpu: faiss-gpu is not carried)"
  t=$(stamp)
  lmort index --tuner cache/gpu/tuners/lmort/best --stores cache/gpu-last-false/stores --data "$DATA" --split test \
    --system lmort-random --out cache/gpu/index --run cache/gpu/runs/lmort.trec 2>&1 | tail -3
  echo "index: $(took "$t") s wall"

  echo "## train bench: from the cache vs. the LLM in the loop, on the GPU"
  python3 bench/train_bench.py --stores cache/gpu-last-false/stores --geometry "$GEOMETRY" --data "$DATA" \
    --steps "$STEPS" --device "${DEVICE:-cuda}" 2>&1 | grep -v "it/s]"
} 2>&1 | tee "$log"
