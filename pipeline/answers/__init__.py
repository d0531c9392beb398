"""The memory: reading passages for answers (the generative reader and the span reader), `lmort ask` and the rag
protocol."""
