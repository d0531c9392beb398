"""Stage one: the frozen LLM, the extraction that runs it once over a corpus, and the activation store it writes and
every later part reads."""
