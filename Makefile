# Tongban — the two commands of the README, and the pieces they are made of.
#   make demo   three regions on loopback, scripted scenarios (`tongban demo`)
#   make test   everything CI runs: install, services, lint gate, proto drift check, tests,
#               and the same gate on the lowest versions pyproject.toml allows
#   make lock   refresh requirements/*.txt from pyproject.toml (commit what it changes)

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
# The lock (exact versions with hashes, every platform) is what gets installed; `make lock`
# writes it from pyproject.toml. requirements/uv.txt pins the locking tool itself, with hashes.
LOCK := requirements/lock.txt
LOWEST_LOCK := requirements/lowest.txt
UV_LOCK := requirements/uv.txt
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) $(UV_LOCK) | sha256sum | cut -c1-12)
LOWEST_VENV ?= .venv-lowest
DEMO ?= out/demo

.PHONY: demo demo-serve fuzz faults soak test install lock check-lowest lowest-gate services promtool tools softhsm browser lint proto proto-check pytest clean

UV_STAMP := $(VENV)/.uv-$(shell sha256sum $(UV_LOCK) | cut -c1-12)

# uv from its hashed pin; pip only bootstraps it (whatever indexes a machine's pip configuration
# adds, --require-hashes takes only the files the pin names).
$(UV_STAMP): $(UV_LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r $(UV_LOCK)
	@rm -f $(VENV)/.uv-* && touch $@

# Exactly the lock (uv pip sync removes what it does not list, checks every hash), then the
# project itself, built without fetching anything: its build backend is in the lock.
$(STAMP): pyproject.toml $(LOCK) $(UV_STAMP)
	$(UV) pip sync --quiet --python $(PY) --require-hashes $(LOCK) $(UV_LOCK)
	$(UV) pip install --quiet --python $(PY) --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# Refresh both locks from pyproject.toml, keeping the versions already locked where they still fit;
# `make lock LOCK_ARGS=--upgrade` takes the newest allowed. Commit the requirements/ files it changes.
LOCK_ARGS ?=
lock: $(UV_STAMP)
	$(UV) pip compile --quiet --generate-hashes --universal $(LOCK_ARGS) requirements/uv.in -o $(UV_LOCK)
	$(UV) pip compile --quiet --generate-hashes --universal --python-version 3.11 $(LOCK_ARGS) \
	  pyproject.toml --extra dev -o $(LOCK)
	$(UV) pip compile --quiet --generate-hashes --universal --resolution lowest-direct \
	  --python-version 3.11 $(LOCK_ARGS) pyproject.toml --extra dev -o $(LOWEST_LOCK)

# The lowest versions pyproject.toml allows, from their own hashed lock, in $(LOWEST_VENV): the lint
# gate and the unit tests must pass there too, or a lower bound is false.
check-lowest: lowest-gate
	TONGBAN_LOCK=$(LOWEST_LOCK) $(LOWEST_VENV)/bin/python -m pytest -p no:cacheprovider --no-cov -q tests/unit

# The lowest versions installed from their lock, and the lint gate on them.
lowest-gate: $(STAMP) services promtool tools softhsm
	@test -x $(LOWEST_VENV)/bin/python || $(PYTHON) -m venv $(LOWEST_VENV)
	$(UV) pip sync --quiet --python $(LOWEST_VENV)/bin/python --require-hashes $(LOWEST_LOCK) $(UV_LOCK)
	$(UV) pip install --quiet --python $(LOWEST_VENV)/bin/python --no-deps --no-build-isolation -e .
	$(LOWEST_VENV)/bin/ruff format --check .
	$(LOWEST_VENV)/bin/ruff check .
	$(LOWEST_VENV)/bin/mypy --strict gateway signer registry

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

# promtool checks and unit-tests the alert rules (conf/prometheus/); Debian ships it in `prometheus`,
# whose recommended packages (node-exporter and the tools it calls) promtool does not need.
promtool:
	@command -v promtool >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus)

# Independent implementations the tests cross-check against: OpenSSL's SM2/SM3 (`openssl`) and
# Info-ZIP's zip reader (`unzip -t` on the OFD packages Tongban makes).
tools:
	@command -v openssl >/dev/null && command -v unzip >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssl unzip)

# SoftHSM2, the PKCS#11 module the tests keep keys in (tests/integration/test_pkcs11.py makes its
# own token in a temporary folder); Debian's package recommends nothing the tests need.
softhsm:
	@command -v softhsm2-util >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends softhsm2)

# Debian's Chromium and its chromedriver, which the console's browser tests drive headless
# (tests/browser/: Selenium is given /usr/bin/chromedriver, it downloads nothing), and the
# smallest Debian font with Chinese glyphs (WenQuanYi Micro Hei, 5 MB) for their screenshots;
# and axe-core, the accessibility engine they run inside each page, from the npm registry at the
# version and hash of tests/browser/package-lock.json (`npm ci`: exactly the lock, no scripts).
CJK_FONT := /usr/share/fonts/truetype/wqy/wqy-microhei.ttc
AXE := tests/browser/node_modules/axe-core/axe.min.js
browser: $(AXE)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null && test -e $(CJK_FONT) || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-wqy-microhei)

$(AXE): tests/browser/package.json tests/browser/package-lock.json
	@command -v npm >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm)
	npm ci --prefix tests/browser --no-audit --no-fund --ignore-scripts --loglevel=error
	@touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy --strict gateway signer registry

proto: $(STAMP)
	$(PY) proto/build.py

proto-check: $(STAMP)
	$(PY) proto/build.py --check

