# Two entry points that set everything up on a fresh machine:
#   make run    - install, then run the main study (full Fashion-MNIST search -> finalize -> register)
#   make test   - install with the test and autokeras extras, then run the test suite
#   make lint   - ruff (lint + format check), mypy on src/, import-linter's layer contracts
PYTHON ?= python3
VENV ?= .venv
STUDY ?= studies/fashion_mnist.yaml
# Fashion-MNIST is read from $HPO_DATA_DIR, the download cache, Debian's dataset-fashion-mnist, or
# downloaded. A shared/datasets folder beside the checkout is used when present.
export HPO_DATA_DIR ?= $(abspath $(wildcard ../shared/datasets))
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install run test lint
$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip

install: $(VENV)/bin/activate
	$(VENV)/bin/python -m pip install -q -e ".[test,autokeras]"

run: install
	$(VENV)/bin/hpo run $(STUDY)

test: install
	$(VENV)/bin/python -m pytest -q

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
