"""Heads that read stored token states with interaction: the shared blocks and the reranker."""
