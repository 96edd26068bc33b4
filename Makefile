# Two commands for a newcomer (see README): `make quickstart` and `make test`.
# Each creates .venv from requirements.txt on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DGL_VENV := .venv-dgl
DGL_PY := $(DGL_VENV)/bin/python

# pip install -r $(2) into the interpreter $(1), robust to a dropped connection: pip resumes a
# broken download in place (--resume-retries) and the whole install is tried up to 4 times, 20 s
# apart (wheels already fetched come from pip's cache). The DGL environment fetches about 2.5 GB
# of CUDA wheels from PyPI (torch 2.2.1 has no CPU build there), where one dropped connection
# used to fail the build.
define pip_install
	for attempt in 1 2 3 4; do \
	  $(1) -m pip install -q --retries 10 --resume-retries 30 -r $(2) && break; \
	  if [ $$attempt = 4 ]; then echo "pip install -r $(2) failed 4 times: check the network to PyPI" >&2; exit 1; fi; \
	  echo "pip install -r $(2) failed (attempt $$attempt of 4); retrying in 20 s" >&2; sleep 20; \
	done
endef

.PHONY: quickstart test test-fast test-dgl dgl-env lint reproduce-cpu reproduce-wired check-reference

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(call pip_install,$(PY),requirements.txt)
	touch $@

# Train the DNW quickstart (digits, no download) and print its accuracy. --overwrite replaces
# this run's own folders (checkpoints/quickstart/base=static_dnw, runs/quickstart/...) and
# nothing else: the random-graph comparison and every other run are left as they are.
QUICKSTART_ARGS ?=
quickstart: $(VENV)/.installed
	$(PY) main.py app:apps/quickstart/static_dnw.yml --overwrite $(QUICKSTART_ARGS)

# Every test of the main environment: unit tests and the end-to-end ones (marked slow). The DGL
# backend's tests need their own environment: make test-dgl (CI runs both: .ci/run).
test: $(VENV)/.installed
	$(PY) -m pytest -q tests

# The unit tests alone (under 3 minutes on 2 cores): models, the contract, the loop with a toy
# model, checkpoints and resume state in one process.
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow" tests

# The DGL environment (graph_backend: dgl / --use_dgl): DGL 2.1.0 runs only with torch <= 2.2.1,
# so it has its own virtualenv, .venv-dgl, from requirements-dgl.txt.
$(DGL_VENV)/.installed: requirements-dgl.txt
	test -x $(DGL_PY) || $(PYTHON) -m venv $(DGL_VENV)
	$(DGL_PY) -m pip install -q --upgrade pip
	$(call pip_install,$(DGL_PY),requirements-dgl.txt)
	touch $@

dgl-env: $(DGL_VENV)/.installed

# The DGL backend's tests and the fast_eval tests (dense/sparse/dgl) on torch 2.2, in the DGL
# environment (about 5 GB: torch 2.2.1's CUDA wheels).
test-dgl: $(DGL_VENV)/.installed
	DGLBACKEND=pytorch $(DGL_PY) -m pytest -q tests/dgl tests/models/test_fast_eval.py

# The numbers of the authors' release, from the fixtures in tests/fixtures (see their README).
check-reference: $(VENV)/.installed
	$(PY) tests/check_reference.py

lint: $(VENV)/.installed
	$(PY) -m pip install -q ruff && $(PY) -m ruff check . && $(PY) -m ruff format --check .

# Issue 8's CPU protocol on real Fashion-MNIST (bench/reproduce.py): static rows 5 epochs,
# discrete-time rows 3, seeds 0 and 1, a 20,000-image training subset. Writes
# fig/results_fashion_mnist.{md,png} and wiring figures; a rerun skips finished runs.
# The full protocol on a GPU: $(PY) bench/reproduce.py --protocol gpu
reproduce-cpu: $(VENV)/.installed
	@test -d /usr/share/datasets/fashion-mnist || test -d datasets/fashion-mnist || { \
	  echo "Fashion-MNIST not found: run 'sudo apt-get install -y dataset-fashion-mnist'" \
	  "(or put the four *-ubyte.gz files in datasets/fashion-mnist)"; exit 2; }
	$(PY) bench/reproduce.py --protocol cpu

# DNW against a random wiring on torchvision's MobileNetV2 x0.5 (its 1x1 convolutions wired,
# bench/reproduce_wired.py): 10,000 Fashion-MNIST training images, 12 epochs, seeds 0 and 1,
# and the unwired network as reference. Writes fig/results_wired_mobilenet_v2_fashion_mnist.*
reproduce-wired: $(VENV)/.installed
	@test -d /usr/share/datasets/fashion-mnist || test -d datasets/fashion-mnist || { \
	  echo "Fashion-MNIST not found: run 'sudo apt-get install -y dataset-fashion-mnist'" \
	  "(or put the four *-ubyte.gz files in datasets/fashion-mnist)"; exit 2; }
	$(PY) bench/reproduce_wired.py --protocol cpu
