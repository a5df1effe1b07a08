# Two commands: `make run` (the product on embedded PostgreSQL/pgvector + Redis, with demo data)
# and `make test` (checks, lint and the whole test suite on throwaway servers).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test bench lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e ".[ml,dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m controlplane.devstack run

test: $(STAMP)
	$(PY) -m controlplane.devstack test $(ARGS)

bench: $(STAMP)
	$(PY) -m controlplane.devstack bench $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

format: $(STAMP)
	$(PY) -m ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