# The tests, in processes that run at once (most of their time is spent waiting on the
# gateways, databases and sockets they start): tests/integration, and the rest of tests/ (unit,
# fuzz, browser, docs), each with branch coverage in its own data file; the fault suite
# (tests/faults/: its own redis-server, PostgreSQL and gateway processes on free ports, judged by
# phases, not clock times); and with BESIDE_LOWEST=1 (make test) the unit tests on the lowest
# versions. None shares anything with another (fresh schemas, random Redis keys, free ports).
# Then, alone once all of them are done, tests/security: its floods and stalls measure how a
# gateway holds up, and a machine loaded by four other suites at once is not what they test.
# The coverage files are combined and reported against fail_under; each suite's output follows
# the integration tests'; any of them failing fails the run.
BESIDE_LOWEST ?= 0
COVERAGE_DIR := out/coverage
SHARD := $(PY) -m pytest --cov --cov-branch --cov-report= --cov-fail-under=0 -p no:cacheprovider
pytest: $(STAMP) services promtool tools softhsm browser
	@rm -rf $(COVERAGE_DIR) && mkdir -p $(COVERAGE_DIR)/integration $(COVERAGE_DIR)/rest $(COVERAGE_DIR)/security; \
	faults_log=$$(mktemp); rest_log=$$(mktemp); low_log=$$(mktemp); lowest=0; low_rc=0; \
	$(PY) -m pytest -p no:cacheprovider --no-cov -q tests/faults >"$$faults_log" 2>&1 & faults=$$!; \
	COVERAGE_FILE=$(COVERAGE_DIR)/rest/.coverage $(SHARD) -q --ignore=tests/faults --ignore=tests/integration --ignore=tests/security >"$$rest_log" 2>&1 & rest=$$!; \
	if [ "$(BESIDE_LOWEST)" = 1 ]; then \
	  TONGBAN_LOCK=$(LOWEST_LOCK) $(LOWEST_VENV)/bin/python -m pytest -p no:cacheprovider --no-cov -q tests/unit >"$$low_log" 2>&1 & lowest=$$!; \
	fi; \
	COVERAGE_FILE=$(COVERAGE_DIR)/integration/.coverage $(SHARD) tests/integration; integrated=$$?; \
	wait $$rest; rest_rc=$$?; wait $$faults; faulted=$$?; \
	if [ "$$lowest" != 0 ]; then wait $$lowest; low_rc=$$?; fi; \
	echo "== tests/security (alone, once the other suites are done)"; \
	COVERAGE_FILE=$(COVERAGE_DIR)/security/.coverage $(SHARD) tests/security; secured=$$?; \
	echo "== tests/unit, fuzz, browser, docs (run beside the integration tests)"; cat "$$rest_log"; \
	if [ "$$lowest" != 0 ]; then \
	  echo "== tests/unit on the lowest versions (run beside the rest)"; tail -n 30 "$$low_log"; fi; \
	echo "== tests/faults (run beside the rest)"; cat "$$faults_log"; rm -f "$$faults_log" "$$rest_log" "$$low_log"; \
	echo "== coverage of all, combined"; \
	$(PY) -m coverage combine --quiet --data-file=$(COVERAGE_DIR)/.coverage $(COVERAGE_DIR)/integration/.coverage $(COVERAGE_DIR)/rest/.coverage $(COVERAGE_DIR)/security/.coverage \
	  && $(PY) -m coverage report --data-file=$(COVERAGE_DIR)/.coverage; covered=$$?; \
	test $$integrated -eq 0 && test $$secured -eq 0 && test $$rest_rc -eq 0 && test $$faulted -eq 0 && test $$low_rc -eq 0 && test $$covered -eq 0

# The lowest versions pyproject.toml allows pass the same gate: their lint first, their unit tests
# beside the rest of pytest (`make check-lowest` runs them alone).
test: $(STAMP) services promtool tools softhsm browser lint proto-check lowest-gate
	@$(MAKE) --no-print-directory pytest BESIDE_LOWEST=1

# The demo: three regions on loopback playing scripted scenarios (exit 0 only if all behave).
# It leaves its PKI, registry and audit logs in $(DEMO), which conf/demo/*.toml point at.
demo: $(STAMP)
	@rm -rf $(DEMO)
	$(VENV)/bin/tongban demo --dir $(DEMO) $(DEMO_ARGS)

# The same, then the gateways stay up for examples/client.py until Ctrl-C.
demo-serve: DEMO_ARGS = --serve
demo-serve: demo

# The long fuzz target: adversarial messages to every RPC over real mutual TLS, 10,000 examples
# per RPC in the tests that know what each RPC means, a tenth of that in the one that sends every
# RPC messages built from its descriptor (about 27 min on 2 cores, estimated from runs of the
# parts: 11 min for the first tests, about 12 for every RPC at 1,000, 4 for the citizen's);
# `make pytest` runs the same tests with 50 examples.
FUZZ_EXAMPLES ?= 10000
fuzz: $(STAMP)
	TONGBAN_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -p no:cacheprovider tests/fuzz -m fuzz -q

# The fault suite of issue 14 (tests/faults/: gateways, data system, Redis and a private PostgreSQL
# as processes, faults injected under load) with 10-second faults, twice the clients and three
# rounds per scenario (about 9 min on 2 cores); `make pytest` runs the same scenarios short.
faults: $(STAMP)
	TONGBAN_FAULTS_LONG=1 $(PY) -m pytest -p no:cacheprovider --no-cov tests/faults -q -s

# The soak run (not in CI): the three demo gateways in one process follow SOAK_VERSIONS registry
# versions under a client load; exits 1 if memory, descriptors, tasks or channels grew.
SOAK_VERSIONS ?= 3000
SOAK_ARGS ?=
soak: $(STAMP)
	$(PY) bench/soak.py --versions $(SOAK_VERSIONS) $(SOAK_ARGS)

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache .coverage $(LOWEST_VENV)
