# The two commands of the README: `make test` and `make demo`. Both work on a fresh machine that
# has python3 and make: they create .venv and install the project with its dev extra first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install lint typecheck pytest docs test demo bench capture-server clean

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(INSTALLED)

install: $(INSTALLED)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

# pytest exits 5 when it collected no test: make fails on it like on any other non-zero code.
# The dev extra installs orjson, so the first run serializes with it; the second runs the wire,
# value-conversion and property tests again on the standard library's json (the backend of an
# install without the `fast` extra).
JSON_TESTS := tests/test_event.py tests/test_json.py tests/test_transport.py tests/test_client.py \
	tests/test_wire_parity.py tests/test_hostile_input.py tests/test_hooks.py
pytest: install
	$(BIN)/pytest --benchmark-disable --cov --cov-report=term $(PYTEST_ARGS)
	ANALYTICS_QUEUE_JSON=stdlib $(BIN)/pytest -q -p no:cacheprovider $(JSON_TESTS)

# The docs site: MkDocs + Material + mkdocstrings, warnings are errors, into site/ (git-ignored).
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

test: lint typecheck docs pytest

demo: install
	$(BIN)/python -m examples.flask_app.demo $(DEMO_ARGS)

bench: install
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

capture-server: install
	$(BIN)/python -m analytics_queue.testing --port 8000 --print

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov site
