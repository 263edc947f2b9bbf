# Two commands do all the set-up on a fresh machine (Python 3.11 + Node):
#   make run   - Azurite in memory + the service on http://localhost:7071 (no Azure account needed)
#   make test  - the whole test suite (starts and stops what it needs)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# Infrastructure checkers (checkov, pycep) pin many packages: they live in their own venv.
IAC_VENV := .venv-iac

.PHONY: run test lint deps browser clean bench

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --ignore-scripts
	touch $@

$(IAC_VENV)/.installed: requirements-iac.txt
	rm -rf $(IAC_VENV)
	$(PYTHON) -m venv $(IAC_VENV)
	$(IAC_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(IAC_VENV)/bin/python -m pip install --quiet -r requirements-iac.txt
	touch $@

deps: $(VENV)/.installed node_modules/.installed $(IAC_VENV)/.installed

# Debian's chromium for the browser tests, installed when missing and allowed (tools/ensure_chromium.sh).
browser:
	@sh tools/ensure_chromium.sh

run: deps
	$(PY) -m tools.run_local

# ruff and mypy (pyproject.toml), then every test: a lint finding fails `make test` like a failing test.
lint: deps
	$(PY) -m ruff check .
	$(PY) -m mypy

test: deps browser lint
	$(PY) -m pytest $(PYTEST_ARGS)

# Cost benchmark (not part of `make test`): latency, req/s and Table/Key Vault/Microsoft calls per operation,
# and the cold-start import cost; `make bench BENCH_ARGS=--load`: concurrent HTTP clients. Results and how to read them: docs/performance.md.
bench: deps
	$(PY) -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(IAC_VENV) infra/hooks/.venv node_modules .pytest_cache test-output
