import pytest
import torch
from transformers import AutoModel

from pipeline.activations.llm import FrozenLLM


def test_truncated_model_runs_only_needed_blocks_and_matches_full(tiny_model):
    full = AutoModel.from_pretrained(tiny_model).eval()
    llm = FrozenLLM(tiny_model, max_layer=2, device="cpu")
    assert len(llm.model.layers) == 2 and llm.num_layers == 3
    assert not any(p.requires_grad for p in llm.model.parameters()) and not llm.model.training
    ids, truncated = llm.tokenize(["alpha beta gamma delta", "cell gene"], max_length=3)
    assert truncated == 1 and [len(x) for x in ids] == [3, 2]
    states, mask = llm.forward(ids, [0, 1, 2])
    with torch.no_grad():
        ref = full(input_ids=torch.tensor([ids[0]]), output_hidden_states=True).hidden_states
    for layer in (0, 1, 2):
        assert torch.allclose(states[layer][0, :3], ref[layer][0], atol=1e-5)
    # right padding never changes a real token's state
    alone, _ = llm.forward([ids[1]], [2])
    assert torch.allclose(states[2][1, :2], alone[2][0, :2], atol=1e-5)
    assert mask[:, :3].tolist() == [[1, 1, 1], [1, 1, 0]] and not mask[:, 3:].any()  # padded to 16: few shapes


def test_blocks_past_max_layer_never_run(tiny_model):
    llm = FrozenLLM(tiny_model, max_layer=1, device="cpu")
    calls = []
    for block in llm.model.layers:
        block.register_forward_hook(lambda *a: calls.append(1))
    llm.forward([[3, 4, 5]], [1])
    assert len(calls) == 1


def test_tokenizing_in_chunks_changes_nothing(tiny_model):
    llm = FrozenLLM(tiny_model, max_layer=1, device="cpu")
    texts = ["alpha beta gamma delta", "cell gene", "", "gene " * 9, "beta"]
    whole = llm.tokenize(texts, max_length=4, chunk=len(texts))
    assert llm.tokenize(texts, max_length=4, chunk=2) == whole
    assert whole[1] == 1 and whole[0][2] == [llm.pad_id]  # the long text truncated; the empty one padded


def test_the_packages_the_gguf_loader_needs_are_declared():
    """transformers loads the model wheels' GGUF files only with gguf and accelerate installed; a test venv made
    before a dependency was dropped hides its absence, so the declaration itself is checked."""
    import re

    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    declared = {re.split(r"[<>=\[ ;]", d)[0].lower() for d in pyproject["project"]["dependencies"]}
    assert {"transformers", "gguf", "accelerate"} <= declared


def test_the_template_lower_cases_by_default_and_keeps_case_when_asked():
    from pipeline.activations.extract import EXTRACT
    from pipeline.common.config import Template

    assert Template().case == EXTRACT.case == "lower"  # one default: the library and the CLI extract the same text
    assert Template().format_query("CELL Biology") == "cell biology"
    keep = Template(case="keep")
    assert keep.format_query("CELL") == "CELL"
    assert keep.format_passage("Title", "Text") == "Title\nText"
    assert keep.format_passage("  ", "Text only") == "Text only"  # no title: no empty first line
    assert keep.format_passage("Title only", " ") == "Title only"
    assert Template().format_passage("A Title", "Some TEXT") == "a title\nsome text"  # the default lower-cases
    assert Template().format_passage(" ", "AB") == "ab"
    with pytest.raises(ValueError, match="case"):
        Template(case="upper")


def test_weights_hash_is_the_files_sha256_stamped_until_a_file_changes(tmp_path):
    import hashlib

    from pipeline.activations.llm import weights_hash

    (tmp_path / "model.safetensors").write_bytes(b"weights one")
    first = weights_hash(str(tmp_path))
    assert first == hashlib.sha256(b"weights one").hexdigest()[:16]
    assert (tmp_path / ".weights.sha256").read_text().endswith(first)
    (tmp_path / ".weights.sha256").write_text((tmp_path / ".weights.sha256").read_text()[:-16] + "f" * 16)
    assert weights_hash(str(tmp_path)) == "f" * 16  # the stamp is read, not the weights, while the files are as stamped
    (tmp_path / "model.safetensors").write_bytes(b"weights two!")  # another size: the stamp no longer applies
    assert weights_hash(str(tmp_path)) == hashlib.sha256(b"weights two!").hexdigest()[:16]
    assert weights_hash("org/model") == "hub:org/model"
