"""`lmort ask`: the LLM answers from its own memory. One forward of the question gives the query vector (the tuner
on the LLM's own states) and either

- span (where the configuration trained a span reader): the question's states at the reader's layers, read
  against the retrieved passages' states from the corpus store: no LLM forward over a passage; or
- generate: the key/value cache the full LLM's answer is generated from (question-first), as before."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..common.config import RAG
from ..common.errors import DataError
from ..data.beir import Prepared
from ..retrieval.hits import Hit, ranked_hits
from .reader import ORDERS, Reader, build_prompt, query_vector
from .rerank_step import RerankStep, open_prepared

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

    @property
    def passage(self) -> Hit | None:
        """The passage the answer was read from (the span reader's; None for a generated answer)."""
        if self.source is None:
            return None
        return next((p for p in self.passages if p.id == self.source.doc_id), None)

    def to_dict(self) -> dict:
        """As Hugging Face's question-answering pipeline answers ({answer, score, start, end}), with the passage
        the span was read from (`context[start:end]` is the answer), every passage read and the ms per part."""
        span = self.source
        return {"question": self.question, "answer": self.answer,
                "score": span.score if span else None, "start": span.start if span else None,
                "end": span.end if span else None, "context": span.context if span else None,
                "passage": asdict(self.passage) if self.passage else None,
                "passages": [asdict(p) for p in self.passages], "retriever": self.retriever,
                "reader": "span" if span else "generate", "order": self.order, "ms": self.ms, "notes": self.notes}


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


class Memory:
    """An index of a configuration with what it reads, all named in the index's meta.json (tuner/encoders.py
    `index_piece`): its tuner, the prepared corpus, the stores, BM25 over the same corpus, and, in the
    configuration's folder, the fusion weight dev chose, the span reader and the reranker. Readers: the span reader
    over the corpus store where the configuration trained one (`reader` "span" or None), else the full LLM
    generating (`reader` "generate", or None with `notice` saying why); `ask` may pick either per question."""

    def __init__(self, index_dir: Path, ds: Prepared | None = None, model: str | None = None,
                 fusion_json: Path | None = None, reader: str | None = None, readers_root: Path | None = None,
                 stores: Path | None = None, rerank: bool | None = None):
        from ..common.quiet import quiet_libraries
        from ..tuner.encoders import TunerEncoder, index_piece, open_index

        quiet_libraries()
        if reader not in (None, *READER_CHOICES):
            raise DataError(f"reader {reader!r}: one of {', '.join(READER_CHOICES)}")
        self.dense, self.meta = open_index(index_dir)  # checks the tuner against the index's model and template
        if not isinstance(self.dense.encode, TunerEncoder):
            raise DataError(f"{index_dir}: an adapter's index; `lmort ask` reads a tuner's (its LLM states feed the "
                            "reader)")
        self.system = self.meta["system"]
        if model is not None and model != self.meta["model"]:
            raise DataError(f"{index_dir}: the index was built with {self.meta['model']}, not {model}")
        ds = ds or open_prepared(index_dir, self.meta)
        if self.meta.get("data") not in (None, ds.name):
            raise DataError(f"{index_dir}: the index holds {self.meta['data']}, not {ds.name}")
        if set(self.meta["ids"]) != set(ds.corpus):
            raise DataError(f"{index_dir}: its {len(self.meta['ids'])} documents are not {ds.name}'s corpus")
        self.tuner = self.dense.encode.tuner
        self.template, self.query_max_length = self.dense.encode.template, self.dense.encode.max_length
        self.ds = ds
        self.root = index_piece(index_dir, self.meta, "configuration")  # None: an index of no configuration
        stores = Path(stores) if stores else index_piece(index_dir, self.meta, "stores")
        self.fusion_json = fusion_json or (self.root / "fusion" / "fusion.json" if self.root else None)
        readers = readers_root or (self.root / "reader" if self.root else None)
        reader_dir = Path(readers) / ds.name / "best" if readers else None
        trained = reader_dir is not None and (reader_dir / "reader.json").is_file()
        self.notice = None
        if reader == "span" and not trained:
            raise DataError(f"{reader_dir or index_dir}: no span reader for this configuration (run `lmort "
                            "train-reader`, or ask with --reader generate)")
        self.mode = reader or ("span" if trained else "generate")
        if reader is None and self.mode == "generate":
            self.notice = (f"no span reader trained for this configuration ({reader_dir or index_dir}): the LLM "
                           "generates")
        if (trained or reader == "span" or rerank) and stores is None:
            raise DataError(f"{index_dir}/meta.json: names no stores (the span reader and reranker read them): "
                            "rebuild the index with `lmort index --stores`")
        self._retrievers: dict = {}
        self._generator = self._llm = None
        self.reranker = RerankStep.open(self.root, stores, ds, rerank)
        self.span, self.passages_held = None, False
        self.layers = sorted(set(self.tuner.cfg.layers) | set(self.reranker.layers))
        if trained and self.mode == "span":
            self._load_span(reader_dir, stores)

    @property
    def dtype(self):
        from ..activations.llm import default_device
        from ..common.precision import resolve_compute_dtype

        return resolve_compute_dtype(self.meta.get("compute_dtype", "float32"), default_device())

    @property
    def reader(self) -> Reader:
        """The full LLM that generates (loaded on first use: a span memory asked to generate loads it then)."""
        if self._generator is None:
            self._generator = Reader(self.meta["model"], dtype=self.dtype)
        return self._generator

    def _load_span(self, reader_dir: Path, stores: Path) -> None:
        from transformers import AutoTokenizer

        from ..activations.llm import resolve_model
        from ..activations.store import ActivationStore
        from .span_read import StoredPassageReader

        corpus = ActivationStore(stores / self.ds.name / "corpus.zarr")
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(self.meta["model"])[0])
        self.span = StoredPassageReader(reader_dir, corpus, self.ds, tokenizer)
        self.layers = sorted(set(self.layers) | set(self.span.layers))

    def passages_fit(self, memory_gb: float) -> bool:
        """Whether the passages' layers the span reader reads fit `memory_gb` (GB); else they stream from Zarr."""
        return self.span is not None and self.span.corpus.nbytes(self.span.layers) <= memory_gb * 1e9

    def hold_passages(self, memory_gb: float) -> bool:
        """Load the passages' stored layers the span reader reads into memory where they fit `memory_gb` (GB): its
        reads then skip Zarr's decoding (on scifact, 22 ms to read three passages against 53). Safe while requests
        are answered: each layer replaces its Zarr array in one assignment once it is read whole."""
        if not self.passages_fit(memory_gb):
            return False
        self.span.corpus.load(self.span.layers)
        self.passages_held = True
        return True

    def prompt(self) -> tuple[str, list]:
        """The generative reader's prompt style and shots dev chose for this set (plain without a rag stage)."""
        return dev_prompt(self.root / "rag" / "rag.json", self.ds.name) if self.root else ("plain", [])

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
            max_new_tokens: int = RAG.max_new_tokens, bf16: bool = True, prompt: str | None = None, shots=None,
            reader: str | None = None) -> Answer:
        """Retrieve `k` passages for `question` and read them: `reader` "span" or "generate" [the memory's mode];
        `prompt` and `shots`: the generative reader's [as dev chose, `prompt()`]."""
        retriever = self.check(question, k, retriever, order)
        reader = reader or self.mode
        if reader not in READER_CHOICES:
            raise DataError(f"reader {reader!r}: one of {', '.join(READER_CHOICES)}")
        if reader == "span":
            if self.span is None:
                raise DataError("no span reader for this configuration (run `lmort train-reader`, or ask with "
                                "reader generate)")
            return self._ask_span(question, k, retriever, bf16)
        if prompt is None:
            prompt, shots = self.prompt()
        return self._ask_generate(question, k, retriever, order, max_new_tokens, bf16, prompt, shots)

    @property
    def llm(self):
        """The frozen LLM cut after the deepest layer the tuner, reranker or span reader reads (built on first use)."""
        if self._llm is None:
            from ..activations.llm import FrozenLLM

            self._llm = FrozenLLM(self.meta["model"], max_layer=max(self.layers), dtype=self.dtype)
        return self._llm

    def _find(self, question: str, k: int, retriever: str, bf16: bool) -> tuple[dict, list[Hit], dict, bool]:
        """One forward of the truncated LLM over the question (as the queries store holds it); the tuner's layers
        retrieve, the reranker's rerank: its states, the top `k` passages, ms per part, and whether it was cut."""
        t0 = time.perf_counter()
        ids, truncated = self.llm.tokenize([self.template.format_query(question)], self.query_max_length)
        states, mask = self.llm.forward(ids, self.layers)
        states = {layer: x[:, : int(mask.sum())] for layer, x in states.items()}  # the batch's width is padded
        t1 = time.perf_counter()
        tuner_states = {layer: states[layer] for layer in self.tuner.cfg.layers}
        run = self._retrieve(question, tuner_states, retriever, self.reranker.depth(retriever, k), bf16)
        t2 = time.perf_counter()
        passages = ranked_hits(self.reranker.rerank(retriever, states, run, bf16), self.ds, k)
        t3 = time.perf_counter()
        ms = {"forward": (t1 - t0) * 1e3, "retrieve": (t2 - t1) * 1e3,
              **({"rerank": (t3 - t2) * 1e3} if self.reranker.active(retriever) else {})}
        return states, passages, ms, truncated

    def search(self, question: str, k: int = 10, retriever: str | None = None, bf16: bool = True
               ) -> tuple[list[Hit], dict[str, float]]:
        """The top `k` passages for new text (reranked where dev chose to) and the ms per part."""
        retriever = self.check(question, k, retriever, ORDERS[0])
        t0 = time.perf_counter()
        _, passages, ms, _ = self._find(question, k, retriever, bf16)
        return passages, {**ms, "total": (time.perf_counter() - t0) * 1e3}

    def _ask_span(self, question: str, k: int, retriever: str, bf16: bool) -> Answer:
        """The question's one forward retrieves (`_find`); the reader's layers read the passages' stored states."""
        t0 = time.perf_counter()
        states, passages, ms, truncated = self._find(question, k, retriever, bf16)
        t1 = time.perf_counter()
        read = self.span.read({layer: states[layer] for layer in self.span.layers}, [p.id for p in passages])
        t2 = time.perf_counter()
        notes = [f"the question was truncated at {self.query_max_length} tokens (the stores' query length)"
                 ] if truncated else []
        ms = {**ms, "read": (t2 - t1) * 1e3, "total": (t2 - t0) * 1e3}
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
