"""The LLM reads what its memory returned: prompts, batched answers, the one-forward `ask`, and SQuAD's metrics.

The full frozen LLM (with its head) is the reader. Because it is causal, the states of a prompt's first tokens do
not depend on what follows: when the stores' query template is the prompt's prefix (a chat model's user turn up to
the question, `extract.query_template`), the prompt's own forward gives the query vector at the tuner's layers,
and the same key/value cache carries on into the answer. No second encoder, no second pass over the question.
"""

from __future__ import annotations

import re
import string
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..activations.llm import default_device, resolve_model
from ..common.config import RAG, Template
from ..common.precision import autocast, feed_dtype
from ..retrieval.hits import Hit

ORDERS = ("question-first", "passages-first")
# how the generative reader is prompted (dev chooses): today's instruction, the same with two train
# questions and their short answers as earlier turns (few-shot, passages-first only: the examples come before the
# question), or greedy decoding constrained to spans of the passages it read (Castel et al. 2021)
PROMPTS = ("plain", "few-shot", "constrained")
INSTRUCTION = "Answer the question in a few words, using the passages."
SENTINEL = "\x00"


# ---------------------------------------------------------------- SQuAD v1.1's official answer metrics


def normalize_answer(s: str) -> str:
    """The official SQuAD v1.1 normalisation: lower case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1_score(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = Counter(pred) & Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def answer_scores(prediction: str, answers: list[str]) -> dict[str, float]:
    """EM and F1 (the best over the reference answers, as the official script) and whether a reference answer
    appears inside the output (a reader that answers in full sentences still gets this one)."""
    norm = normalize_answer(prediction)
    return {"em": float(max(normalize_answer(prediction) == normalize_answer(a) for a in answers)),
            "f1": max(f1_score(prediction, a) for a in answers),
            "contains": float(any(normalize_answer(a) and f" {normalize_answer(a)} " in f" {norm} " for a in answers))}


# ---------------------------------------------------------------- prompts


def chat_tail(tokenizer) -> str:
    """What a chat model's template puts after the user's message (ChatML: end of turn, the assistant's turn)."""
    if not getattr(tokenizer, "chat_template", None):
        return "\n"
    text = tokenizer.apply_chat_template([{"role": "user", "content": SENTINEL}], tokenize=False,
                                         add_generation_prompt=True)
    return text.split(SENTINEL, 1)[1]


def passages_block(passages: list[Hit]) -> str:
    return "\n".join(f"[{i}] {p.title}: {' '.join(p.text.split())}" if p.title else f"[{i}] {' '.join(p.text.split())}"
                     for i, p in enumerate(passages, 1))


@dataclass(frozen=True)
class PromptParts:
    """A prompt in two pieces: `prefix` is the stores' query template applied to the question (what the query
    vector is read from), `rest` what follows it (passages, instruction, the chat template's tail)."""

    prefix: str
    rest: str

    @property
    def text(self) -> str:
        return self.prefix + self.rest


@dataclass(frozen=True)
class Shot:
    """A worked example for the few-shot prompt: a train question, its gold paragraph and its short answer."""

    question: str
    passage: Hit
    answer: str


def build_prompt(question: str, passages: list[Hit], template: Template, tail: str,
                 order: str = "question-first", shots: list[Shot] | None = None, end_of_turn: str = "\n"
                 ) -> PromptParts:
    """question-first: the query template's text (the user turn up to the question), then the passages, so the
    question's cache carries on into the answer. passages-first: the passages come before the question, which
    the reader then computes a second time (the retrieval prefix cannot be reused). `shots`: worked examples as
    earlier turns (passages-first only), each answer closed by `end_of_turn`."""
    if order not in ORDERS:
        raise ValueError(f"prompt order must be one of {', '.join(ORDERS)}, not {order!r}")
    if shots and order != "passages-first":
        raise ValueError("a few-shot prompt puts its examples before the question: passages-first only")
    prefix = template.format_query(question)
    if not passages:
        return PromptParts(prefix, f"\n\nAnswer the question in a few words.{tail}")
    block = passages_block(passages)
    if order == "question-first":
        return PromptParts(prefix, f"\n\n{INSTRUCTION}\n\n{block}{tail}")
    head = template.format_query(SENTINEL).split(SENTINEL)[0]  # the user turn's opening, as the template writes it
    examples = "".join(f"{head}{passages_block([s.passage])}\n\nQuestion: "
                       f"{template.format_query(s.question)[len(head):]}\n{INSTRUCTION}{tail}{s.answer}{end_of_turn}"
                       for s in shots or [])
    return PromptParts("", f"{examples}{head}{block}\n\nQuestion: {prefix[len(head):]}\n{INSTRUCTION}{tail}")


def span_sequences(tokenizer, passages: list[Hit]) -> list[list[int]]:
    """The token sequences an answer constrained to the passages may copy from: each title and text, tokenised
    as words following a space (as an answer's words are)."""
    texts = [t for p in passages for t in (p.title, " ".join(p.text.split())) if t.strip()]
    return [tokenizer(" " + t, add_special_tokens=False)["input_ids"] for t in texts]


def allowed_next(generated: list[int], sequences: list[list[int]], stop_ids: list[int], pad_id: int) -> list[int]:
    """The tokens that continue `generated` as a span of one of `sequences` (any of their tokens to start), and
    the stop tokens once something was generated. A finished row of a batch (a stop token generated) takes
    padding; a span at the end of its passage can only stop."""
    if any(t in stop_ids for t in generated):
        return [pad_id]
    if not generated:
        return sorted({t for seq in sequences for t in seq})
    n, out = len(generated), set(stop_ids)
    for seq in sequences:
        for i in range(len(seq) - n):
            if seq[i : i + n] == generated:
                out.add(seq[i + n])
    return sorted(out) or [pad_id]


def first_line(text: str) -> str:
    """The answer: the generation with its whitespace collapsed (a reader that writes "The answer is:" on one line
    puts the answer on the next)."""
    return " ".join(text.split())


# ---------------------------------------------------------------- the reader


@torch.inference_mode()
def query_vector(tuner, states: dict[int, torch.Tensor], bf16: bool = True) -> np.ndarray:
    """The tuner on a question's own states, every token real (fed as `encode_store` and `encode_texts` feed it)."""
    device = next(tuner.parameters()).device
    feed = feed_dtype(device, bf16)
    length = next(iter(states.values())).shape[1]
    mask = torch.ones((1, length), dtype=torch.bool, device=device)
    with autocast(device, bf16):
        return tuner({k: v.to(device, feed) for k, v in states.items()}, mask).float().cpu().numpy()


class Reader:
    """The full frozen causal LM with its head, in the stores' compute dtype."""

    def __init__(self, model: str, dtype: torch.dtype | None = None, device: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path, self.attention_sink = resolve_model(model)
        self.device = device or default_device()
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype or torch.float32,
                                                          use_safetensors=True)
        self.model = self.model.to(self.device).eval().requires_grad_(False)
        self.tail = chat_tail(self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (
            self.tokenizer.eos_token_id or 0)
        # stop at the end of the turn (a newline would cut "The answer is:\n<the answer>" before the answer)
        self.stop_ids = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        # what closes an assistant's turn in a few-shot example (ChatML: "<|im_end|>\n")
        self.end_of_turn = (f"{self.tokenizer.eos_token}\n" if getattr(self.tokenizer, "chat_template", None)
                            and self.tokenizer.eos_token else "\n")

    def ids(self, text: str, special: bool) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def prompt_ids(self, parts: PromptParts, max_prefix: int | None = None) -> tuple[list[int], list[int]]:
        """Token ids of the prefix (tokenised as the stores tokenise a query, truncated as they are) and of the
        rest. The prompt is their concatenation, so the prefix's states are exactly the store's."""
        prefix = self.ids(parts.prefix, True) if parts.prefix else []
        rest = self.ids(parts.rest, not parts.prefix)
        return prefix, rest

    @torch.inference_mode()
    def generate(self, prompts: list[PromptParts], max_new_tokens: int = RAG.max_new_tokens, batch_size: int = 16,
                 desc: str = "read", progress: bool = True,
                 constraints: list[list[list[int]]] | None = None) -> tuple[list[str], float]:
        """Greedy answers of a list of prompts, batched (left padding, longest first); and the seconds spent.
        `constraints`: per prompt, the token sequences its answer must be a span of (`span_sequences`)."""
        seqs = [sum(self.prompt_ids(p), []) for p in prompts]
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        out: list[str] = [""] * len(seqs)
        t0 = time.time()
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not progress):
            idx = order[start : start + batch_size]
            width = -(-max(len(seqs[i]) for i in idx) // 32) * 32  # few distinct shapes: oneDNN reuses kernels
            ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, width - len(seqs[i]):] = torch.tensor(seqs[i])
                mask[row, width - len(seqs[i]):] = 1
            allowed = None
            if constraints is not None:
                rows = [constraints[i] for i in idx]

                def allowed(row: int, seq: torch.Tensor, rows=rows, width=width) -> list[int]:
                    return allowed_next(seq[width:].tolist(), rows[row], self.stop_ids, self.pad_id)
            gen = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                      max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=self.stop_ids,
                                      pad_token_id=self.pad_id, prefix_allowed_tokens_fn=allowed)
            for row, i in enumerate(idx):
                out[i] = first_line(self.tokenizer.decode(gen[row, width:], skip_special_tokens=True))
        return out, time.time() - t0

    @torch.inference_mode()
    def prefix_forward(self, prefix_ids: list[int], layers: list[int]):
        """One forward of the prompt's prefix through the whole LLM: the hidden states of `layers` (layer 0: the
        embeddings' output, l: the residual stream after block l, as the stores hold them) and the key/value cache
        that generation continues from."""
        captured: dict[int, torch.Tensor] = {}
        base = self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model.model
        modules = [base.get_input_embeddings(), *base.layers]

        def keep(layer):
            def hook(_module, _inputs, output):
                captured[layer] = output[0] if isinstance(output, tuple) else output
            return hook

        handles = [modules[layer].register_forward_hook(keep(layer)) for layer in layers]
        try:
            ids = torch.tensor([prefix_ids], device=self.device)
            out = self.model(input_ids=ids, use_cache=True)
        finally:
            for h in handles:
                h.remove()
        return {layer: captured[layer] for layer in layers}, out.past_key_values

    query_vector = staticmethod(lambda tuner, states, bf16=True: query_vector(tuner, states, bf16))

    @torch.inference_mode()
    def continue_answer(self, prefix_ids: list[int], rest_ids: list[int], cache,
                        max_new_tokens: int = RAG.max_new_tokens) -> str:
        """Generate from the prefix's cache: only the rest of the prompt is computed, then the answer."""
        ids = torch.tensor([prefix_ids + rest_ids], device=self.device)
        gen = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), cache=cache,
                                  max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=self.stop_ids,
                                  pad_token_id=self.pad_id)
        return first_line(self.tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
