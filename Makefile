# Quickstart targets. Both create .venv when it is missing and install the project into it.
# GPU users: install your CUDA build of torch into the venv first, or pass TORCH_SPEC, e.g.
#   make test TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.caslie-installed

.PHONY: install demo test lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

SYNTHETIC := data/synthetic/rows.jsonl

$(SYNTHETIC): $(STAMP) caslie/data/sample.py caslie/data/catalog.py
	$(PY) -m caslie.data.sample synthetic data/synthetic --train-per-task 96 --eval-per-task 16

# Text only vs UIA vs MV on synthetic rows whose labels half the time only the caption carries
# (configs/grids/demo.yaml), then its report: runs/grids/demo/report/.
demo: $(STAMP) $(SYNTHETIC)
	TOKENIZERS_PARALLELISM=false $(VENV)/bin/caslie grid configs/grids/demo.yaml
	$(VENV)/bin/caslie report runs/grids/demo --paper

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m pytest -q

clean:
	rm -rf .cache runs
