# Two commands: `make run` (set up and serve) and `make test` (set up and pass the tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-scale lint typecheck check clean install bench bench-growth bench-gateway fuzz chaos

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "broker needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/broker serve

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# Scale-out tests (docs/operations.md), too slow for `make test`: a private primary with a streaming
# standby (read replica with read-your-writes), then the OAuth, user, race and metrics tests with the
# app under test going through PgBouncer in transaction mode (installed from Debian when missing).
SCALE_SUITE := tests/test_oauth_*.py tests/test_users*.py tests/test_client_cache.py tests/test_replicas.py \
	tests/test_metrics.py tests/test_scale.py

test-scale: $(STAMP)
	bash tests/install-scale-tools.sh
	BROKER_TEST_SCALE=1 $(PY) -m pytest tests/test_scale.py $(PYTEST_ARGS)
	BROKER_TEST_PGBOUNCER=1 $(PY) -m pytest $(SCALE_SUITE) $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy broker tests

check: lint typecheck test

# Benchmarks (docs/performance.md): broker under wrk beside pgbench's floor, measured in the same run.
# BENCH_SECONDS, BENCH_CONNECTIONS, BENCH_TOKENS, BENCH_SCENARIOS and BENCH_ARGS tune a run.
bench: $(STAMP)
	bench/install-tools.sh
	$(PY) -m bench.run $(BENCH_ARGS)

bench-growth: $(STAMP)
	bench/install-tools.sh
	$(PY) -m bench.run --growth $(BENCH_ARGS)

# Gateway mode (docs/gateway.md): latency added by the gateway versus calling its upstream directly.
bench-gateway: $(STAMP)
	bench/install-tools.sh
	$(PY) -m bench.gateway $(BENCH_ARGS)

# Long reliability runs (docs/security.md): schemathesis with 1 000 examples per operation, and the
# fault tests at full length (5 s database outage, 5 SIGKILL rounds, replicas). Figures are printed.
fuzz: $(STAMP)
	BROKER_FUZZ_EXAMPLES=1000 $(PY) -m pytest tests/test_fuzz.py -s --timeout=0 $(PYTEST_ARGS)

chaos: $(STAMP)
	BROKER_CHAOS_OUTAGE_SECONDS=5 BROKER_CHAOS_ROUNDS=5 BROKER_CHAOS_PARALLEL=50 BROKER_CHAOS_REFRESH_ROUNDS=20 \
		$(PY) -m pytest -s --timeout=900 tests/test_database_outage.py tests/test_crash_recovery.py \
		tests/test_oauth_concurrency.py tests/test_replicas.py tests/test_auth_throttle.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .broker build *.egg-info
