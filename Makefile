# financeATP: `make run` serves the API, `make test` runs every test. See README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)
# PostgreSQL server binaries (initdb, postgres, pg_ctl): Debian keeps them off PATH.
PG_BINDIR ?= $(shell pg_config --bindir 2>/dev/null | grep -v '^/usr/bin$$' || ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
export PATH := $(PG_BINDIR):$(PATH)

# $(call apt_need,<check>,<Debian package>,<what>): run the check; if it fails, install the package
# when we are root, else say what to install and stop (the bench's and drills' tools).
apt_need = $(1) >/dev/null 2>&1 || { \
    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
        apt-get install -y -qq $(2) >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq $(2) >/dev/null); \
    else echo "$(3) is missing: install it (Debian: sudo apt-get install $(2))"; exit 1; fi; }

# Functions and triggers are re-applied on every migrate, helpers first.
SQL_FILES := $(sort $(wildcard sql/ledger/*.sql)) $(sort $(wildcard sql/api/*.sql))

.PHONY: help venv deps test lint format migrate run stop api-key

help:
	@echo "make run      serve the API on http://127.0.0.1:8000 (embedded PostgreSQL unless DATABASE_URL is set)"
	@echo "make test     run every test against temporary PostgreSQL clusters"
	@echo "make migrate  apply migrations and sql/ to DATABASE_URL (or the embedded database)"
	@echo "make api-key NAME=nextjs PERMISSIONS=read,write  create an API key and print it once"
	@echo "make stop     stop the embedded PostgreSQL that a killed make run left running"
	@echo "make lint     ruff check and format check; make format rewrites the files"
	@echo "make bench   throughput and latency against the machine's limit (bench/README.md)"
	@echo "make bench-ablation  what each part of api.transfer costs in PostgreSQL CPU"
	@echo "make bench-instructions  CPU instructions per call of a transfer and its statements (valgrind), for changes timings cannot resolve"
	@echo "make bench-month-turn  transfers and history reads through midnight of a month's last day"
	@echo "make backup-drill  pgBackRest backup, WAL archiving, restore to a timestamp, ledger verified"
	@echo "make faults  bank workload over HTTP with PostgreSQL and server workers killed (bench/faults.py)"
	@echo "make test-nextjs  the Next.js example (examples/nextjs): next build, next start and a browser test against the API"
	@echo "make types   regenerate the Next.js example's openapi.json and TypeScript types from the API"
	@echo "make check-types  fail if those two files are out of date with the API"

$(STAMP): pyproject.toml
	@rm -f $(VENV)/.installed-*
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	@touch $@

venv: $(STAMP)

# Debian packages the tests need: pgTAP. Installed when we are root, explained otherwise.
deps:
	@if [ -f "$$($(PG_BINDIR)/pg_config --sharedir 2>/dev/null || echo /usr/share/postgresql/15)/extension/pgtap.control" ] \
	    || ls /usr/share/postgresql/*/extension/pgtap.control >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq postgresql-15-pgtap >/dev/null 2>&1 \
	     || (apt-get update -qq && apt-get install -y -qq postgresql-15-pgtap >/dev/null)); \
	else \
	    echo "pgTAP is missing: install it (Debian: sudo apt-get install postgresql-15-pgtap)"; exit 1; \
	fi
	@command -v initdb >/dev/null || { echo "PostgreSQL server binaries not found (Debian: apt-get install postgresql-15)"; exit 1; }

# Test modules run side by side, one worker per core (at most 4), each with its own cluster; a
# module stays on one worker (--dist loadfile), so its fixtures and its order hold.
# TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= auto
test: $(STAMP) deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -n $(TEST_WORKERS) --maxprocesses=4 --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The migrating sessions' own settings, whatever the database's or the role's defaults: the
# schema's text means what it says (standard_conforming_strings), names resolve to PostgreSQL's
# own operators and functions before any other schema's (pg_catalog first, only public after),
# UTC months, UTF-8 whatever the database's encoding, no statement timeout.
MIGRATE_ENV := PGOPTIONS="$$PGOPTIONS -c standard_conforming_strings=on -c search_path=public -c timezone=UTC -c statement_timeout=0" PGCLIENTENCODING=UTF8

# Without DATABASE_URL: the embedded database of `make run` (started for the migration if needed).
# The re-apply of sql/ is one transaction, one at a time (an advisory lock), and waits at most
# 2 s for a table a transaction holds (it re-creates the append-only triggers): writers queue
# behind a waiting lock, so a long writer makes it fail, to be run again, instead of stalling them.
migrate: $(STAMP)
ifeq ($(strip $(DATABASE_URL)),)
	$(PY) app.py migrate
else
	$(MIGRATE_ENV) $(VENV)/bin/yoyo apply --batch --no-config-file \
	    --database "$$(printf '%s' "$(DATABASE_URL)" | sed -E 's#^postgres(ql)?(\+[a-z0-9]+)?://#postgresql+psycopg://#')" migrations
	$(MIGRATE_ENV) psql "$(DATABASE_URL)" -X -q -1 -v ON_ERROR_STOP=1 \
	    -c "SELECT pg_advisory_xact_lock(hashtextextended('financeatp.migrate', 0))" \
	    -c 'SET ROLE atp_owner' -c 'SET check_function_bodies = off' -c "SET LOCAL lock_timeout = '2s'" \
	    $(addprefix -f ,$(SQL_FILES)) -c 'SELECT ledger.drop_stale_functions()' -c 'SELECT ledger.ensure_partitions(3)' >/dev/null
	@echo "migrated: $(words $(SQL_FILES)) sql files applied"
endif

# Serve on HOST:PORT (127.0.0.1:8000) with WORKERS processes. Without DATABASE_URL: the embedded
# PostgreSQL in .pgdata/ (created on first start, started and stopped with the server).
run: $(STAMP)
	$(PY) app.py run

# The embedded PostgreSQL stops with `make run`; only a `make run` killed with SIGKILL leaves it
# running (and the next `make run` uses it as it is, and leaves it running too).
stop: $(STAMP)
	$(PY) app.py stop

# A new API key, printed once (RATE_LIMIT per minute, EXPIRES_AT in RFC 3339; both optional).
api-key: $(STAMP)
	@test -n "$(NAME)" || { echo "make api-key: set NAME=... (and PERMISSIONS=read,write,admin)"; exit 2; }
	@$(PY) app.py api-key --name "$(NAME)" --permissions "$(or $(PERMISSIONS),read)" \
	    --rate-limit "$(or $(RATE_LIMIT),1000)" $(if $(EXPIRES_AT),--expires-at "$(EXPIRES_AT)")

# The benchmark (bench/README.md): its own temporary PostgreSQL, pgbench and wrk; not part of
# `make test`. Writes bench/results.json, bench/results.png and the tables in bench/README.md
# and README.md.
BENCH_SECONDS ?= 30
BENCH_ROUNDS ?= 3
BENCH_CONNECTIONS ?= 16
BENCH_EVENTS ?= 5000000

.PHONY: bench
bench: $(STAMP)
	@$(call apt_need,command -v wrk,wrk,wrk)
	@command -v initdb >/dev/null || { echo "PostgreSQL server binaries not found (Debian: apt-get install postgresql-15)"; exit 1; }
	@$(PY) -c 'import matplotlib' 2>/dev/null || $(VENV)/bin/pip install --quiet -e '.[dev,bench]'
	BENCH_SECONDS=$(BENCH_SECONDS) BENCH_ROUNDS=$(BENCH_ROUNDS) BENCH_CONNECTIONS=$(BENCH_CONNECTIONS) \
	    BENCH_EVENTS=$(BENCH_EVENTS) PG_BINDIR=$(PG_BINDIR) $(PY) bench/bench.py

# What each part of api.transfer costs in PostgreSQL CPU, alone and cumulatively (bench/ablation.py):
# its own temporary PostgreSQL and pgbench, no HTTP; not part of `make test`. BENCH_ABLATION_DURABLE=1
# keeps synchronous_commit on (as make bench), BENCH_ABLATION_ONLY=a,b picks variants. Writes
# bench/out/ablation.md and .json.
BENCH_ABLATION_SECONDS ?= 8
BENCH_ABLATION_CLIENTS ?= 2
BENCH_ABLATION_ROUNDS ?= 3

.PHONY: bench-ablation
bench-ablation: $(STAMP)
	@command -v initdb >/dev/null || { echo "PostgreSQL server binaries not found (Debian: apt-get install postgresql-15)"; exit 1; }
	BENCH_ABLATION_SECONDS=$(BENCH_ABLATION_SECONDS) BENCH_ABLATION_CLIENTS=$(BENCH_ABLATION_CLIENTS) \
	    BENCH_ABLATION_ROUNDS=$(BENCH_ABLATION_ROUNDS) PG_BINDIR=$(PG_BINDIR) $(PY) bench/ablation.py

# CPU instructions per call of api.transfer, its statements and a balance read, counted by
# valgrind's callgrind in a single-user backend (bench/instructions.py): deterministic where timings
# on this VM move by a third. Its own temporary PostgreSQL; writes bench/out/instructions.md and .json.
# BENCH_INSTRUCTIONS_ONLY=transfer,... picks workloads; BENCH_INSTRUCTIONS_B=<another checkout> counts
# that checkout's SQL too, on the same prepared cluster (an A/B).
BENCH_INSTRUCTIONS_CALLS ?= 300

.PHONY: bench-instructions
bench-instructions: $(STAMP)
	@$(call apt_need,command -v valgrind,valgrind,valgrind)
	@command -v initdb >/dev/null || { echo "PostgreSQL server binaries not found (Debian: apt-get install postgresql-15)"; exit 1; }
	BENCH_INSTRUCTIONS_CALLS=$(BENCH_INSTRUCTIONS_CALLS) PG_BINDIR=$(PG_BINDIR) $(PY) bench/instructions.py

# Transfers and history reads through midnight of a month's last day (bench/month_turn.py): its
# own temporary PostgreSQL under libfaketime, pgbench; not part of `make test`.
.PHONY: bench-month-turn
bench-month-turn: $(STAMP)
	@$(call apt_need,ls /usr/lib/*/faketime/libfaketime.so.1,faketime,libfaketime)
	@command -v initdb >/dev/null || { echo "PostgreSQL server binaries not found (Debian: apt-get install postgresql-15)"; exit 1; }
	BENCH_CONNECTIONS=$(BENCH_CONNECTIONS) PG_BINDIR=$(PG_BINDIR) $(PY) bench/month_turn.py

# A pgBackRest full backup with WAL archiving, then a point-in-time restore onto a lost data
# directory, verified against the ledger (bench/backup_drill.py): its own temporary PostgreSQL
# and repository; not part of `make test`. Writes bench/out/backup_drill.json.
.PHONY: backup-drill
backup-drill: $(STAMP)
	@$(call apt_need,command -v pgbackrest,pgbackrest,pgBackRest)
	@command -v initdb >/dev/null || { echo "PostgreSQL server binaries not found (Debian: apt-get install postgresql-15)"; exit 1; }
	PG_BINDIR=$(PG_BINDIR) $(PY) bench/backup_drill.py

# --- Next.js example: examples/nextjs (README "Calling from Next.js") -------------------------
# make test-nextjs: npm ci, then examples/nextjs/tests/e2e.test.mjs: the API on a temporary
# database, `next build`, `next start`, Debian's chromium (installed when we are root); not part
# of `make test`. make types regenerates the TypeScript types from the running API's
# /openapi.json (after any change to a route); make check-types says whether they are current.
NEXTJS := examples/nextjs
NEXTJS_STAMP := $(NEXTJS)/node_modules/.installed-$(shell cksum < $(NEXTJS)/package-lock.json | cut -d' ' -f1)
CHROMIUM ?= /usr/bin/chromium

.PHONY: test-nextjs check-types types nextjs-node nextjs-chromium

nextjs-node:
	@node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' 2>/dev/null \
	    || { echo "Node.js 20+ and npm are needed for examples/nextjs (https://nodejs.org, or your distribution's nodejs 20+)"; exit 1; }

$(NEXTJS_STAMP): $(NEXTJS)/package-lock.json | nextjs-node
	cd $(NEXTJS) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

nextjs-chromium:
	@test -x "$(CHROMIUM)" || { \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
	        || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null); \
	    else echo "Chromium is missing: install it (Debian: sudo apt-get install chromium) or set CHROMIUM=/path"; exit 1; fi; }

test-nextjs: $(STAMP) $(NEXTJS_STAMP) nextjs-chromium
	@command -v initdb >/dev/null || { echo "PostgreSQL server binaries not found (Debian: apt-get install postgresql-15)"; exit 1; }
	cd $(NEXTJS) && PY="$(abspath $(PY))" CHROMIUM="$(CHROMIUM)" NEXT_TELEMETRY_DISABLED=1 \
	    node --test --test-concurrency=1 tests/

check-types: $(STAMP) $(NEXTJS_STAMP)
	cd $(NEXTJS) && PY="$(abspath $(PY))" node scripts/types.mjs --check

types: $(STAMP) $(NEXTJS_STAMP)
	cd $(NEXTJS) && PY="$(abspath $(PY))" node scripts/types.mjs
# --- faults ---------------------------------------------------------------------------------
# A bank workload over HTTP with the postmaster SIGKILLed, server workers SIGKILLed (also between
# the commit and the response), the database paused; then exactly-once, totals, projections, the
# audit chain, the event feed, secrets in logs and dumps, and data checksums (bench/faults.py,
# bench/README.md "Faults"). First the HTTP model test with ten times its examples. A few minutes;
# not part of `make test`. FAULTS_ROUNDS (3) times each fault, FAULTS_WRITERS (16).
FAULTS_ROUNDS ?= 3
FAULTS_WRITERS ?= 16

.PHONY: faults
faults: $(STAMP) deps
	HYPOTHESIS_PROFILE=faults $(PY) -m pytest -q tests/test_http_model.py
	FAULTS_ROUNDS=$(FAULTS_ROUNDS) FAULTS_WRITERS=$(FAULTS_WRITERS) PG_BINDIR=$(PG_BINDIR) \
	    $(PY) bench/faults.py
# --- end faults ------------------------------------------------------------------------------
