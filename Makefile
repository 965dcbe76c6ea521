# fanwire: `make serve` runs the sharded server, `make test` runs the tests.
# Both create .venv and install what they need on first use.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

HOST    ?= 127.0.0.1
PORT    ?= 8765
WORKERS ?= 0
BUS     ?= pipe
REDIS_URL ?= redis://127.0.0.1:6379/0
URL     ?= ws://$(HOST):$(PORT)
ARGS    ?=

.PHONY: serve test lint typecheck bench bench-quick bench-micro charts demo chat stress echo clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

serve: $(STAMP)
	$(PY) -m server --host $(HOST) --port $(PORT) --workers $(WORKERS) --bus $(BUS) --redis-url $(REDIS_URL) $(ARGS)

echo: $(STAMP)
	$(PY) -m server --mode echo --host $(HOST) --port $(PORT) --workers $(WORKERS) $(ARGS)

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

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
