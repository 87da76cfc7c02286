# Two entry points: `make demo` and `make test`. Both create .venv and install the pinned CPU torch first,
# so that no requirement can pull a multi-GB CUDA build on a CPU machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

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
