"""The quick configuration under real DVC, each test in its own temporary clone: the whole run (report, plots,
metrics, a no-op repro); and the run up to its tuners, then an experiment that changes only the tuner's depth
(extraction must be skipped) and an added evaluation set that leaves every tuner alone."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def sh(cmd, cwd, env):
    r = subprocess.run(cmd, cwd=cwd, env=env, shell=True, capture_output=True, text=True)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def walk(node):
    """Every dict inside a JSON document (`dvc exp show --json` nests experiments under their baselines)."""
    if isinstance(node, dict):
        yield node
        node = list(node.values())
    if isinstance(node, list):
        for child in node:
            yield from walk(child)


def quick_clone(tmp_path: Path) -> tuple[Path, dict]:
    """The working tree copied into a new git repository with the tiny model and set made, and the environment the
    stages run in."""
    clone = tmp_path / "clone"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (clone / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, clone / f)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "LMORT_DATA": str(clone / "cache" / "tiny" / "beir"),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}
    # the default's lock is not this run's: DVC parses and rewrites the whole lock file after every stage, and the
    # default's 35 stages would make every quick stage pay for them
    (clone / "dvc.lock").unlink()
    sh("git init -q && git add -A && git commit -qm clone", clone, env)
    sh("lmort tiny --out cache/tiny", clone, env)
    return clone, env


needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


@needs_git
def test_quick_configuration_under_dvc(tmp_path):
    clone, env = quick_clone(tmp_path)
    # the protocol is composed by Hydra (configs/protocol/quick.yaml over configs/config.yaml) into params.yaml
    out = sh("dvc exp run -S protocol=quick", clone, env)
    assert "name: quick" in (clone / "params.yaml").read_text()
    for stage in ("prepare@tiny", "train-data", "analyze", "extract@tiny", "sweep", "train-stores", "train@lmort",
                  "train@scalar-mix", "index@lmort-tiny", "index-dev@lmort-tune0", "fuse", "train-reranker", "rerank",
                  "evaluate", "scale", "rag", "report"):
        assert f"Running stage '{stage}'" in out, stage
    report = (clone / "reports" / "quick" / "REPORT.md").read_text()
    for needle in ("Layer geometry", "lmort", "pooled-linear", "scalar-mix", "bm25", "raw-layer-", "Efficiency",
                   "Data scaling", "Which layers?", "On dev: the", "Hybrid retrieval", "| lmort+bm25 |",
                   "| pooled-linear+bm25-rrf |", "tiny/dev", "Reranking from the stores", "| bm25>rerank |",
                   "| lmort+bm25>rerank |"):
        assert needle in report, needle
    # both reranker designs trained from the stores, dev kept one; each first stage reranked, chosen on tiny/dev
    chosen = json.loads((clone / "cache" / "quick" / "reranker" / "chosen.json").read_text())
    assert set(chosen["designs"]) == {"cross", "late"} and chosen["design"] in chosen["designs"]
    reranked = json.loads((clone / "cache" / "quick" / "rerank" / "rerank.json").read_text())["tiny"]
    assert reranked["tuned_on"] == "tiny/dev" and reranked["design"] == chosen["design"]
    for system, c in reranked["systems"].items():
        assert c["depth"] in (5, 10) and (c["weight"] == 0) == c["guarded"], (system, c)
    # the fused rows are scored beside the plain systems, their weights chosen on the dev split
    fusion = json.loads((clone / "cache" / "quick" / "fusion" / "fusion.json").read_text())
    assert fusion["tiny"]["tuned_on"] == "tiny/dev"
    chosen = fusion["tiny"]["systems"]["lmort+bm25"]
    if chosen["guarded"]:  # dev's best was not significantly above BM25 (fusion.max_p): BM25 alone
        assert chosen["dense_weight"] == 0 and chosen["dev_p"] >= 0.05
        assert chosen["dev_fused"] >= chosen["dev_bm25"] - 1e-9  # BM25 alone (and queries it misses filled)
    else:
        assert chosen["dev_fused"] >= max(chosen["dev_dense"], chosen["dev_bm25"]) - 1e-9  # the grid holds 0 and 1
    assert round(chosen["dense_weight"] / 0.05, 6).is_integer()
    metrics = json.loads((clone / "cache" / "quick" / "metrics.json").read_text())["tiny"]
    assert {"lmort+bm25", "pooled-linear+bm25-rrf", "bm25>rerank", "lmort+bm25>rerank"} <= set(metrics)
    for system in ("lmort", "bm25", "lmort+bm25"):  # the report prints the scores evaluate computed
        row = next(line for line in report.splitlines() if line.startswith(f"| {system} |"))
        assert f"{metrics[system]['nDCG@10']:.3f}" in row, row
    # `lmort compare` (one table across configurations) reads the same scores and the run's costs
    table = sh("lmort compare --config quick=cache/quick --sets tiny --systems lmort,bm25 --out cmp.md", clone, env)
    row = next(line for line in table.splitlines() if "| lmort |" in line)
    assert f"{metrics['lmort']['nDCG@10']:.3f}" in row and "| quick |" in row, row
    swept = sorted(p.parent.name for p in (clone / "cache" / "quick" / "sweep").glob("*/point.json"))
    assert swept == ["first-last", "lmort-multi", "lmort-u0-a3", "lmort-u3-a0", "scalar-mix"], swept
    # dvclive: every variant's curves in `dvc plots show`, its best dev score in `dvc metrics show`
    plots = json.loads(sh("dvc plots show --json", clone, env))["data"]
    metrics = json.loads(sh("dvc metrics show --json", clone, env))
    metrics = json.dumps(metrics)
    for variant in ("lmort", "pooled-linear", "scalar-mix"):
        live = f"reports/quick/live/{variant}"
        assert f"{live}/plots/metrics/train/loss.tsv" in plots, sorted(plots)
        assert f"{live}/plots/metrics/dev/ndcg@10.tsv" in plots, sorted(plots)
        best = json.loads((clone / live / "metrics.json").read_text())["best"]
        trained = json.loads((clone / "cache" / "quick" / "tuners" / variant / "train.json").read_text())
        assert best["dev_ndcg@10"] == trained["dev_ndcg@10"] and best["steps"] == trained["steps"] > 0
        assert f"{live}/metrics.json" in metrics
    sh("git add -A && git commit -qm 'ran' -q", clone, env)
    again = sh("dvc repro", clone, env)
    assert "Running stage" not in again, again


@needs_git
def test_a_tuner_ablation_reuses_stage_one_and_an_added_eval_set_retrains_no_tuner(tmp_path):
    """Beside the test above (each has its own clone, so that they run on two cores): the quick configuration up to
    its tuners (one variant and the sweep's pairs: the rest was run above), then an experiment and an added
    evaluation set."""
    clone, env = quick_clone(tmp_path)
    recipe = "--set 'variants=[lmort]' --set 'sweep.baselines=[]'"  # one variant, the sweep's two pairs alone
    sh(f"lmort compose --protocol quick {recipe} --out params.yaml", clone, env)
    first = sh("dvc repro train", clone, env)
    assert "Running stage 'extract@tiny'" in first and "Running stage 'train@lmort'" in first, first
    sh("git add -A && git commit -qm 'ran' -q", clone, env)
    # one experiment changes a tuner knob and a sweep knob: both retrain, stage one is reused (run up to the tuners:
    # what lies past them, indexing and scoring, was exercised above)
    exp = sh("dvc exp run -n blocks2 -S protocol=quick -S 'variants=[lmort]' -S 'sweep.baselines=[]' -S tuner.blocks=2 "
             "-S sweep.min_steps=8 train", clone, env)
    assert "Running stage 'train@" in exp and "Running stage 'sweep'" in exp, exp
    assert "Running stage 'extract@" not in exp and "Running stage 'analyze'" not in exp, exp
    assert "extract@tiny" in exp  # reported as unchanged, skipped
    # DVC recorded the experiment's dvclive metrics (git-tracked beside the report), so `dvc exp show` compares them
    shown = json.loads(sh("dvc exp show --json", clone, env))
    recorded = [e["data"] for e in walk(shown) if e.get("name") == "blocks2" and "data" in e]
    best = recorded[0]["metrics"]["reports/quick/live/lmort/metrics.json"]["data"]["best"]
    assert 0.0 <= best["dev_ndcg@10"] <= 1.0 and best["steps"] > 0, best
    # the layer sweep trains from the same store: the changed sweep knob retrained its points, never stage one
    steps = [json.loads(p.read_text())["steps"] for p in (clone / "cache" / "quick" / "sweep").glob("*/point.json")]
    assert len(steps) == 2 and min(steps) >= 8, steps  # every point trained again to the new minimum
    # an evaluation-only set added beside the stores retrains no tuner: train reads the training sets' stores only
    shutil.copytree(clone / "cache" / "tiny" / "beir" / "tiny", clone / "cache" / "tiny" / "beir" / "tiny2")
    # the last experiment's recipe, one more set
    sh(f"lmort compose --protocol quick {recipe} --set tuner.blocks=2 --set sweep.min_steps=8 "
       "--set 'datasets=[tiny,tiny2]' --set 'eval_sets=[tiny,tiny2]' --out params.yaml", clone, env)
    more = sh("dvc repro train-stores", clone, env)  # the new set's stage one, and what the tuners read
    assert "Running stage 'extract@tiny2'" in more and "Running stage 'train-stores'" in more, more
    status = sh("dvc status --json", clone, env)  # DVC's own verdict on what is still to run
    pending = json.loads(next(line for line in status.splitlines() if line.startswith("{")))
    assert "index@lmort-tiny2" in pending and "evaluate" in pending, sorted(pending)
    assert not any(s.startswith("train@") for s in pending) and "analyze" not in pending, sorted(pending)
