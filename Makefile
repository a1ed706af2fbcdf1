# Tongban — the two commands of the README, and the pieces they are made of.
#   make demo   three regions on loopback, scripted scenarios (`tongban demo`)
#   make test   everything CI runs: install, services, lint gate, proto drift check, tests

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
DEMO ?= out/demo

.PHONY: demo demo-serve fuzz soak test install services promtool lint proto proto-check pytest clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# Redis and PostgreSQL run on every machine of this kind; start them if they are not running.
services:
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || { \
	  echo "starting redis-server"; mkdir -p /var/lib/redis /var/log/redis; \
	  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
	    --dir /var/lib/redis --logfile /var/log/redis/ci.log; }
	@pg_isready -q -h 127.0.0.1 -p 5432 || { \
	  echo "starting postgresql"; pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start; }
	@for i in $$(seq 1 30); do redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 && exit 0; sleep 1; done; \
	  echo "Redis or PostgreSQL did not come up" >&2; exit 1

# promtool checks and unit-tests the alert rules (conf/prometheus/); Debian ships it in `prometheus`.
promtool:
	@command -v promtool >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus)

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy --strict gateway signer registry

proto: $(STAMP)
	$(PY) proto/build.py

proto-check: $(STAMP)
	$(PY) proto/build.py --check

pytest: $(STAMP) services promtool
	$(PY) -m pytest --cov --cov-branch --cov-report=term

test: $(STAMP) services promtool lint proto-check pytest

# The demo: three regions on loopback playing scripted scenarios (exit 0 only if all behave).
# It leaves its PKI, registry and audit logs in $(DEMO), which conf/demo/*.toml point at.
demo: $(STAMP)
	@rm -rf $(DEMO)
	$(VENV)/bin/tongban demo --dir $(DEMO) $(DEMO_ARGS)

# The same, then the gateways stay up for examples/client.py until Ctrl-C.
demo-serve: DEMO_ARGS = --serve
demo-serve: demo

# The long fuzz target: adversarial messages to every RPC over real mutual TLS (about 11 min
# on 2 cores at 10,000 examples per RPC; `make pytest` runs the same tests with 50).
FUZZ_EXAMPLES ?= 10000
fuzz: $(STAMP)
	TONGBAN_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -p no:cacheprovider tests/fuzz -m fuzz -q

# The soak run (not in CI): the three demo gateways in one process follow SOAK_VERSIONS registry
# versions under a client load; exits 1 if memory, descriptors, tasks or channels grew.
SOAK_VERSIONS ?= 3000
SOAK_ARGS ?=
soak: $(STAMP)
	$(PY) bench/soak.py --versions $(SOAK_VERSIONS) $(SOAK_ARGS)

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache .coverage
