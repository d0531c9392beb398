"""What `Memory` (ask.py) opens beside its index: the prepared set the index names, and the rerank step between
retrieval and reading (the configuration's reranker, its choices on dev, the passages' stored encodings)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..common.errors import DataError
from ..data.beir import Prepared

log = logging.getLogger(__name__)


def open_prepared(index_dir: Path, meta: dict) -> Prepared:
    """The prepared set an index's meta.json names (its folder, relative to the index; else prepared by name)."""
    from ..data.beir import load_prepared
    from ..data.prepare import ensure_prepared
    from ..tuner.encoders import index_piece

    folder = index_piece(index_dir, meta, "prepared")
    if folder is not None:
        return load_prepared(folder)
    if not meta.get("data"):
        raise DataError(f"{index_dir}/meta.json names no data set: pass the prepared set")
    return ensure_prepared(meta["data"])


class RerankStep:
    """The reranker between retrieval and reading, where the configuration trained one (cache/<name>/reranker): the
    question's own states against the candidates' stored states, at the depth and weight dev chose for the retriever
    (cache/<name>/rerank/rerank.json). A retriever dev left guarded, or chose nothing for, is not reranked unless
    `force` (then: dev's depth, or the top 100, by the reranker's score alone)."""

    def __init__(self, reranker=None, passages=None, choices: dict | None = None, force: bool = False):
        self.reranker, self.passages, self.choices, self.force = reranker, passages, choices or {}, force
        self.layers = list(reranker.cfg.layers) if reranker is not None else []

    @classmethod
    def open(cls, root: Path | None, stores: Path | None, ds: Prepared, rerank: bool | None) -> RerankStep:
        """`root`: the configuration's folder (None: an index of no configuration, never reranked)."""
        if root is None:
            if rerank:
                raise DataError("the index names no configuration, so no reranker (rebuild it with `lmort index "
                                "--configuration cache/<name>`, or search with --no-rerank)")
            return cls()
        chosen = Path(root) / "reranker" / "chosen.json"
        trained = chosen.is_file() and bool(json.loads(chosen.read_text()).get("design"))
        if rerank is False or (rerank is None and not trained):
            return cls()
        if not trained:
            raise DataError(f"{chosen}: no reranker for this configuration (run `lmort train-reranker`, or ask "
                            "with --no-rerank)")
        if stores is None:
            raise DataError("the index names no stores, which the reranker reads: rebuild it with `lmort index "
                            "--stores`, or ask with --no-rerank")
        from ..activations.store import ActivationStore, shared_fingerprint
        from ..interaction.rerank import EncodedPassages
        from ..interaction.rerank_runs import chosen_reranker, encoded_path

        corpus = ActivationStore(Path(stores) / ds.name / "corpus.zarr")
        reranker = chosen_reranker(chosen.parent, shared_fingerprint(corpus.fingerprint))
        record = Path(root) / "rerank" / "rerank.json"
        choices = (json.loads(record.read_text()).get(ds.name) or {}).get("systems", {}) if record.is_file() else {}
        passages = EncodedPassages(reranker, corpus)
        saved = encoded_path(Path(root) / "rerank", ds.name)
        if saved.is_file() and not passages.load_saved(saved):
            log.info(f"{saved}: made by another reranker or store; passages are encoded as they are retrieved")
        return cls(reranker, passages, choices, bool(rerank))

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
