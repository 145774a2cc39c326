# The two commands of the README: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench browser-check schemathesis soak clean

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

# schemathesis against the served OpenAPI document, with and without the token: no server error, no
# undocumented status, no schema violation (a local service on a free port).
schemathesis: $(STAMP)
	$(BIN)/python scripts/fuzz_api.py --examples 100

# The service under load with compactions in a loop and kill -9s: nothing acknowledged lost or changed.
soak: $(STAMP)
	$(BIN)/python bench/soak.py

# Renders a report of a small twin run in headless Chromium (Debian's package, installed when missing)
# and fails on console errors or a figure that did not draw; output under browser-check/.
browser-check: $(STAMP)
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)
	$(BIN)/python scripts/browser_check.py --out browser-check --screenshot

clean:
	rm -rf $(VENV) demo-out browser-check .pytest_cache .mypy_cache
