"""squad from the official SQuAD v1.1 JSON files: the shared copy's ids and splits, answers, no network."""

import json
from pathlib import Path

from click.testing import CliRunner

from stages.cli import main

# ---------------------------------------------------------------- squad from the official JSON files


def official_json(path, split_articles):
    """A SQuAD v1.1 file in the official format: {"data": [{"title", "paragraphs": [{"context", "qas"}]}]}."""
    path.write_text(json.dumps({"version": "1.1", "data": [
        {"title": title, "paragraphs": [{"context": ctx, "qas": [
            {"id": f"h{i}{j}", "question": q, "answers": [{"answer_start": 0, "text": a} for a in answers]}
            for j, (q, answers) in enumerate(qas)]} for i, (ctx, qas) in enumerate(paragraphs)]}
        for title, paragraphs in split_articles]}))
    return path


def test_squad_from_the_official_json_has_the_shared_copys_ids(tmp_path):
    from pipeline.data.answers import read_answers
    from pipeline.data.beir import load_beir
    from pipeline.data.squad import squad_to_beir

    train = official_json(tmp_path / "train-v1.1.json", [
        ("2008_Sichuan_earthquake", [("The 2008 Sichuan  earthquake killed 69,197 people.",
                                      [("How many people were killed?", ["69,197"]), ("When?", ["2008"])])])])
    dev = official_json(tmp_path / "dev-v1.1.json", [
        ("1973_oil_crisis", [("It began in October 1973.", [("When did it begin?", ["October 1973", "1973"])]),
                             ("A second paragraph.", [])])])
    out = squad_to_beir(train, dev, tmp_path / "squad")
    beir = load_beir(out, "squad")
    assert beir.corpus["train-2008_Sichuan_earthquake-0"] == {
        "title": "2008 Sichuan earthquake", "text": "The 2008 Sichuan earthquake killed 69,197 people."}
    assert set(beir.corpus) == {"train-2008_Sichuan_earthquake-0", "dev-1973_oil_crisis-0", "dev-1973_oil_crisis-1"}
    assert beir.qrels["train"] == {"train-2008_Sichuan_earthquake-0-q0": {"train-2008_Sichuan_earthquake-0": 1},
                                   "train-2008_Sichuan_earthquake-0-q1": {"train-2008_Sichuan_earthquake-0": 1}}
    assert beir.qrels["test"] == {"dev-1973_oil_crisis-0-q0": {"dev-1973_oil_crisis-0": 1}}
    assert read_answers(out / "answers.jsonl")["dev-1973_oil_crisis-0-q0"] == ["October 1973", "1973"]
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "beir" / "squad"
    if shared.exists():  # the same id scheme as the shared copy's first lines
        first = json.loads(open(shared / "queries.jsonl").readline())["_id"]
        assert first == "train-2008_Sichuan_earthquake-0-q0"


def test_squad_without_a_network_is_one_line_and_writes_nothing(tmp_path):
    r = CliRunner().invoke(main, ["fetch-squad", "--out", str(tmp_path / "squad"), "--url", "http://127.0.0.1:9"])
    assert r.exit_code != 0 and "download failed" in r.output and "--train-json" in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "squad").exists()
