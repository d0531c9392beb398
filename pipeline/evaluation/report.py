"""REPORT.md from the artifacts of one configuration: nothing typed by hand, every number from a file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..common.atomic import atomic_file
from ..common.metrics import MEASURES, mean_or_none
from ..common.tables import markdown_table


def _json(path: Path):
    return json.loads(Path(path).read_text()) if Path(path).exists() else None


def layers_label(tuner: dict) -> str:
    """What a tuner reads: stream -> cross-attention layer(s), or the pooled layer(s)."""
    if tuner["kind"] == "lmort":
        cross = tuner.get("cross_layers") or [tuner["cross_layer"]]
        return f"{tuner['stream_layer']}->{','.join(map(str, cross))}"
    pooled = tuner.get("pool_layers") or [tuner["stream_layer"]]
    return f"{'mix' if tuner['kind'] == 'scalar-mix' else 'pool'} {'+'.join(map(str, pooled))}"


def ablation_rows(metrics: dict, tuners: Path | None = None, measure: str = "nDCG@10",
                  in_domain: list[str] | None = None) -> list[dict]:
    """One row per system: the measure per data set, the average over all sets (when the system has every
    set), and, for trained tuners under `tuners`, parameters, training time and dev score. With `in_domain`
    (the training sets), the in-domain and zero-shot averages too."""
    rows = []
    systems = sorted({s for per in metrics.values() for s in per})
    for system in systems:
        row = {"system": system}
        for ds, per in metrics.items():
            row[ds] = per.get(system, {}).get(measure)
        row["average"] = mean_or_none([row[ds] for ds in metrics])
        if in_domain is not None:
            row["in-domain"] = mean_or_none([row[ds] for ds in metrics if ds in in_domain])
            row["zero-shot"] = mean_or_none([row[ds] for ds in metrics if ds not in in_domain])
        train = _json(tuners / system / "train.json") if tuners else None
        if train:
            row["parameters"] = f"{train['parameters']:,}"
            row["train s"] = f"{train['train_seconds']:.1f}"
            row["dev nDCG@10"] = train["dev_ndcg@10"]
            row["layers"] = layers_label(train["tuner"])
        rows.append(row)
    rows.sort(key=lambda r: -(r["average"] or 0))
    return rows


def trained_rivals(rows: list[dict]) -> list[dict]:
    """The other tuner variants trained here (a `parameters` column) with a score on every set: what LMORT is
    compared with (raw layers and baselines are not variants of the tuner)."""
    return [r for r in rows if r["system"] != "lmort" and "parameters" in r and r.get("average") is not None]


def claim_verdict(rows: list[dict]) -> str:
    """The paper's central claim, checked on these rows: LMORT's average above every other tuner variant's
    (single-layer, swapped, pooled-linear). Raw layers and baselines are not variants of the tuner."""
    by = {r["system"]: r for r in rows if r.get("average") is not None}
    if "lmort" not in by:
        return "The paper's claim cannot be checked: no LMORT row with every set."
    rivals = trained_rivals(rows)
    if not rivals:
        return "The paper's claim cannot be checked: no other tuner variant was trained."
    best = max(rivals, key=lambda r: r["average"])
    holds = by["lmort"]["average"] > best["average"]
    return (f"The paper's central claim {'holds' if holds else 'does not hold'} here: LMORT averages "
            f"{by['lmort']['average']:.3f} nDCG@10 against {best['average']:.3f} for the best other variant "
            f"({best['system']}) of those trained here ({', '.join(sorted(r['system'] for r in rivals))}).")


def lmort_gaps(rows: list[dict], columns: list[str]) -> list[dict]:
    """LMORT minus each reference on every column (negative: LMORT is below): BM25 and MiniLM when scored, the
    best other trained variant and the best raw layer by average. What a goal missed is missed by."""
    by = {r["system"]: r for r in rows}
    if "lmort" not in by:
        return []
    raw = [r for r in rows if r["system"].startswith("raw-") and r.get("average") is not None]
    refs = [by[s] for s in ("bm25", "minilm-l6") if s in by]
    for group in (trained_rivals(rows), raw):
        if group:
            refs.append(max(group, key=lambda r: r["average"]))
    lmort = by["lmort"]
    return [{"LMORT minus": ref["system"],
             **{c: lmort[c] - ref[c] if isinstance(lmort.get(c), float) and isinstance(ref.get(c), float) else None
                for c in columns}} for ref in refs]


def fusion_section(fusion: dict) -> list[str]:
    """The hybrid rows: where each fusion was chosen, what dev chose, and the test difference to BM25 with its
    paired t-test (`lmort fuse`'s fusion.json)."""
    from ..retrieval.fusion import CHOICE_COLUMNS, NORMALISATION, choice_rows

    rows = choice_rows(fusion)
    if not rows:
        return []
    return ["## Hybrid retrieval: each dense run fused with BM25's, chosen on dev", "",
            f"`lmort fuse`: `<system>+bm25` is a weighted sum of per-query {NORMALISATION}-normalised scores (why min-"
            "max: pipeline/retrieval/fusion.py), its dense weight picked on a 0.05 grid by nDCG@10 on dev (0 leaves "
            "BM25 alone); `<system>+bm25-rrf` is reciprocal rank fusion with its k picked on the same dev runs. In-"
            "domain sets choose on their own dev split (carved from train where a set has none), zero-shot sets on "
            "the configuration's zero-shot dev collection, never tested on. A weight is kept only where the fused dev"
            " run beats BM25's in a paired t-test (`dev p` below `fusion.max_p`); `guarded`: it did not, so the row "
            "is BM25 alone (why: pipeline/retrieval/fusion.py). `p`: paired t-test against BM25 on the test queries "
            "(scipy), significant below `fusion.max_p`.", "",
            markdown_table(rows, CHOICE_COLUMNS, floatfmt=".3f"), ""]


def rag_section(rag: dict, root: Path, figures: Path) -> list[str]:
    """Answer quality (`lmort rag`'s rag.json): the dev choices of each reader, every (system, reader) row, where
    the span reader fails, and the span reader's own training curve (`lmort train-reader`'s train.json)."""
    lines = []
    for data, r in rag.items():
        png = root / "rag" / f"rag-{data}.png"
        if png.exists():
            shutil.copy(png, figures / png.name)
        c = r["choice"]
        lines += [f"## Answer quality on {data} ({r['questions']} {r['split']} questions)", "",
                  f"Two readers. **generate**: `{r['model']}` with its head writes the answer, greedy, bf16 where "
                  f"native; its prompt starts with the stores' query template (`{r['template']!r}`); its style "
                  f"(plain, few-shot, constrained to spans of the passages), order and k were chosen on "
                  f"{r['dev_questions']} {r['dev_split']} questions with BM25's passages (F1): "
                  f"**{c.get('prompt', 'plain')}, {c['order']}, k = {c['k']}**. **span**: the span reader trained "
                  "from the stores (`lmort train-reader`) reads the question's stored states against the passages' "
                  "stored states"
                  + (f"; its k was chosen on dev the same way: **k = {r['span_choice']['k']}**" if r.get("span_choice")
                     else "") + ". EM and F1 with SQuAD's official normalisation (best over the reference answers); "
                  "`answer in output`: a reference answer inside the output; `recall@k`: the gold paragraph among "
                  "the k passages read; `F1 minus bm25` and `p`: the paired t-test of per-question F1 against BM25's "
                  "passages with the same reader; milliseconds per question, timed one question at a time: "
                  "retrieval online (as `lmort search`), reading (generation of a batch of one; the span reader "
                  "with its store reads).", "",
                  markdown_table(r["choices"], ["prompt", "order", "k", "dev F1", "dev EM", "dev answer in output",
                                                "generate s/q"]), ""]
        if r.get("span_choices"):
            lines += [markdown_table(r["span_choices"], ["k", "dev F1", "dev EM", "dev recall@k", "read ms/q"]), ""]
        lines += [markdown_table(r["rows"], r.get("columns") or list(r["rows"][0]), floatfmt=".3f"), ""]
        if png.exists():
            lines += [f"![answer quality]({figures.name}/{png.name})", ""]
        lines += span_reader_lines(r, root / "reader" / data, figures, data)
    return lines


def span_reader_lines(r: dict, folder: Path, figures: Path, data: str) -> list[str]:
    """The span reader's outcomes per system (where it fails) and its training: labels, budget, dev curve."""
    lines = []
    if r.get("span_outcomes"):
        columns = list(r["span_outcomes"][0])
        lines += ["Where the span reader's answers go (share of the test questions): `exact` (EM 1); `gold not "
                  "read` (the gold paragraph not among the k passages); `another passage chosen` (it was, but "
                  "another passage's span scored higher); `answer past the window` (no reference answer inside the "
                  "gold paragraph's stored tokens); `wrong span` (the gold paragraph's span is not the answer).", "",
                  markdown_table(r["span_outcomes"], columns, floatfmt=".3f"), ""]
    train = _json(folder / "train.json")
    if not train:
        return lines
    labels, best, cfg = train["labels"]["train"], train["best"], train["train"]
    lines += [f"The span reader: {train['parameters']:,} parameters over layers {train['reader']['layers']}, trained "
              f"on {labels['located']:,} of {labels['questions']:,} train questions ({labels['past_window']:,} "
              f"answers past the stored window and {labels['not_found']:,} not found in their paragraph were left "
              f"out), {cfg['epochs']} epochs of {cfg['batch_size']} ({train['questions_seen']:,} questions seen) in "
              f"{train['train_seconds']:.0f} s ({train['questions_per_second']:.0f} questions/s); the dev point with "
              f"the best F1 was kept: EM {best['dev_em']:.3f}, F1 {best['dev_f1']:.3f} after "
              f"{best['questions_seen']:,} questions (gold paragraph, {train['labels']['dev']['questions']} dev "
              "questions).", "",
              markdown_table(train["curve"], ["questions_seen", "train_seconds", "loss", "dev_em", "dev_f1"],
                             floatfmt=".3f"), ""]
    if (folder / "training.png").exists():
        shutil.copy(folder / "training.png", figures / f"reader-{data}.png")
        lines += [f"![span reader training]({figures.name}/reader-{data}.png)", ""]
    return lines


def header_section(root: Path, params: dict | None) -> list[str]:
    lines = [f"# LMORT report: configuration `{root.name}`", "",
             "Generated by `lmort report` from the artifacts under "
             f"`{root}`; rerun `dvc repro` to regenerate. Every number below comes from a file written by a "
             "pipeline stage.", ""]
    if params:
        lines += [f"Model `{params.get('model')}`; trained on `{params.get('train_sets')}` (train split; dev selects "
                  f"the checkpoint); evaluated on `{params.get('eval_sets')}` ({params.get('eval_split')} split). "
                  f"Every variant's (U, A) by `layer_selection: {params.get('layer_selection', 'geometry')}` "
                  "(geometry: the rule below; dev: the layer sweep's best pair on dev; or a pair named U,A).", ""]
    return lines


def geometry_section(root: Path, figures: Path, geometry: dict | None) -> list[str]:
    if not geometry:
        return []
    shutil.copy(root / "analysis" / "geometry.png", figures / "geometry.png")
    return ["## Layer geometry (training pairs only)", "",
            f"{geometry['pairs']} training pairs of {', '.join(geometry['datasets'])}; "
            f"A-layer {geometry['a_layer']}, U-layer {geometry['u_layer']}. {geometry['verdict']}", "",
            f"![geometry]({figures.name}/geometry.png)", "",
            "<details><summary>per-layer table</summary>", "",
            (root / "analysis" / "geometry.md").read_text().split("\n\n")[0], "", "</details>", ""]


def ablation_section(root: Path, metrics: dict, params: dict | None) -> list[str]:
    """Every system per set with the in-domain and zero-shot averages, the paper's claim, LMORT's gaps."""
    if not metrics:
        return []
    trained = [s.strip() for s in str((params or {}).get("train_sets", "")).split(",") if s.strip()]
    in_domain = [ds for ds in metrics if ds in trained]
    split = ["in-domain", "zero-shot"] if 0 < len(in_domain) < len(metrics) else []
    cols = ["system", "layers", *metrics, "average", *split, "parameters", "train s", "dev nDCG@10"]
    rows = ablation_rows(metrics, root / "tuners", in_domain=trained)
    lines = ["## Ablations and baselines (nDCG@10)", "",
             "Tuner variants (`layers`: stream layer -> cross-attention layer, or the pooled layer) beside "
             "BM25 (bm25s), all-MiniLM-L6-v2, each raw mean-pooled LLM layer (no training) and each dense system "
             "fused with BM25 (`+bm25`, `+bm25-rrf`: see Hybrid retrieval). In-domain: "
             f"the sets trained on ({', '.join(trained) or 'none'}); zero-shot: the others.", "",
             markdown_table(rows, cols), "", claim_verdict(rows), ""]
    gaps = lmort_gaps(rows, [*metrics, "average", *split])
    if gaps:
        lines += ["LMORT's distance to the references (nDCG@10 of LMORT minus the reference's; negative: below):",
                  "", markdown_table(gaps, ["LMORT minus", *metrics, "average", *split], floatfmt="+.3f"), ""]
    for m in list(MEASURES)[1:]:
        lines += [f"### {m}", "", markdown_table(ablation_rows(metrics, root / "tuners", m, trained),
                                                 ["system", *metrics, "average", *split])]
    return lines


def curves_section(root: Path, figures: Path) -> list[str]:
    curves = []
    for t in sorted((root / "tuners").glob("*/training.png")):
        shutil.copy(t, figures / f"training-{t.parent.name}.png")
        curves.append(f"![{t.parent.name}]({figures.name}/training-{t.parent.name}.png)")
    return ["## Training curves (loss per training set; dev nDCG@10)", "", *curves, ""] if curves else []


def scaling_section(root: Path, figures: Path) -> list[str]:
    if not (root / "scaling" / "scaling.png").exists():
        return []
    shutil.copy(root / "scaling" / "scaling.png", figures / "scaling.png")
    return ["## Data scaling (dev and zero-shot nDCG@10 against training queries)", "",
            "`lmort scale`: each point trains on a seeded nested sample of the training queries, from the same "
            "stores, for at least one pass and at least `scaling.min_steps` steps; dev picks the epoch; the "
            "zero-shot sets' test splits are only reported. `trained on` names the machine of each point.", "",
            f"![scaling]({figures.name}/scaling.png)", "", (root / "scaling" / "scaling.md").read_text(), ""]


def sweep_section(root: Path, figures: Path) -> list[str]:
    if not (root / "sweep" / "sweep.png").exists():
        return []
    shutil.copy(root / "sweep" / "sweep.png", figures / "sweep.png")
    lines = ["## Which layers? The (U, A) sweep (dev nDCG@10)", "",
             "`lmort sweep`: one LMORT tuner per pair of stored layers (U feeds the self-attention stream, A the "
             "cross-attention), a pooled-linear probe per layer and the fusion baselines, all with one recipe "
             "from the same stores (stage one ran once). Dev ranks them; the test columns are reported, never "
             "chosen on. The red box is the geometric rule's pick, the orange one the best pair on dev.", "",
             f"![sweep]({figures.name}/sweep.png)", ""]
    if (root / "sweep" / "sweep-test.png").exists():
        shutil.copy(root / "sweep" / "sweep-test.png", figures / "sweep-test.png")
        lines += [f"![sweep on test]({figures.name}/sweep-test.png)", ""]
    return lines + [(root / "sweep" / "sweep.md").read_text(), ""]


def efficiency_section(root: Path, geometry: dict | None) -> list[str]:
    """Stage one's cost per store (paid once), and each tuner's size against the LLM's."""
    eff = []
    for f in sorted((root / "stores").glob("*/extract.json")):
        for kind, s in json.loads(f.read_text()).items():
            per_tok_layer = s["bytes_on_disk"] / max(1, s["tokens"] * len(s["layers"]))
            eff.append({"store": f"{f.parent.name}/{kind}", "texts": s["texts"], "tokens": s["tokens"],
                        "layers": ",".join(map(str, s["layers"])), "tokens/s": s["tokens_per_second"],
                        "MB on disk": f"{s['bytes_on_disk'] / 1e6:,.1f}", "bytes/token/layer": round(per_tok_layer)})
    if not eff:
        return []
    lines = ["## Efficiency", "", "Stage one (paid once per store; every tuner variant reuses it):", "",
             markdown_table(eff, ["store", "texts", "tokens", "layers", "tokens/s", "MB on disk",
                                  "bytes/token/layer"])]
    if geometry and geometry.get("llm_parameters"):
        rows = [{"system": t.parent.name, "tuner parameters": f"{_json(t)['parameters']:,}",
                 "share of the LLM": f"{_json(t)['parameters'] / geometry['llm_parameters']:.2%}"}
                for t in sorted((root / "tuners").glob("*/train.json"))]
        lines += [f"LLM parameters: {geometry['llm_parameters']:,}.", "",
                  markdown_table(rows, ["system", "tuner parameters", "share of the LLM"])]
    return lines


def rerank_section(root: Path, figures: Path) -> list[str]:
    """The reranker: both designs' training and dev curves, the one dev kept, and every reranked row with
    what dev chose and its paired tests (`lmort train-reranker`'s chosen.json, `lmort rerank`'s rerank.json)."""
    from ..interaction.rerank_report import RERANK_COLUMNS, rerank_rows

    chosen, report = _json(root / "reranker" / "chosen.json") or {}, _json(root / "rerank" / "rerank.json") or {}
    if not chosen:
        return []
    lines = ["## Reranking from the stores: interaction over the stored token states", "",
             "`lmort train-reranker` trains each design from the stores alone (the LLM never runs over a passage): "
             "`late`, ColBERT's MaxSim; `cross`, the same MaxSim plus a logit read by the query's tokens attending to "
             "the passage's (pipeline/interaction/reranker.py). "
             "A listwise softmax over each query's positive, its BM25 hard negatives and the batch's other passages; "
             f"dev nDCG@10 of BM25's reranked candidates selects the checkpoint and the design (on "
             f"{', '.join(chosen['selects_on'])}). Dev kept **{chosen['design']}**.", ""]
    rows = [{"design": d, "parameters": r["parameters"], "train seconds": r["train_seconds"],
             "queries seen (best)": r["best"]["queries_seen"], **r["best"]["dev"], "selects on": r["best"]["select"]}
            for d, r in chosen["designs"].items()]
    lines += [markdown_table(rows, list(rows[0]), floatfmt=".4f"), ""]
    for design in chosen["designs"]:
        folder = root / "reranker" / design
        if (folder / "curve.md").exists():
            lines += [f"Dev curve of `{design}` (BM25's candidates reranked, nDCG@10):", "",
                      (folder / "curve.md").read_text(), ""]
        if (folder / "training.png").exists():
            shutil.copy(folder / "training.png", figures / f"reranker-{design}.png")
            lines += [f"![reranker {design}]({figures.name}/reranker-{design}.png)", ""]
    if report:
        lines += ["`lmort rerank`: each first stage's top candidates reordered; the depth and the reranker's weight "
                  "(1: its score alone; below 1, a min-max interpolation with the first stage) chosen on the dev "
                  "run where the fusion is chosen. `guarded`: dev could not show the reranked run better than the "
                  "first stage (paired t-test at `fusion.max_p`), so the row is the first stage as it ranked. "
                  "`p`: paired t-tests on the test queries. `unguarded`: what dev's best depth and weight score on "
                  "test without the guard, reported to show what the guard kept off, never chosen on.", "",
                  markdown_table(rerank_rows(report), RERANK_COLUMNS, floatfmt=".3f"), ""]
    return lines


def build_report(root: Path, out: Path, figures: Path, params: dict | None = None) -> str:
    """Assemble REPORT.md for the configuration whose artifacts live under `root` (cache/<name>): one function
    per section, each reading its own artifacts."""
    root, figures = Path(root), Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    geometry = _json(root / "analysis" / "geometry.json")
    lines = [*header_section(root, params), *geometry_section(root, figures, geometry),
             *ablation_section(root, _json(root / "metrics.json") or {}, params),
             *fusion_section(_json(root / "fusion" / "fusion.json") or {}), *rerank_section(root, figures),
             *rag_section(_json(root / "rag" / "rag.json") or {}, root, figures),
             *curves_section(root, figures), *scaling_section(root, figures), *sweep_section(root, figures),
             *efficiency_section(root, geometry)]
    text = "\n".join(lines) + "\n"
    atomic_file(Path(out), lambda tmp: tmp.write_text(text))
    return text
