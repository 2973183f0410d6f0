# SIIM-ISIC melanoma toolkit. On a fresh clone `make demo` and `make test` are all you need:
# every target installs the toolkit into .venv first if it is not there yet.
PY      := .venv/bin/python
KIT     := $(PY) -m kit.cli
STAMP   := .venv/.installed
KPY     := .venv-kaggle/bin/python
KSTAMP  := .venv-kaggle/.installed
DATA    ?= uda
EXP     ?=
ENS     ?= demo
IMG     ?=
ACC     ?=
MSG     ?=
PORT    ?= 8765
COMP    ?=
SAMPLE  ?=
DRYRUN_ARGS ?=
SCOPE   ?=

# A target that needs a variable says which, with an example, instead of a bare argparse line.
need = @test -n "$($(1))" || { echo "error: make $@ needs $(1)=..., e.g. make $@ $(1)=$(2)" >&2; exit 2; }

.PHONY: help install venv-kaggle test-kaggle-images demo test test-deep docs lint bench data render run push-kernel \
        status wait pull blend report submit submissions predict emulator dryrun clean clean-runs clean-all \
        device-check preflight mutation

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/' | expand -t 16

$(STAMP): setup.py
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)  ## make .venv and install the toolkit (editable) with its test extras

$(KSTAMP): setup.py kit/kaggle/images.py
	test -x $(KPY) || python3 -m venv .venv-kaggle
	$(KPY) -m pip install -q --upgrade pip
	python3 kit/kaggle/images.py > .venv-kaggle/requirements.txt
	$(KPY) -m pip install -q -r .venv-kaggle/requirements.txt
	$(KPY) -m pip install -q --no-deps -e .
	touch $(KSTAMP)

venv-kaggle: $(KSTAMP)  ## the second environment: the package versions of Kaggle's images (kit/kaggle/images.py)

test-kaggle-images: $(KSTAMP)  ## the tiny TPU and GPU rehearsals under Kaggle's image versions
	$(KPY) -m pytest tests/test_accelerators.py -k rehearsed -p no:cacheprovider

demo: $(STAMP)  ## the whole loop offline: import sample, render+run 2 experiments, blend, report (DATA=uda|synth)
	$(PY) -m kit.demo --data $(DATA)

test: $(STAMP) $(KSTAMP)  ## the test suite (real TensorFlow, real kaggle client), then the rehearsals under Kaggle's versions
	$(PY) -m pytest tests
	$(MAKE) --no-print-directory test-kaggle-images

test-deep: $(STAMP)  ## the deeper profiles only (tests marked deep: larger property budgets, full sizes)
	$(PY) -m pytest tests -m deep

mutation: $(STAMP)  ## mutation testing of the guarding modules (mutmut, slow) -> build/mutation/report.md (SCOPE=kaggle ...)
	$(PY) -m bench.mutation $(SCOPE)

docs: $(STAMP)  ## regenerate docs/config.md, docs/make-targets.md and the generated blocks of README.md and docs/
	$(PY) -m kit.docs

lint: $(STAMP)  ## ruff over all code
	.venv/bin/ruff check kit kernels tests bench

bench: $(STAMP)  ## input pipeline, blend, AUC engine and predict figures -> bench/results.json
	$(PY) -m bench.run

data: $(STAMP)  ## import the vendored real sample (DATA=uda) or synthesise data (DATA=synth) into data/
	$(PY) -m kit.demo --data $(DATA) --only-data

device-check: $(STAMP)  ## on a GPU machine: the kernel's route under both backends -> bench/device_check.json
	$(PY) -m bench.device_check

preflight: $(STAMP)  ## rehearse EXP on its target's simulated topology (ACC=NvidiaTeslaT4 to change)
	$(call need,EXP,experiments/demo-scratch.toml)
	$(KIT) preflight $(EXP) $(if $(ACC),--accelerator $(ACC))

render: $(STAMP)  ## render EXP=experiments/x.toml into build/kernels/<slug>/
	$(call need,EXP,experiments/demo-scratch.toml)
	$(KIT) render $(EXP)

run: $(STAMP)  ## render and run EXP locally into runs/<name>/v<N>/ (the local backend)
	$(call need,EXP,experiments/demo-scratch.toml)
	$(KIT) run $(EXP)

push-kernel: $(STAMP)  ## render and push EXP to Kaggle (TPU v5e-8 by default; ACC=NvidiaTeslaT4 to change)
	$(call need,EXP,experiments/demo-scratch.toml)
	$(KIT) push $(EXP) $(if $(ACC),--accelerator $(ACC))

status: $(STAMP)  ## table of every pushed run and its Kaggle status
	$(KIT) status

wait: $(STAMP)  ## poll until every pushed run has finished
	$(KIT) status --wait

pull: $(STAMP)  ## download and verify the outputs of finished runs into runs/<name>/v<N>/
	$(KIT) pull

blend: $(STAMP)  ## blend the runs of ensembles/$(ENS).toml -> ensembles/$(ENS)/submission.csv + report
	$(KIT) blend $(ENS)

report: $(STAMP)  ## leaderboard of all runs and the answers (best backbone, best from-scratch CNN)
	$(KIT) report

submit: $(STAMP)  ## validate and submit ensembles/$(ENS)/submission.csv, then wait for the score
	$(KIT) submit ensembles/$(ENS)/submission.csv $(if $(SAMPLE),--sample $(SAMPLE)) $(if $(MSG),--message "$(MSG)")

submissions: $(STAMP)  ## list submissions with their scores
	$(KIT) submissions

predict: $(STAMP)  ## probability that IMG (file(s) or folder) is malignant, with the $(ENS) ensemble
	$(call need,IMG,path/to/lesion.jpg)
	$(KIT) predict $(IMG) --ensemble $(ENS)

emulator: $(STAMP)  ## start the Kaggle emulator on 127.0.0.1:$(PORT) (COMP=competition data folder)
	$(KIT) emulator --port $(PORT) $(if $(COMP),--competition-dir $(COMP))

dryrun: $(STAMP)  ## the real Kaggle path against the emulator: push, wait, pull, blend, submit (docs/dryrun.md)
	$(PY) -m kit.kaggle.dryrun $(DRYRUN_ARGS)

clean:  ## remove what can be rebuilt: build/, generated data/synth*, data/uda*, bench results, caches
	rm -rf build data/synth* data/uda* bench/results.json .pytest_cache .ruff_cache
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

clean-runs:  ## DELETES runs/ (trained and pulled Kaggle outputs) and ensembles/*/ (blends, submissions)
	rm -rf runs ensembles/*/

clean-all: clean clean-runs  ## clean + clean-runs + DELETES .kit/ (the ledger of pushes and submissions)
	rm -rf .kit
