"""Print stage one's flags from a params file's `extract:` section, so the GPU scripts run `lmort extract` (or, with
`analyze` as second argument, `lmort analyze`) with the configuration's knobs instead of restating them.

    lmort extract ... $(python3 bench/gpu/extract_flags.py params.yaml)
    lmort analyze ... $(python3 bench/gpu/extract_flags.py params.yaml analyze)
"""

import sys

import yaml

extract = yaml.safe_load(open(sys.argv[1] if len(sys.argv) > 1 else "params.yaml"))["extract"]
knobs = ["query_max_length", "passage_max_length", "compute_dtype", "case"]
if (sys.argv[2] if len(sys.argv) > 2 else "extract") == "extract":
    knobs += ["dtype", "chunk_tokens"]
print(" ".join(f"--{k.replace('_', '-')} {extract[k]}" for k in knobs))
