"""The data sets: BEIR tables, fetching, preparation (BM25 hard negatives), SQuAD and its answers, the tiny set."""
