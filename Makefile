# Two commands on a fresh machine: `make run` (the demo) and `make test` (the whole suite).
# Both create .venv from pyproject.toml and install the project into it first.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
RUN_STAMP := $(VENV)/.installed-run-stamp
DEMO   ?= snips-demo
PREFECT_PORT ?= 4200

# A cold ephemeral Prefect server needs more than the default 20 s on 2 cores.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PREFECT_LOGGING_EXTRA_LOGGERS ?= nluflow
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
# Use a running `make server` when there is one, else Prefect starts an ephemeral server.
ifeq ($(PREFECT_API_URL),)
  ifneq ($(shell curl -sf -m 2 http://127.0.0.1:$(PREFECT_PORT)/api/health 2>/dev/null),)
    export PREFECT_API_URL := http://127.0.0.1:$(PREFECT_PORT)/api
  endif
endif

.PHONY: install run test lint typecheck unit browser server blocks bench clean

# Two stamps: `make run` installs what the demo needs (`.`: no torch, no test tools); `make test` and the
# other developer targets install everything (`.[dev]`), which also satisfies the demo's stamp.
$(RUN_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	@touch $(RUN_STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP) $(RUN_STAMP)

install: $(STAMP)

run: $(RUN_STAMP)
	$(BIN)/nluflow demo
	$(BIN)/nluflow models show --project $(DEMO)
	$(BIN)/nluflow audit verify --project $(DEMO)

# The whole suite, on 2 worker processes (pytest-xdist; a test file stays on one worker, so its module
# fixtures are made once), in the random order of seed TEST_SEED (pytest-randomly prints it). A fixed seed
# keeps CI reproducible: a failure replays with the same order, and the order is still not the file order.
# `make test TEST_SEED=default` draws a new order, TEST_SEED=last replays the last one; TEST_JOBS=0 runs in
# one process.
TEST_SEED ?= 16
TEST_JOBS ?= 2
test: $(STAMP) lint typecheck browser
	$(BIN)/python -m pytest -p randomly --randomly-seed=$(TEST_SEED) -n $(TEST_JOBS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The fast tier (under a minute on 2 cores): every test not marked `slow`, i.e. no Prefect server, no real
# S3 server, no fuzzing, no subprocess-heavy or benchmark-sized test (tests/conftest.py says which kinds),
# in a new random order each time (the header prints the seed: `pytest -p randomly --randomly-seed=N`).
unit: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -n $(TEST_JOBS)

# Debian's chromium for the Label Studio UI test (tests/e2e): installed here, never from a test fixture.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  test "$$(id -u)" = 0 || { echo "make browser: chromium is missing; run 'sudo apt-get install chromium'" >&2; exit 1; }; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

blocks: $(RUN_STAMP)
	$(BIN)/prefect block register -m blocks
	$(BIN)/nluflow blocks create $(BLOCKS_OPTS)

server: $(RUN_STAMP)
	$(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

clean:
	rm -rf .nluflow .mypy_cache .ruff_cache .pytest_cache
