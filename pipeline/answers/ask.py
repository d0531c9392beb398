"""`lmort ask`: the LLM answers from its own memory. One forward of the question gives the query vector (the tuner
on the LLM's own states) and either

- span (where the configuration trained a span reader): the question's states at the reader's layers, read
  against the retrieved passages' states from the corpus store: no LLM forward over a passage; or
- generate: the key/value cache the full LLM's answer is generated from (question-first), as before."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..common.config import RAG
from ..common.errors import DataError
from ..data.beir import Prepared
from ..retrieval.hits import Hit, ranked_hits
from .reader import ORDERS, Reader, build_prompt, query_vector

READER_CHOICES = ("span", "generate")


@dataclass
class Answer:
    question: str
    answer: str
    passages: list[Hit]
    retriever: str
    order: str  # the prompt order (generate) or "span"
    ms: dict[str, float] = field(default_factory=dict)  # forward, retrieve, read or generate, total
    source: object | None = None  # the span reader's SpanAnswer: its passage, score and sentence
    notes: list[str] = field(default_factory=list)  # what the reader wants said (a truncated question)


def dev_prompt(rag_json: Path, data: str) -> tuple[str, list]:
    """The generative reader's prompt style dev chose (`lmort rag`'s rag.json) and its few-shot examples; plain
    where the configuration has no rag.json."""
    from .reader import Shot

    if not Path(rag_json).is_file():
        return "plain", []
    result = json.loads(Path(rag_json).read_text()).get(data) or {}
    shots = [Shot(s["question"], Hit(1, 1.0, s["doc_id"], s["title"], s["text"]), s["answer"])
             for s in result.get("shots", [])]
    return (result.get("choice") or {}).get("prompt", "plain"), shots


def fusion_weight(fusion_json: Path, data: str, system: str) -> float:
    """The dense weight dev chose for `<system>+bm25` on `data` (`lmort fuse`'s fusion.json)."""
    if not Path(fusion_json).exists():
        raise FileNotFoundError(f"{fusion_json}: no fusion choices (run `lmort fuse`, or ask with --retriever "
                                f"{system} or bm25)")
    try:
        choices = json.loads(Path(fusion_json).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{fusion_json}: not JSON ({e}); pass `lmort fuse`'s fusion.json") from None
    if not isinstance(choices, dict):
        raise DataError(f"{fusion_json}: not `lmort fuse`'s fusion.json (a mapping of sets)")
    choice = choices.get(data, {}).get("systems", {}).get(f"{system}+bm25")
    if choice is None:
        raise DataError(f"{fusion_json}: no {system}+bm25 choice for {data}")
    return float(choice["dense_weight"])


class RerankStep:
    """The reranker between retrieval and reading, where the configuration trained one (cache/<name>/reranker): the
    question's own states against the candidates' stored states, at the depth and weight dev chose for the retriever
    (cache/<name>/rerank/rerank.json). A retriever dev left guarded, or chose nothing for, is not reranked unless
    `force` (then: dev's depth, or the top 100, by the reranker's score alone)."""

    def __init__(self, reranker=None, passages=None, choices: dict | None = None, force: bool = False):
        self.reranker, self.passages, self.choices, self.force = reranker, passages, choices or {}, force
        self.layers = list(reranker.cfg.layers) if reranker is not None else []

    @classmethod
    def open(cls, root: Path, stores: Path, ds: Prepared, rerank: bool | None) -> RerankStep:
        chosen = Path(root) / "reranker" / "chosen.json"
        trained = chosen.is_file() and bool(json.loads(chosen.read_text()).get("design"))
        if rerank is False or (rerank is None and not trained):
            return cls()
        if not trained:
            raise DataError(f"{chosen}: no reranker for this configuration (run `lmort train-reranker`, or ask "
                            "with --no-rerank)")
        from ..activations.store import ActivationStore, shared_fingerprint
        from ..interaction.rerank import EncodedPassages
        from ..interaction.rerank_runs import chosen_reranker

        corpus = ActivationStore(Path(stores) / ds.name / "corpus.zarr")
        reranker = chosen_reranker(chosen.parent, shared_fingerprint(corpus.fingerprint))
        record = Path(root) / "rerank" / "rerank.json"
        choices = (json.loads(record.read_text()).get(ds.name) or {}).get("systems", {}) if record.is_file() else {}
        return cls(reranker, EncodedPassages(reranker, corpus), choices, bool(rerank))

    def _choice(self, retriever: str) -> tuple[int, float]:
        c = self.choices.get(f"{retriever}>rerank")
        if c is None:  # dev chose nothing for this retriever: off, or (forced) the reranker alone over its top 100
            return 100, 1.0 if self.force else 0.0
        return c["depth"], c["weight"] or (1.0 if self.force else 0.0)

    def active(self, retriever: str) -> bool:
        return self.reranker is not None and self._choice(retriever)[1] > 0

    def depth(self, retriever: str, k: int) -> int:
        """The candidates to retrieve: the rerank depth where it reranks, else k."""
        return max(k, self._choice(retriever)[0]) if self.active(retriever) else k

    def rerank(self, retriever: str, states: dict, run: dict[str, float], bf16: bool) -> dict[str, float]:
        """The question's run reordered (the first stage's where this retriever is not reranked)."""
        if not self.active(retriever) or not run:
            return run
        import torch

        from ..interaction.rerank import combine, score_candidates, top_candidates

        depth, weight = self._choice(retriever)
        top = top_candidates({"q": run}, depth)["q"]
        x = {layer: states[layer] for layer in self.layers}
        mask = torch.ones(next(iter(x.values())).shape[:2], dtype=torch.bool)
        scores = score_candidates(self.reranker, x, mask, self.passages, [top], bf16)[0]
        return combine({"q": run}, {"q": dict(zip(top, scores))}, depth, weight)["q"]


class Memory:
    """An index of a configuration, its tuner, the corpus it indexes, BM25 over the same corpus and the reader:
    the span reader over the corpus store where the configuration trained one (`reader` "span" or None), else the
    full LLM generating (`reader` "generate", or None with `notice` saying why)."""

    def __init__(self, index_dir: Path, ds: Prepared, model: str | None = None, fusion_json: Path | None = None,
                 reader: str | None = None, readers_root: Path | None = None, stores: Path | None = None,
                 rerank: bool | None = None):
        from ..tuner.encoders import TunerEncoder, open_index

        if reader not in (None, *READER_CHOICES):
            raise DataError(f"reader {reader!r}: one of {', '.join(READER_CHOICES)}")
        self.dense, self.meta = open_index(index_dir)  # checks the tuner against the index's model and template
        if not isinstance(self.dense.encode, TunerEncoder):
            raise DataError(f"{index_dir}: an adapter's index; `lmort ask` reads a tuner's (its LLM states feed the "
                            "reader)")
        self.system = self.meta["system"]
        if model is not None and model != self.meta["model"]:
            raise DataError(f"{index_dir}: the index was built with {self.meta['model']}, not {model}")
        if self.meta.get("data") not in (None, ds.name):
            raise DataError(f"{index_dir}: the index holds {self.meta['data']}, not {ds.name}")
        if set(self.meta["ids"]) != set(ds.corpus):
            raise DataError(f"{index_dir}: its {len(self.meta['ids'])} documents are not {ds.name}'s corpus")
        self.tuner = self.dense.encode.tuner
        self.template, self.query_max_length = self.dense.encode.template, self.dense.encode.max_length
        self.ds = ds
        root = Path(index_dir).resolve().parents[2]  # cache/<name>/index/<variant>/<set>: the configuration's root
        self.fusion_json = fusion_json or root / "fusion" / "fusion.json"
        reader_dir = Path(readers_root or root / "reader") / ds.name / "best"
        self.notice = None
        if reader == "span" and not (reader_dir / "reader.json").is_file():
            raise DataError(f"{reader_dir}: no span reader for this configuration (run `lmort train-reader`, or "
                            "ask with --reader generate)")
        self.mode = reader or ("span" if (reader_dir / "reader.json").is_file() else "generate")
        if reader is None and self.mode == "generate":
            self.notice = f"no span reader trained for this configuration ({reader_dir}): the LLM generates"
        self._retrievers: dict = {}
        self.reranker = RerankStep.open(root, Path(stores or root / "stores"), ds, rerank)
        self._load_reader(reader_dir, Path(stores or root / "stores"))

    def _load_reader(self, reader_dir: Path, stores: Path) -> None:
        from ..activations.llm import default_device
        from ..common.precision import resolve_compute_dtype

        dtype = resolve_compute_dtype(self.meta.get("compute_dtype", "float32"), default_device())
        if self.mode == "generate":
            self.reader = Reader(self.meta["model"], dtype=dtype)
            return
        from transformers import AutoTokenizer

        from ..activations.llm import FrozenLLM, resolve_model
        from ..activations.store import ActivationStore
        from .span_read import StoredPassageReader

        corpus = ActivationStore(stores / self.ds.name / "corpus.zarr")
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(self.meta["model"])[0])
        self.span = StoredPassageReader(reader_dir, corpus, self.ds, tokenizer)
        self.layers = sorted(set(self.tuner.cfg.layers) | set(self.span.layers) | set(self.reranker.layers))
        self.llm = FrozenLLM(self.meta["model"], max_layer=max(self.layers), dtype=dtype)  # only the blocks read

    def retrievers(self) -> tuple[str, ...]:
        return (f"{self.system}+bm25", self.system, "bm25")

    def retriever(self, name: str):
        """The retriever `name` (one of `retrievers()`), built on first use: BM25 indexes the corpus, the fused
        one reads the dense weight dev chose."""
        if name not in self._retrievers:
            from ..data.bm25 import BM25
            from ..retrieval.fusion import FusedRetriever

            if name == "bm25":
                self._retrievers[name] = BM25(self.ds.corpus)
            elif name == self.system:
                self._retrievers[name] = self.dense
            else:
                weight = fusion_weight(self.fusion_json, self.ds.name, self.system)
                self._retrievers[name] = FusedRetriever(self.dense, self.retriever("bm25"), weight)
        return self._retrievers[name]

    def check(self, question: str, k: int, retriever: str | None, order: str) -> str:
        """The retriever to use; bad input is one line, before any work."""
        retriever = retriever or f"{self.system}+bm25"
        if not question.strip():
            raise DataError("the question is empty")
        if retriever not in self.retrievers():
            raise DataError(f"retriever {retriever!r}: this index offers {', '.join(self.retrievers())}")
        if order not in ORDERS:
            raise DataError(f"order {order!r}: one of {', '.join(ORDERS)}")
        if not 1 <= k <= len(self.meta["ids"]):
            raise DataError(f"k {k} outside 1..{len(self.meta['ids'])} (the corpus' size)")
        return retriever

    def ask(self, question: str, k: int = 3, retriever: str | None = None, order: str = "question-first",
            max_new_tokens: int = RAG.max_new_tokens, bf16: bool = True, prompt: str = "plain", shots=None) -> Answer:
        retriever = self.check(question, k, retriever, order)
        if self.mode == "span":
            return self._ask_span(question, k, retriever, bf16)
        return self._ask_generate(question, k, retriever, order, max_new_tokens, bf16, prompt, shots)

    def _ask_span(self, question: str, k: int, retriever: str, bf16: bool) -> Answer:
        """One forward of the truncated LLM over the question (as the queries store holds it); the tuner's layers
        retrieve, the reader's layers read the passages' stored states."""
        t0 = time.perf_counter()
        ids, truncated = self.llm.tokenize([self.template.format_query(question)], self.query_max_length)
        states, mask = self.llm.forward(ids, self.layers)
        states = {layer: x[:, : int(mask.sum())] for layer, x in states.items()}  # the batch's width is padded
        t1 = time.perf_counter()
        tuner_states = {layer: states[layer] for layer in self.tuner.cfg.layers}
        depth = self.reranker.depth(retriever, k)
        run = self._retrieve(question, tuner_states, retriever, depth, bf16)
        t2 = time.perf_counter()
        run = self.reranker.rerank(retriever, states, run, bf16)
        passages = ranked_hits(run, self.ds, k)
        t_rerank = time.perf_counter()
        read = self.span.read({layer: states[layer] for layer in self.span.layers}, [p.id for p in passages])
        t3 = time.perf_counter()
        notes = [f"the question was truncated at {self.query_max_length} tokens (the stores' query length)"
                 ] if truncated else []
        ms = {"forward": (t1 - t0) * 1e3, "retrieve": (t2 - t1) * 1e3,
              **({"rerank": (t_rerank - t2) * 1e3} if self.reranker.active(retriever) else {}),
              "read": (t3 - t_rerank) * 1e3, "total": (t3 - t0) * 1e3}
        return Answer(question, read[0].text if read else "", passages, retriever, "span", ms, read[0] if read
                      else None, notes)

    def _ask_generate(self, question: str, k: int, retriever: str, order: str, max_new_tokens: int, bf16: bool,
                      prompt: str, shots) -> Answer:
        from .reader import span_sequences

        t0 = time.perf_counter()
        prefix_ids = self.reader.ids(self.template.format_query(question), True)
        # the stores truncate a query at query_max_length tokens: the vector reads the same tokens
        layers = sorted(set(self.tuner.cfg.layers) | set(self.reranker.layers))
        states, cache = self.reader.prefix_forward(prefix_ids, layers)
        states = {layer: s[:, : self.query_max_length] for layer, s in states.items()}
        t1 = time.perf_counter()
        run = self._retrieve(question, {layer: states[layer] for layer in self.tuner.cfg.layers}, retriever,
                             self.reranker.depth(retriever, k), bf16)
        t_retrieve = time.perf_counter()
        passages = ranked_hits(self.reranker.rerank(retriever, states, run, bf16), self.ds, k)
        t2 = time.perf_counter()
        reranked = {"rerank": (t2 - t_retrieve) * 1e3} if self.reranker.active(retriever) else {}
        few = shots if prompt == "few-shot" else None
        order = "passages-first" if few else order
        parts = build_prompt(question, passages, self.template, self.reader.tail, order, few, self.reader.end_of_turn)
        constraints = [span_sequences(self.reader.tokenizer, passages)] if prompt == "constrained" else None
        if order == "question-first" and constraints is None:  # the prefix's cache carries on: only the rest is run
            rest_ids = self.reader.ids(parts.rest, False)
            answer = self.reader.continue_answer(prefix_ids, rest_ids, cache, max_new_tokens)
        else:  # the passages come first (the question is computed again), or the decoding is constrained
            answer = self.reader.generate([parts], max_new_tokens, batch_size=1, progress=False,
                                          constraints=constraints)[0][0]
        t3 = time.perf_counter()
        notes = [f"the query vector read the question's first {self.query_max_length} tokens (the stores' length)"
                 ] if len(prefix_ids) > self.query_max_length else []
        ms = {"forward": (t1 - t0) * 1e3, "retrieve": (t_retrieve - t1) * 1e3, **reranked,
              "generate": (t3 - t2) * 1e3, "total": (t3 - t0) * 1e3}
        return Answer(question, answer, passages, retriever, f"{prompt}, {order}", ms, None, notes)

    def _retrieve(self, question: str, states, retriever: str, k: int, bf16: bool) -> dict[str, float]:
        """The question's run: the dense side reads the query vector of the question's states (no second forward)."""
        queries = {"q": question}
        if retriever == "bm25":
            return self.retriever(retriever).search(queries, k)["q"]
        return self.retriever(retriever).search(queries, k, vectors=query_vector(self.tuner, states, bf16))["q"]
