# The two set-up commands on a fresh machine:
#   make demo   -> installs into .venv, then runs `steerinterp demo` on the embedded model
#   make test   -> installs into .venv, then runs the test suite
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.steerinterp-installed
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	bash scripts/install.sh
	touch $(STAMP)

demo: install
	$(VENV)/bin/steerinterp demo --out $(DEMO_OUT)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check steerinterp tests benchmarks examples

bench: install
	$(PY) benchmarks/generation.py

clean:
	rm -rf $(VENV) .pytest_cache
