# percept: `make run` and `make test` are the two set-up commands; each creates .venv when missing.
# percept needs Python 3.11 (pyproject's requires-python): python3.11 when installed, else python3; override
# with `make test PYTHON=/path/to/python3.11`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench clean distclean

# A venv made by another Python (or a failed install) is removed and made again, never reused half-broken.
$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' || { \
	  echo "percept needs Python 3.11; $(PYTHON) is $$($(PYTHON) --version 2>&1)."; \
	  echo "Install python3.11 (e.g. apt-get install python3.11-venv, or pyenv) and run: make $(MAKECMDGOALS) PYTHON=python3.11"; \
	  exit 1; }
	@if [ -x $(BIN)/python ] && ! $(BIN)/python -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then \
	  echo "removing $(VENV): it was made with another Python"; rm -rf $(VENV); fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' || { rm -f $@; echo "pip install failed; fix the error above and run make again"; exit 1; }
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
	$(BIN)/python -m bench.load --mode both --size 256 --concurrency 1,4 --requests 48
	$(BIN)/python -m bench.worker --size 512 --jobs 32

clean:
	rm -rf out runs .pytest_cache .ruff_cache

# Also the virtualenv: the next `make run` / `make test` builds it again.
distclean: clean
	rm -rf $(VENV)
