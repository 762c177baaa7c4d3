# The two commands a new user needs: `make demo` and `make test`.
# Both create .venv and install the project from this checkout; nothing else is needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: demo test lint typecheck fuzz soak bench docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/secure-kv demo

lint: $(STAMP)
	$(BIN)/ruff check secure_kv tests bench scripts conftest.py
	$(BIN)/ruff format --check secure_kv tests bench scripts conftest.py
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# docs/cli.md from the commands' --help (tests/test_cli_reference.py fails when it drifts).
docs: $(STAMP)
	$(BIN)/python scripts/cli_reference.py

fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q -m "not slow" tests/test_properties.py

# Worker processes on SQLite, PostgreSQL (direct and through a PgBouncer it starts) and
# MariaDB while workers are SIGKILLed, connections terminated and PgBouncer restarted;
# prints ops/s, p50/p99 latency, faults survived, and fails on any broken invariant
# (tests/scale/soak.py). SOAK_ARGS="--seconds 600 --workers 16" for a longer run.
soak: $(STAMP)
	$(BIN)/python -m tests.scale.soak $(SOAK_ARGS)

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# The full suite takes 10-15 minutes on a 2-core machine (BENCH_ARGS=--quick: a few);
# suite.py writes bench/results.json, the tables in docs/performance.md and
# docs/performance.png; the rotation and audit benchmarks print their ratios; bench_cli.py
# times the command itself (start-up, audit report and list over 100,000 records);
# bench_scaling.py writes bench/scaling.json and docs/scaling.png (ops/s for 1-8
# processes, ~4 minutes).
bench: $(BENCH_STAMP)
	$(BIN)/python bench/suite.py $(BENCH_ARGS)
	$(BIN)/python bench/bench_rotation.py
	$(BIN)/python bench/bench_audit.py
	$(BIN)/python bench/bench_cli.py
	$(BIN)/python bench/bench_scaling.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
