# `make run`: set everything up and run the main job on the embedded defaults.
# `make test`: set everything up and run the test suite (what .ci/run calls).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DB ?= .mmrag/lancedb

.PHONY: setup run test clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,llm]'
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(VENV)/bin/mmrag index data/sample/ --db $(DB)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf .mmrag reports/latest
