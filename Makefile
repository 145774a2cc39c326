# The two commands of the README: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,spark]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/drivetrain demo

test: $(STAMP)
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/optimize.py
	$(BIN)/python bench/ope_accuracy.py
	$(BIN)/python bench/policy_value.py
	$(BIN)/python bench/monitor.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache
