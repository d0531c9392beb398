"""The generative reader's SQuAD metrics and prompts, and the answers files it is scored against."""


import pytest

from pipeline.answers.reader import answer_scores, build_prompt, normalize_answer
from pipeline.common.config import Template
from pipeline.common.errors import DataError
from pipeline.data.answers import read_answers, sample_questions
from pipeline.retrieval.hits import Hit

# ---------------------------------------------------------------- the reader's metrics and prompts


def test_squad_normalisation_and_scores():
    assert normalize_answer("The  Saul Alinsky!") == "saul alinsky"
    s = answer_scores("Saul Alinsky", ["Saul David Alinsky", "Alinsky"])
    assert s["em"] == 0 and s["f1"] == pytest.approx(0.8) and s["contains"] == 1
    assert answer_scores("the answer is alinsky.", ["Alinsky"]) == {"em": 0.0, "f1": pytest.approx(0.5),
                                                                   "contains": 1.0}
    assert answer_scores("1989", ["1988"])["contains"] == 0


def test_the_prompt_starts_with_the_query_template_in_question_first_order():
    t = Template(query="<|im_start|>user\n{text}", case="keep")
    hits = [Hit(1, 1.0, "d1", "Title", "Some   text.")]
    first = build_prompt("Who?", hits, t, "<|im_end|>\n", "question-first")
    assert first.prefix == "<|im_start|>user\nWho?" and first.text.startswith(first.prefix)
    assert "[1] Title: Some text." in first.rest
    last = build_prompt("Who?", hits, t, "<|im_end|>\n", "passages-first")
    assert last.prefix == "" and last.text.startswith("<|im_start|>user\n[1] Title")
    assert last.text.index("Who?") > last.text.index("Some text")
    with pytest.raises(ValueError):
        build_prompt("Who?", hits, t, "", "sideways")


def test_answers_file_errors_name_the_line_and_field(tmp_path):
    f = tmp_path / "answers.jsonl"
    f.write_text('{"_id": "q1", "answers": ["a"]}\n{"_id": "q2", "answers": []}\n')
    with pytest.raises(DataError, match=r"answers.jsonl:2: field 'answers'"):
        read_answers(f)
    with pytest.raises(FileNotFoundError, match="no answers file"):
        read_answers(tmp_path / "missing.jsonl")
    qids = [f"q{i}" for i in range(10)]
    sample = sample_questions(qids, 3, 0)
    assert len(set(sample)) == 3 and set(sample) <= set(qids) and sample == sorted(sample)
    assert {tuple(sample_questions(qids, 3, seed)) for seed in range(5)} != {tuple(sample)}  # the seed draws
    assert sample_questions(qids, 50, 0) == sorted(qids)  # more than there are: all of them
