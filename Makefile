# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both create .venv from the lock file when it is missing or older than the lock.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORKDIR ?= runs/demo

.PHONY: demo test test-fast lint lock bench report clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kubeloop demo --workdir $(WORKDIR)

# Layers and cycles first (pyproject.toml [tool.importlinter]), then the tests.
test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check kubeloop models components pipelines tests bench

bench: $(STAMP)
	$(BIN)/python bench/features_bench.py

# Render the README's results and benchmark sections from the result files. A finished
# `make demo` (WORKDIR/report.json) is first copied to bench/results/demo_report.json, the
# committed source; bench/results/*.json are written by the bench scripts themselves.
report: $(STAMP)
	$(BIN)/kubeloop report $(if $(wildcard $(WORKDIR)/report.json),--from-run $(WORKDIR)/report.json)

# Re-resolve the lock from pyproject's ranges (run by hand when dependencies change).
lock:
	rm -rf /tmp/kubeloop-lock && $(PYTHON) -m venv /tmp/kubeloop-lock
	/tmp/kubeloop-lock/bin/pip install --quiet --upgrade pip
	/tmp/kubeloop-lock/bin/pip install --quiet -e ".[dev]"
	/tmp/kubeloop-lock/bin/pip freeze --exclude-editable | grep -v '^-e' > requirements.lock

clean:
	rm -rf $(VENV) runs
