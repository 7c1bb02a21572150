# Everything bootstraps its own virtual environment from pyproject.toml: a fresh machine
# needs only Python 3.11+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit chaos bench-engine bench-http bench-sdk bench-state bench-failover bench-gateway bench-locust bench bench-tools proto clean

$(STAMP): pyproject.toml sdk/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' -e ./sdk
	touch $(STAMP)

# The service alone, for `make run`: none of the test tools (mypy, grpcio-tools, ...).
RUN_STAMP := $(VENV)/.installed-run
$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(RUN_STAMP)

# The benchmarks' own tools (limits, locust, matplotlib) stay out of the test setup.
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]' -e ./sdk
	touch $(BENCH_STAMP)

## run: the service on 127.0.0.1:8420 with an embedded Valkey (data in ./data)
run: $(RUN_STAMP)
	$(BIN)/lockgate-server

## test: lint, type-check, then the whole default suite (real Valkey, no network)
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check service sdk tests loadtests
	$(BIN)/ruff format --check service sdk tests loadtests

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

## chaos: the chaos tests for longer (kills and pauses of the node, or of the node serving beside
# a standby, and of Valkey while clients lock and count); the default suite runs each for 20 s.
# `make chaos CHAOS_SECONDS=600` for a soak.
CHAOS_SECONDS ?= 180
chaos: $(STAMP)
	LOCKGATE_CHAOS_SECONDS=$(CHAOS_SECONDS) $(BIN)/pytest -q -s tests/chaos

# bench-tools: wrk, and etcd-server for the etcd baseline (skipped if it cannot be installed),
# from apt when missing and we are root.
bench-tools:
	@if ! command -v wrk >/dev/null 2>&1 || ! command -v etcd >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq >/dev/null || true; \
			command -v wrk >/dev/null 2>&1 || apt-get install -y -qq wrk >/dev/null; \
			command -v etcd >/dev/null 2>&1 || apt-get install -y -qq etcd-server >/dev/null \
				|| echo "etcd-server could not be installed: the etcd baseline will be skipped"; \
		fi; \
	fi
	@command -v wrk >/dev/null 2>&1 || { echo "wrk is missing: apt-get install wrk (as root)" >&2; exit 1; }

## bench-engine: the engine against redis-py's Lock and limits, same Valkey, same run
bench-engine: $(BENCH_STAMP)
	$(BIN)/python -m loadtests.bench_engine

## bench-http: wrk against the HTTP server vs bare ASGI, Litestar, redis-py, limits and etcd, same Valkey
# `make bench-http BENCH_HTTP_ARGS=--quick` for a 3 s-per-scenario run.
bench-http: $(BENCH_STAMP) bench-tools
	$(BIN)/python -m loadtests.bench_http $(BENCH_HTTP_ARGS)

## bench-sdk: AsyncClient through the HTTP server vs redis-py's Lock and limits, same Valkey
bench-sdk: $(BENCH_STAMP)
	$(BIN)/python -m loadtests.bench_sdk

## bench-failover: how soon a standby serves after kill -9 or SIGTERM of the active node
bench-failover: $(BENCH_STAMP)
	$(BIN)/python -m loadtests.bench_failover

## bench-state: bytes per object, snapshot pause, recovery of 1.2 million objects
bench-state: $(BENCH_STAMP)
	$(BIN)/python -m loadtests.bench_state

## bench-gateway: the gateway check endpoint (wrk) and the Envoy RLS gRPC API vs limits, same Valkey
# `make bench-gateway BENCH_GATEWAY_ARGS=--quick` for a short run.
bench-gateway: $(BENCH_STAMP) bench-tools
	$(BIN)/python -m loadtests.bench_gateway $(BENCH_GATEWAY_ARGS)

## bench-locust: the Locust scenarios (gateway mix, job runners, 8 permits for 200 contenders, counters),
## headless, 100 users and 30 s each, against a fresh server and Valkey; fails on any correctness violation.
# `make bench-locust BENCH_LOCUST_ARGS=--quick` for 10 s per scenario.
bench-locust: $(BENCH_STAMP)
	$(BIN)/python -m loadtests.scenarios.run $(BENCH_LOCUST_ARGS)

## bench: every benchmark above but bench-failover, plus the Locust gateway mix vs limits, the 1..256 concurrency sweep, batch size
## against load and the shards x clients sweep, in one run; writes loadtests/results/REPORT.md and its plots.
# `make bench BENCH_ARGS=--quick` takes about 5 minutes, the full run about 15.
bench: $(BENCH_STAMP) bench-tools
	$(BIN)/python -m loadtests.report $(BENCH_ARGS)

## proto: regenerate the Envoy rate limit service modules from service/lockgate_server/gateway/proto/**/*.proto
PROTO_DIR := service/lockgate_server/gateway/proto
proto: $(STAMP)
	cd service && ../$(BIN)/python -m grpc_tools.protoc -I . \
		-I "$$(../$(BIN)/python -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')" \
		--python_out=. --pyi_out=. $$(cd .. && find $(PROTO_DIR) -name '*.proto' | sed 's|^service/||' | sort)
	cd service && ../$(BIN)/python -m grpc_tools.protoc -I . \
		-I "$$(../$(BIN)/python -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')" \
		--grpc_python_out=. lockgate_server/gateway/proto/envoy/service/ratelimit/v3/rls.proto

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
