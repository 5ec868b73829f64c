PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
DB ?= sqlite:///./fhirgw.db

.PHONY: install serve test test-data definitions bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

serve: install
	$(BIN)/fhirgw serve --host $(HOST) --port $(PORT) --database $(DB)

test-data: install
	bash scripts/fetch_test_data.sh
	bash scripts/fetch_profile_packages.sh

test: install test-data
	$(BIN)/python -m pytest -n 2 -q

definitions: install
	bash scripts/fetch_test_data.sh
	$(BIN)/python scripts/build_definitions.py
	$(BIN)/python -m fhirgw.validation.build_core

bench: install test-data
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/read.py --client raw
	$(BIN)/python benchmarks/validate.py

clean:
	rm -rf $(VENV) fhirgw.db* .cache
