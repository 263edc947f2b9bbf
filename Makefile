# Two commands do all the set-up on a fresh machine (Python 3.11 + Node):
#   make run   - Azurite in memory + the service on http://localhost:7071 (no Azure account needed)
#   make test  - the whole test suite (starts and stops what it needs)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test deps clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --ignore-scripts
	touch $@

deps: $(VENV)/.installed node_modules/.installed

run: deps
	$(PY) -m tools.run_local

test: deps
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) node_modules .pytest_cache test-output
