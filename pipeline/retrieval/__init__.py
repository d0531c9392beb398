"""Searching: FAISS indexes, run files, the baselines (BM25, MiniLM, raw layers) and fusion with BM25."""
