# The two commands of the README: `make demo` and `make test`. Both set up .venv when needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip==26.3"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: setup
	$(BIN)/gdmix demo

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) build *.egg-info demo-output
