# prefixgpt — two commands do everything on a fresh machine:
#   make demo   set-up → prepare data → pretrain → prefix-tune → samples and scores (CPU, minutes)
#   make test   set-up (with the test-only oracles) → the test suite
# Data paths: PREFIXGPT_SHAKESPEARE, PREFIXGPT_E2E, PREFIXGPT_SST2 point the prepare scripts at local
# copies; without them they download from the official sources.
#
# Which torch wheel: TORCH_INDEX is passed to pip as an extra index. Empty (the default) installs what
# the package index gives for torch==2.13.0 (on Linux x86 that is the CUDA build, several GB). For the
# CPU-only wheel (about 200 MB), use the index PyTorch documents for it:
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu

PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
OUT         ?= out/demo
TORCH_INDEX ?=
TASKS       ?= A1
PIP_INDEX   := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)

.PHONY: setup setup-dev test test-fast demo autograder clean

# pip compiles every module it installs to bytecode, and torch has thousands: 58 s of a 2-core machine's set-up
# against 24 s without (--no-compile). The scripts import about a third of those modules, so they are
# compiled once after, by importing them (WARM), with PYTHONDONTWRITEBYTECODE lifted for that one command so
# the bytecode is written even where the environment turns that off (15 s). Measured in CHANGELOG.md, "2026-11-26 and before".
WARM := import torch, torch._dynamo, numpy, tiktoken, tiktoken_ext.openai_public, matplotlib, io; \
        matplotlib.use("Agg"); import matplotlib.pyplot as plt; plt.figure().savefig(io.BytesIO(), format="png")

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	@echo "installing requirements.txt into $(VENV) (torch is large: pip shows its progress)"
	$(PY) -m pip install $(PIP_INDEX) --no-compile --progress-bar on -r requirements.txt
	env -u PYTHONDONTWRITEBYTECODE $(PY) -c '$(WARM)'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install $(PIP_INDEX) --progress-bar on -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed

setup-dev: $(VENV)/.installed-dev

test: setup-dev
	$(PY) -m pytest -q -n auto

test-fast: setup-dev
	$(PY) -m pytest -q -n auto -m "not slow"

demo: setup
	$(PY) demo.py --out_dir=$(OUT)

# a Gradescope autograder for the course's tasks: make autograder TASKS=A1,A2 (course/make_autograder.py)
autograder: setup
	$(PY) course/make_autograder.py --tasks $(TASKS) --out autograder.zip

clean:
	rm -rf out
