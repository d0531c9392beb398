"""A tiny random Llama and a tiny BEIR set: what unit tests and the quick DVC configuration run on.

No weights are downloaded: the model is built from a config with random weights (seeded).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega cell gene protein virus drug trial cancer heart brain blood").split()


def make_tiny_model(folder: Path, layers: int = 3, width: int = 32, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=width, intermediate_size=2 * width,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)
    return folder


def write_beir(folder: Path, n_docs: int = 40, n_queries: int = 24, seed: int = 0) -> Path:
    """A small BEIR folder: each query shares words with its one relevant document."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    docs = {f"d{i}": " ".join(rng.choices(WORDS, k=rng.randint(4, 20))) for i in range(n_docs)}
    with open(folder / "corpus.jsonl", "w") as f:
        for i, t in docs.items():
            f.write(json.dumps({"_id": i, "title": "", "text": t}) + "\n")
    (folder / "qrels").mkdir(exist_ok=True)
    with open(folder / "queries.jsonl", "w") as fq, open(folder / "qrels" / "train.tsv", "w") as ft, \
            open(folder / "qrels" / "test.tsv", "w") as fe:
        ft.write("query-id\tcorpus-id\tscore\n")
        fe.write("query-id\tcorpus-id\tscore\n")
        for q in range(n_queries):
            d = f"d{q % n_docs}"
            words = docs[d].split()
            fq.write(json.dumps({"_id": f"q{q}", "text": " ".join(rng.sample(words, min(3, len(words))))}) + "\n")
            (ft if q < n_queries * 3 // 4 else fe).write(f"q{q}\t{d}\t1\n")
    return folder
