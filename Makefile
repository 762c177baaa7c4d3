# The two commands a new user needs: `make demo` and `make test`.
# Both create a venv and install the project from this checkout; nothing else is needed.
#
# PYTHON picks the interpreter (3.11, 3.12 or 3.13); each gets its own venv, so
#   make test PYTHON=~/.pyenv/versions/3.12.1/bin/python
# builds and uses .venv-3.12 and leaves the default .venv alone.
PYTHON ?= python3
PY_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
VENV ?= $(if $(filter command line environment,$(origin PYTHON)),.venv-$(PY_VERSION),.venv)
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
# The tests a second and third Python version run in .ci/run: the Dify SDK (whose version
# depends on the Python), the store, the envelope, the CLI and the example plugin.
SUBSET := tests/integrations/test_dify.py tests/store/test_store.py tests/test_envelope.py \
  tests/cli/test_cli.py tests/docs/test_examples.py

.PHONY: demo test test-subset lint typecheck fuzz soak bench wheel-check docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/secure-kv demo

lint: $(STAMP)
	$(BIN)/ruff check secure_kv tests bench examples .ci scripts conftest.py
	$(BIN)/ruff format --check secure_kv tests bench examples .ci scripts conftest.py
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# docs/cli.md from the commands' --help (tests/docs/test_cli_reference.py fails when it drifts).
docs: $(STAMP)
	$(BIN)/python scripts/cli_reference.py

# The named subset, on whatever PYTHON says (see SUBSET above).
test-subset: $(STAMP)
	$(BIN)/python -m pytest -q $(SUBSET) $(PYTEST_ARGS)

# Build the sdist and the wheel, twine-check them, install the wheel into a fresh venv and
# run the CLI from there (.ci/check_wheel.py says what is checked).
wheel-check: $(STAMP)
	$(BIN)/python .ci/check_wheel.py --python $(PYTHON)

FUZZ_STAMP := $(VENV)/.fuzz-installed
FUZZ_SECONDS ?= 300

$(FUZZ_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,fuzz]'
	touch $(FUZZ_STAMP)

# The adversarial suite and the properties with thousands of examples each (about 30-60
# minutes on 2 cores), then atheris on the stored-bytes parsers for FUZZ_SECONDS.
fuzz: $(FUZZ_STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q -m "not slow" tests/store/test_properties.py tests/adversarial
	$(BIN)/python tests/fuzz/fuzz_parsers.py -max_total_time=$(FUZZ_SECONDS)

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
# docs/performance.png; the floors, rotation and audit benchmarks print their ratios;
# bench_cli.py times the command itself (start-up, audit report and list over 100,000 records);
# bench_scaling.py writes bench/scaling.json and docs/scaling.png (ops/s for 1-8
# processes, ~4 minutes); bench_report_html.py measures the HTML audit report at 100,000
# records; bench_providers.py writes bench/providers.json (env, file, keyring, pkcs11,
# aws-kms).
bench: $(BENCH_STAMP)
	$(BIN)/python bench/suite.py $(BENCH_ARGS)
	$(BIN)/python bench/bench_floors.py
	$(BIN)/python bench/bench_rotation.py
	$(BIN)/python bench/bench_audit.py
	$(BIN)/python bench/bench_cli.py
	$(BIN)/python bench/bench_scaling.py
	$(BIN)/python bench/bench_report_html.py
	$(BIN)/python bench/bench_providers.py

clean:
	rm -rf .venv .venv-3.* .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
