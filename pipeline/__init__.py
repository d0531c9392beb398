"""LMORT's library, in the card's two stages and what they serve (each layer imports only the ones above it):

    common/       errors, atomic writes, the typed configuration and params, metrics, tables
    data/         BEIR tables, fetching, preparation (BM25 hard negatives), SQuAD answers
    activations/  stage one: the frozen LLM, the extraction, the activation store (the one writer of the cache)
    retrieval/    FAISS indexes, run files, baselines, fusion with BM25
    tuner/        stage two: the tuner, its training from the stores alone, layer analysis, sweeps, indexing
    answers/      the memory: the readers, `lmort ask`, the rag protocol
    evaluation/   REPORT.md and the comparison across configurations

The click commands (stages/) are thin shells over these modules."""
