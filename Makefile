# The two commands of the README: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
# Python keeps the bytecode of what it imports (a machine may turn that off): the suite starts many
# interpreters (services, benches, commands), and one that compiles every module it imports takes 3.6 s to
# import the package and its libraries instead of 1.9 s.
unexport PYTHONDONTWRITEBYTECODE
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast lint rules bench browser-check schemathesis soak clean

# --no-compile: pip would compile every module of every dependency (half the install's time, most of it
# never imported); Python compiles what is imported, once, on first import.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -e '.[test,spark]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/drivetrain demo

# The import rules, ruff (errors, import order, upgrades), the feature check of the flagship spec against
# HEAD (the check a product runs in its CI): the tests of tests/test_layers.py, which `make test` runs too;
# then mypy --strict over the package.
lint: rules
	$(BIN)/python -m mypy

rules: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_layers.py

# The suite on TEST_WORKERS pytest-xdist workers (3 by default on the CI machine's 2 cores: a third keeps the
# cores busy while a test waits on a server, a subprocess or a sleep; measured 6:11 against 7:06 with 2), one
# test module per worker at a time so that a module's fixtures are built once, the longest modules first
# (LONGEST_FIRST in tests/conftest.py); `make test TEST_WORKERS=0` runs it in one process.
TEST_WORKERS ?= 3
XDIST = -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

# The rules and mypy run inside the suite (tests/test_layers.py, tests/test_typing.py), on workers beside the
# other tests rather than on one core before them.
test: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST)

# The edit loop: what is not marked slow (no model fits of real size, no servers, no wheel build).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST) -m "not slow"

# The peers the benches compare against (Vowpal Wabbit, EconML) come with the `bench` extra.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-compile -e '.[test,spark,bench]'
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/optimize.py
	$(BIN)/python bench/ope_accuracy.py
	$(BIN)/python bench/policy_value.py
	$(BIN)/python bench/monitor.py
	$(BIN)/python bench/pacing.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/registry.py

# The twin's postcode is a personal field: runs on generated data take a fresh key of the personal-data
# hash for the run unless DRIVETRAIN_PII_KEY is set.
BENCH_KEY = DRIVETRAIN_PII_KEY="$${DRIVETRAIN_PII_KEY:-$$($(BIN)/python -c 'import secrets; print(secrets.token_hex(32))')}"

# schemathesis against the served OpenAPI document, with and without the token: no server error, no
# undocumented status, no schema violation (a local service on a free port).
schemathesis: $(STAMP)
	$(BENCH_KEY) $(BIN)/python scripts/fuzz_api.py --examples 100

# The service under load with compactions in a loop and kill -9s: nothing acknowledged lost or changed.
soak: $(STAMP)
	$(BENCH_KEY) $(BIN)/python bench/soak.py

# Renders a report of a small twin run in headless Chromium (Debian's package, installed when missing)
# and fails on console errors or a figure that did not draw; output under browser-check/.
browser-check: $(STAMP)
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)
	$(BIN)/python scripts/browser_check.py --out browser-check --screenshot

clean:
	rm -rf $(VENV) demo-out browser-check .pytest_cache .mypy_cache
