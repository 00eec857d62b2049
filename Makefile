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

# Until the HTTP service lands (issue 3), `run` applies the built-in models locally: every built-in style and
# x4 super-resolution on the sample photo, written to out/.
SAMPLE ?= ../shared/data/content/chicago.jpg
run: $(BIN)/.installed
	@mkdir -p out
	@for m in $$($(BIN)/percept models list --json | $(BIN)/python -c "import json,sys; print(' '.join(r['name'] for r in json.load(sys.stdin) if r['kind'] == 'style'))"); do \
		$(BIN)/percept stylize --model $$m --max-side 512 $(SAMPLE) out/$$m.jpg; done
	$(BIN)/percept upscale --factor 4 $(SAMPLE) out/sr_x4.png

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(BIN)/.installed
	$(BIN)/python -m bench.bench

clean:
	rm -rf out runs .pytest_cache .ruff_cache
