# pdfqueue: `make run` sets everything up and starts web + worker + gateway; `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
GATEWAY_PORT ?= 8002
export PORT GATEWAY_PORT
# Python keeps compiled modules (__pycache__, git-ignored), whatever the shell says: without them every process the
# suite starts compiles the code again, and pytest rewrites the asserts of every test module in each of its workers.
unexport PYTHONDONTWRITEBYTECODE

# With GATEWAY_URL set, an external gateway does the work and ours is not started.
PROCESSES := $(if $(GATEWAY_URL),web worker,web worker gateway)

.PHONY: messages translations setup run test coverage web worker gateway bench bench-quick faults fuzz-api db assets system-deps clean

setup: $(VENV)/.installed assets translations db

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

# --omit=optional: pdfjs-dist's optional @napi-rs/canvas is for drawing in Node, which nothing here does.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error --omit=optional
	@touch $@

# Served locally from webapp/static/vendor (built, never committed): no CDN, boxes may be offline. pdf.js (the
# review page's PDF) is its modern build, worker, standard fonts and image decoders; Swagger UI (/api/docs) its
# bundle and stylesheet.
PDFJS := node_modules/pdfjs-dist
SWAGGER := node_modules/swagger-ui-dist
assets: node_modules/.installed
	@mkdir -p webapp/static/vendor/pdfjs
	@cp node_modules/htmx.org/dist/htmx.min.js node_modules/htmx-ext-sse/dist/sse.js webapp/static/vendor/
	@cp $(PDFJS)/build/pdf.min.mjs $(PDFJS)/build/pdf.worker.min.mjs $(PDFJS)/LICENSE webapp/static/vendor/pdfjs/
	@cp -r $(PDFJS)/standard_fonts $(PDFJS)/wasm webapp/static/vendor/pdfjs/
	@mkdir -p webapp/static/vendor/swagger-ui
	@cp $(SWAGGER)/swagger-ui-bundle.js $(SWAGGER)/swagger-ui.css $(SWAGGER)/LICENSE webapp/static/vendor/swagger-ui/

# The pages' and emails' languages (webapp/i18n.py): `make messages` extracts every marked string (babel.cfg) and
# updates each catalogue under webapp/translations (committed: translate what it adds, an empty msgstr);
# `make translations` compiles them into the .mo files the processes read (built, never committed).
I18N := webapp/translations
messages: $(VENV)/.installed
	$(BIN)/pybabel -q extract -F babel.cfg -k _l -k lazy_pgettext:1c,2 -k plural:1,2 --no-location --sort-output --omit-header -o $(I18N)/messages.pot .
	$(BIN)/pybabel -q update -i $(I18N)/messages.pot -d $(I18N) --width=120 --ignore-obsolete --no-fuzzy-matching

translations: $(VENV)/.installed
	$(BIN)/pybabel -q compile --statistics -d $(I18N)

db: $(VENV)/.installed
	$(BIN)/flask --app wsgi db upgrade

# In a terminal, `make run`'s processes write short readable lines (honcho's pipes are no terminal to them);
# LOG_FORMAT=json (or GATEWAY_LOG_FORMAT=json) keeps the JSON lines.
TERMINAL := $(shell test -t 2 && echo yes)
run: setup
	$(if $(TERMINAL),LOG_FORMAT=$${LOG_FORMAT:-text} GATEWAY_LOG_FORMAT=$${GATEWAY_LOG_FORMAT:-text}) \
	$(BIN)/honcho start -f Procfile -p $(PORT) $(PROCESSES)

web: setup
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

worker: setup
	$(BIN)/python -m worker

gateway: $(VENV)/.installed
	$(BIN)/gunicorn -c gateway/gunicorn.conf.py gateway.wsgi:app

# Chromium (browser tests), redis-server and PostgreSQL (scale-out tests): installed when missing.
system-deps:
	@scripts/system-deps.sh

# Line coverage of webapp/, core/, worker/, gateway/ and tasks.py (subprocesses included, see pyproject.toml); under
# 80 % fails. Measured under CI=true, or `make coverage`: tracing every process of the suite makes it about 40 %
# slower, which a developer's `make test` goes without.
COVERAGE ?= $(filter true,$(CI))
COVERAGE_FIRST = $(if $(COVERAGE),--cov --cov-report=)
COVERAGE_LAST = $(if $(COVERAGE),--cov-append --cov --cov-report=term --cov-fail-under=80)
# The suite in two pytest-xdist workers per core: most tests spend most of their time waiting (on a stack's
# processes, a lease, a stream), so two per core keep the cores busy. Tests sharing a stack (a module's, the
# scale-out tests') stay together on one worker, the rest are dealt out one by one (tests/conftest.py).
# XDIST_ARGS= runs it in one process. The browser tests run after, alone: their pages wait on live updates, which
# a busy box slows.
XDIST_ARGS ?= -n $(shell echo $$(( 2 * $$(nproc) ))) --dist loadgroup
test: setup system-deps
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest $(XDIST_ARGS) $(COVERAGE_FIRST) --ignore=tests/browser $(PYTEST_ARGS)
	$(BIN)/python -m pytest $(COVERAGE_LAST) tests/browser $(PYTEST_ARGS)

coverage:
	$(MAKE) test COVERAGE=1

# Every bench/bench_*.py against stacks it starts itself; writes docs/benchmarks.md (bench-quick: a short try-out
# into bench/out/).
bench: setup
	$(BIN)/python bench/run_all.py

bench-quick: setup
	$(BIN)/python bench/run_all.py --quick

# Fault drills on the real processes (worker killed, gateway down, disk full...): tests/faults, marked `faults`
# and so left out of `make test`; fails if any fails. They run in a private mount namespace (a user namespace
# too when not root), so disk_full's small tmpfs mounts vanish with them; where unshare cannot make one,
# disk_full skips, or fails under CI.
PRIVATE_MOUNTS = $(shell u="unshare --mount"; [ "$$(id -u)" = 0 ] || u="unshare --map-root-user --mount"; \
	$$u true 2>/dev/null && echo "$$u env PDFQUEUE_PRIVATE_MOUNTS=1")
faults: setup
	$(PRIVATE_MOUNTS) $(BIN)/python -m pytest -m faults tests/faults $(PYTEST_ARGS)

# The long schemathesis run against a real stack (tests/web/test_api_fuzz.py, marked `fuzz` and so left out of `make
# test`, which runs a short one): thousands of generated requests and stateful sequences along the document's links,
# every answer checked against GET /api/openapi.json. FUZZ_API_EXAMPLES (per operation) and FUZZ_API_SECONDS bound it.
fuzz-api: setup
	$(BIN)/python -m pytest -m fuzz -s tests/web/test_api_fuzz.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) node_modules webapp/static/vendor
