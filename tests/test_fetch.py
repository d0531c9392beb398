"""Sets the BEIR archive lacks come through ir_datasets: its real parsers and download cache, pre-seeded here with
archives in the original formats (the test writes them), so no network is needed. Each run is a fresh process,
since ir_datasets fixes its cache folder when imported."""

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

pytest.importorskip("ir_datasets")

ROOT = Path(__file__).resolve().parents[1]

CRAN_DOCS = """.I 1
.T
experimental investigation of the aerodynamics of a
wing in a slipstream .
.A
brenckman,m.
.B
j. ae. scs. 25, 1958, 324.
.W
experimental investigation of the aerodynamics of a
wing in a slipstream .
  an experimental study of a wing in a propeller slipstream was
made in order to determine the spanwise distribution of the lift .
.I 2
.T
simple shear flow past a flat plate in an incompressible fluid of small
viscosity .
.A
ting-yili
.B
department of aeronautical engineering, rensselaer polytechnic
institute troy, n.y.
.W
simple shear flow past a flat plate in an incompressible fluid of small
viscosity .
in the study of high-speed viscous flow past a two-dimensional body it
is usually necessary to consider a curved shock wave .
.I 3
.T
the boundary layer in simple shear flow past a flat plate .
.A
m. b. glauert
.B
department of mathematics, university of manchester, manchester, england
.W
the boundary layer in simple shear flow past a flat plate .
the boundary-layer equations are presented for steady incompressible flow
with no pressure gradient .
"""
CRAN_QUERIES = """.I 001
.W
what similarity laws must be obeyed when constructing aeroelastic models
of heated high speed aircraft .
.I 004
.W
what problems of heat conduction in composite slabs have been solved so
far .
"""
CRAN_QRELS = "1 1 2\n1 3 -1\n2 2 1\n2 3 4\n"

NPL_DOCS = """1
compact memories have flexible capacities  a digital data storage
system with capacity up to bits and random and or sequential access
is described
   /
2
an electronic analogue computer for solving systems of linear equations
   /
3
electronic coordinate transformer
   /
"""
NPL_QUERIES = """1
MEASUREMENT OF DIELECTRIC CONSTANT OF LIQUIDS BY THE USE OF MICROWAVE TECHNIQUES
/
2
MATHEMATICAL ANALYSIS AND DESIGN DETAILS OF WAVEGUIDE FED MICROWAVE RADIATIONS
/
"""
NPL_QRELS = """1
 1 3
   /
2
 2
   /
"""


