# prefixgpt — two commands do everything on a fresh machine:
#   make demo   set-up → prepare data → pretrain → prefix-tune → samples and scores (CPU, minutes)
#   make test   set-up → the test suite
# Data paths: PREFIXGPT_SHAKESPEARE, PREFIXGPT_E2E, PREFIXGPT_SST2 point the prepare scripts at local
# copies; without them they download from the official sources.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
OUT    ?= out/demo

.PHONY: setup test demo clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) demo.py --out_dir=$(OUT)

clean:
	rm -rf out
