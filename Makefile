# SIIM-ISIC melanoma toolkit. `make demo` and `make test` are all a fresh clone needs.
PY      := .venv/bin/python
KIT     := .venv/bin/kit
STAMP   := .venv/.installed
DATA    ?= uda
EXP     ?=
ENS     ?= demo
IMG     ?=

.PHONY: help install demo test lint bench render run push-kernel status pull blend report submit submissions predict emulator clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): setup.py
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)  ## make .venv and install the toolkit editable with its test extras

test: $(STAMP)  ## run the test suite (real TensorFlow, real kaggle client, emulator)
	$(PY) -m pytest -q tests

lint: $(STAMP)  ## ruff over the code
	.venv/bin/ruff check kit kernels tests bench

clean:  ## remove build outputs, runs and local data (keeps .venv)
	rm -rf build runs .kit data/synth* data/uda* bench/results.json
