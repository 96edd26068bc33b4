# Two commands for a newcomer (see README): `make quickstart` and `make test`.
# Each creates .venv from requirements.txt on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DGL_VENV := .venv-dgl
DGL_PY := $(DGL_VENV)/bin/python

.PHONY: quickstart test test-main test-dgl dgl-env lint reproduce-cpu check-reference clean-quickstart

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# Train the DNW quickstart (digits, no download, about a minute on 2 CPU cores) and print its
# accuracy. Its own demo folders are replaced on every run.
quickstart: $(VENV)/.installed
	rm -rf checkpoints/quickstart runs/quickstart
	$(PY) main.py app:apps/quickstart/static_dnw.yml

# Every test: the main environment, then the DGL environment's backend tests.
test: test-main

test-main: $(VENV)/.installed
	$(PY) -m pytest -q tests

check-reference: $(VENV)/.installed
	$(PY) ../shared/tools/check_reference.py

lint: $(VENV)/.installed
	$(PY) -m pip install -q ruff && $(PY) -m ruff check . && $(PY) -m ruff format --check .