def tar_gz(path: Path, files: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def nfcorpus_files() -> dict[str, str]:
    files = {"nfcorpus/test.docs": "MED-10\tstatin breast cancer survival nationwide cohort\n",
             "nfcorpus/dev.docs": "MED-20\tnum vitamin d deficiency  study\nMED-30\tsoy intake prostate cancer\n",
             "nfcorpus/train.docs": "MED-99\ta train-only document our copy never had\n"}
    for split, qid in (("train", "PLAIN-3"), ("dev", "PLAIN-2"), ("test", "PLAIN-1")):
        files[f"nfcorpus/{split}.titles.queries"] = f"{qid}\thow contaminated are our children ?\n"
        files[f"nfcorpus/{split}.2-1-0.qrel"] = f"{qid}\t0\tMED-10\t2\n{qid}\t0\tMED-20\t1\n{qid}\t0\tMED-30\t0\n"
    return files


def lmort(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`lmort ...` in a fresh process that sees no ../shared copy and no $LMORT_DATA set."""
    code = ("import sys, pipeline.data.fetch as f; from pathlib import Path; f.SHARED_BEIR = Path(sys.argv.pop(1)); "
            "f.PROJECT_ROOT = f.SHARED_BEIR; from stages.cli import main; main()")
    environ = {k: v for k, v in os.environ.items() if k not in ("LMORT_DATA", "HTTP_PROXY", "HTTPS_PROXY")}
    environ.update(IR_DATASETS_HOME=str(tmp_path / "irds"), LMORT_CACHE=str(tmp_path / "cache"), **env)
    return subprocess.run([sys.executable, "-c", code, str(tmp_path / "no-shared"), *args], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=300)


def read_beir(folder: Path) -> tuple[dict, dict, dict]:
    corpus = {d["_id"]: d for d in map(json.loads, (folder / "corpus.jsonl").read_text().splitlines())}
    queries = {q["_id"]: q["text"] for q in map(json.loads, (folder / "queries.jsonl").read_text().splitlines())}
    qrels = {p.stem: [line.split("\t") for line in p.read_text().splitlines()[1:]]
             for p in (folder / "qrels").glob("*.tsv")}
    return corpus, queries, qrels


def test_cranfield_through_ir_datasets(tmp_path):
    tar_gz(tmp_path / "irds" / "cranfield" / "cran.tar.gz",
           {"cran.all.1400": CRAN_DOCS, "cran.qry": CRAN_QUERIES, "cranqrel": CRAN_QRELS})
    r = lmort(tmp_path, "prepare", "--data", "cranfield", "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-2000:]
    corpus, queries, qrels = read_beir(tmp_path / "cache" / "beir" / "cranfield")
    assert corpus["1"]["title"] == "experimental investigation of the aerodynamics of a wing in a slipstream ."
    assert corpus["1"]["text"].startswith("experimental investigation of the aerodynamics of a wing in a slipstream . "
                                          "an experimental study")
    assert queries == {"1": "what similarity laws must be obeyed when constructing aeroelastic models of heated "
                            "high speed aircraft .",
                       "2": "what problems of heat conduction in composite slabs have been solved so far ."}
    # queries renumbered 1.. in file order (cranqrel's numbering); grade = 5 - code; code -1 dropped
    assert qrels == {"test": [["1", "1", "3"], ["2", "2", "4"], ["2", "3", "1"]]}
    assert "ir_datasets 'cranfield'" in (tmp_path / "cache" / "beir" / "cranfield" / "SOURCE.txt").read_text()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["source"]["path"] == str((tmp_path / "cache" / "beir" / "cranfield").resolve())


def test_vaswani_and_nfcorpus_through_ir_datasets(tmp_path):
    tar_gz(tmp_path / "irds" / "vaswani" / "npl.tar.gz",
           {"doc-text": NPL_DOCS, "query-text": NPL_QUERIES, "rlv-ass": NPL_QRELS})
    tar_gz(tmp_path / "irds" / "nfcorpus" / "nfcorpus.tar.gz", nfcorpus_files())
    for name in ("vaswani_npl", "nfcorpus_preprocessed"):
        r = lmort(tmp_path, "prepare", "--data", name, "--out", str(tmp_path / name))
        assert r.returncode == 0, r.stderr[-2000:]
    corpus, queries, qrels = read_beir(tmp_path / "cache" / "beir" / "vaswani_npl")
    assert corpus["1"] == {"_id": "1", "title": "", "text": "compact memories have flexible capacities a digital "
                           "data storage system with capacity up to bits and random and or sequential access is "
                           "described"}
    assert set(corpus) == {"1", "2", "3"} and queries["2"].startswith("MATHEMATICAL ANALYSIS")
    assert qrels == {"test": [["1", "1", "1"], ["1", "3", "1"], ["2", "2", "1"]]}
    corpus, queries, qrels = read_beir(tmp_path / "cache" / "beir" / "nfcorpus_preprocessed")
    assert set(corpus) == {"MED-10", "MED-20", "MED-30"}  # test.docs + dev.docs, as our copy
    assert corpus["MED-20"]["text"] == "num vitamin d deficiency study"
    assert set(queries) == {"PLAIN-1", "PLAIN-2", "PLAIN-3"}
    assert qrels["train"] == [["PLAIN-3", "MED-10", "2"], ["PLAIN-3", "MED-20", "1"]]  # grade 0 left out
    assert sorted(qrels) == ["dev", "test", "train"]


def test_a_failed_fetch_is_one_line_naming_the_url_and_writes_nothing(tmp_path):
    # no network: every request goes to a closed loopback port
    r = lmort(tmp_path, "prepare", "--data", "cranfield", "--out", str(tmp_path / "out"),
              HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    assert r.returncode != 0 and "Traceback" not in r.stderr + r.stdout
    line = (r.stderr + r.stdout).strip().splitlines()[-1]
    assert "cran.tar.gz" in line and "$LMORT_DATA/cranfield" in line, line
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache" / "beir" / "cranfield").exists()
    # a truncated archive in ir_datasets' cache: the same one line, nothing half-written
    (tmp_path / "irds" / "cranfield").mkdir(parents=True, exist_ok=True)
    (tmp_path / "irds" / "cranfield" / "cran.tar.gz").write_bytes(b"\x1f\x8b\x08not a tar")
    r = lmort(tmp_path, "prepare", "--data", "cranfield", "--out", str(tmp_path / "out"))
    assert r.returncode != 0 and "Traceback" not in r.stderr + r.stdout
    assert "cranfield" in (r.stderr + r.stdout).strip().splitlines()[-1]
    assert not (tmp_path / "cache" / "beir" / "cranfield").exists()
    assert not any(p.name.startswith(".cranfield") for p in (tmp_path / "cache" / "beir").iterdir())

