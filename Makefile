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
pytest: install
	$(BIN)/pytest --benchmark-disable --cov --cov-report=term $(PYTEST_ARGS)

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
