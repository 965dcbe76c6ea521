# fanwire: `make serve` runs the sharded server, `make test` runs the tests.
# Both create .venv and install what they need on first use.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Server settings: only what you set is passed, so FANWIRE_* variables and the defaults of
# `python -m server --help` apply to everything else.
HOST    ?=
PORT    ?=
WORKERS ?=
BUS     ?=
REDIS_URL ?=
SERVE_ARGS := $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT)) $(if $(WORKERS),--workers $(WORKERS)) \
              $(if $(BUS),--bus $(BUS)) $(if $(REDIS_URL),--redis-url $(REDIS_URL))
URL     ?= ws://$(or $(HOST),127.0.0.1):$(or $(PORT),8765)
ARGS    ?=

.PHONY: docs serve test lint typecheck bench bench-quick bench-micro charts conformance demo chat stress echo clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

serve: $(STAMP)
	$(PY) -m server $(SERVE_ARGS) $(ARGS)

echo: $(STAMP)
	$(PY) -m server --mode echo $(SERVE_ARGS) $(ARGS)

test: $(STAMP)
	$(PY) -m ruff check server client bench tests
	$(PY) -m mypy
	$(PY) -m pytest -q $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check server client bench tests

typecheck: $(STAMP)
	$(PY) -m mypy

demo: $(STAMP)
	$(PY) -m client demo --url $(URL) $(ARGS)

chat: $(STAMP)
	$(PY) -m client chat --url $(URL) $(ARGS)

stress: $(STAMP)
	$(PY) -m client stress --url $(URL) $(ARGS)

bench: $(STAMP)
	$(PY) -m bench run $(ARGS)

bench-quick: $(STAMP)
	$(PY) -m bench run --quick --out results/quick $(ARGS)

bench-micro: $(STAMP)
	$(PY) -m pytest -q bench/micro --benchmark-only --benchmark-json=results/micro.json -p no:cacheprovider $(ARGS)

charts: $(STAMP)
	$(PY) -m bench charts $(ARGS)

# Autobahn|Testsuite against fanwire and websockets' own server (needs a Python 2.7; not part of `make test`)
conformance: $(STAMP)
	$(PY) -m bench.conformance $(ARGS)

# rewrite the tables the docs embed (options, metrics) from the code
docs: $(STAMP)
	$(PY) -m server.doctables README.md docs/*.md

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
