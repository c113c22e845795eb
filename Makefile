# Two commands set refsys up on a fresh machine: `make run` and `make test`. Each creates .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run test bench lint clean

$(BIN)/refsys: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.test-extras: $(BIN)/refsys
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

run: $(BIN)/refsys
	@echo "refsys: http://$(HOST):$(PORT)  (token: see the path printed below; use it as 'Authorization: Bearer ...')"
	$(BIN)/refsys serve --demo --host $(HOST) --port $(PORT)

test: $(VENV)/.test-extras
	$(BIN)/python -m pytest -q

bench: $(VENV)/.test-extras
	$(BIN)/python bench/audit_verify_bench.py
	$(BIN)/python bench/api_bench.py
	$(BIN)/python bench/store_bench.py
	$(BIN)/python bench/ingest_bench.py
	$(BIN)/python bench/detect_bench.py

lint: $(VENV)/.test-extras
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy control_plane security pipelines

clean:
	rm -rf $(VENV) var .pytest_cache
