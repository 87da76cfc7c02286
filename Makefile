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

# Interim main job until `ctxlab demo` lands: build a small checkpoint, then inspect it and generate from it.
demo: $(STAMP)
	@echo "ctxlab demo (interim): building a tiny Qwen3-architecture checkpoint, then ctxlab info + generate"
	$(BIN)/python -m ctxlab.scratch demo_out/tiny
	$(BIN)/ctxlab info demo_out/tiny
	$(BIN)/ctxlab generate demo_out/tiny --prompt "The key is 7f3a and the value is" --max-new-tokens 24

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check ctxlab tests bench

bench: $(STAMP)
	$(BIN)/python bench/bench_core.py

clean:
	rm -rf $(VENV) .pytest_cache
