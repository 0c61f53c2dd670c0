# Two commands do all set-up on a fresh machine (see README):
#   make run    -> set up, then run the whole pipeline on the embedded default
#   make test   -> set up, then run the test suite (fast tests, then the e2e mark)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/libra_ray/torch_extensions
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0
CONFIG ?= jobs/quickstart.yaml

.PHONY: setup run test test-fast test-e2e bench lock clean
setup:
	@bash scripts/setup.sh

run: setup
	$(VENV)/bin/libra-ray run --config $(CONFIG)

test: setup
	@mkdir -p test-results
	$(PY) -m pytest -q --junitxml=test-results/fast.xml
	$(PY) -m pytest -q -m e2e --junitxml=test-results/e2e.xml

test-fast: setup
	$(PY) -m pytest -q

test-e2e: setup
	$(PY) -m pytest -q -m e2e

bench: setup
	$(PY) -m benchmarks.run_all --quick

lock: setup
	{ head -2 constraints.txt; $(PY) -m pip freeze | grep -v -iE '^(torch==|-e |libra.ray)'; echo 'torch==2.13.0'; } > constraints.new && mv constraints.new constraints.txt

clean:
	rm -rf runs test-results .pytest_cache
