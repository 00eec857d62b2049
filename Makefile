# percept: `make run` and `make test` are the two set-up commands; each creates .venv when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# The service in embedded mode: API + in-process worker, no Redis, no GPU, the built-in models.
run: $(BIN)/.installed
	$(BIN)/percept serve

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/lint-imports  # one-way package boundaries: [tool.importlinter] in pyproject.toml
	$(BIN)/python -m pytest -q

bench: $(BIN)/.installed
	$(BIN)/python -m bench.bench

clean:
	rm -rf out runs .pytest_cache .ruff_cache
