# minflow course: the commands README.md names.
#   make lab    create the environment if missing, then open JupyterLab at the repository root
#   make test   unit + property tests, every chapter under nbval in quick mode, pairing check
#   make unit   the unit + property tests only (tests/)
#   make lint   ruff: lint and format check (part of make test)
#   make test-newest  `make test` in .venv-newest with the newest torch pip finds on the registry
#   make unit-oldest  `make unit` in .venv-oldest with the oldest torch the package allows
#   make ci     all three, as .ci/run does
#   make book   execute every chapter (full mode) into HTML (and PDF, if Chromium is installed) under build/
#   make students  regenerate students/ (chapters with solutions replaced by stubs)
#   make slides    the book, whose run also writes a reveal.js deck per chapter to build/slides/
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.minflow-installed
PYTEST_ARGS ?=
# pytest-xdist: one worker per core, each test file (each chapter) whole on one worker, since a
# chapter's cells share one kernel. XDIST= runs everything in one process. With several workers
# each gets one torch thread (THREADS), or the workers' thread pools fight over the cores.
XDIST  ?= -n auto --dist loadfile
THREADS ?= $(if $(strip $(XDIST)),1)
TEST_ENV := MINFLOW_QUICK=1 MPLBACKEND=Agg $(if $(THREADS),OMP_NUM_THREADS=$(THREADS))
# TORCH: the torch requirement to install, e.g. TORCH='torch==2.4.1', or TORCH=torch for the
# newest release pip finds. Empty (the default): a torch wheel that pip's find-links offer on
# this machine (a local CPU build, say) if there is one, else the registry's newest.
TORCH  ?=
# The oldest torch the package supports (pyproject.toml's floor) and the newest CI tries.
TORCH_OLDEST ?= torch==2.4.1
TORCH_NEWEST ?= torch

.PHONY: env lab lint test unit test-newest unit-oldest ci book notebooks students slides clean gpu-check FORCE

env: $(STAMP)

# The environment: a venv with minflow installed editable plus the course and test extras.
# torch is installed in the same pip command as the rest, so nothing else can swap it.
# $(VENV)/.torch records the TORCH it was made with: another TORCH reinstalls.
$(VENV)/.torch: FORCE
	@mkdir -p $(VENV)
	@echo '$(TORCH)' | cmp -s - $@ || echo '$(TORCH)' > $@

$(STAMP): pyproject.toml $(VENV)/.torch
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
ifeq ($(strip $(TORCH)),)
	-$(PY) -m pip install --quiet --no-index --no-deps torch 2>/dev/null
	$(PY) -m pip install --quiet -e ".[course,test]"
else
	$(PY) -m pip install --quiet --upgrade "$(TORCH)" -e ".[course,test]"
endif
	$(PY) -c "import torch; print('torch', torch.__version__, 'in $(VENV)')"
	touch $(STAMP)

# JupyterLab at the repository root (chapters/, students/ and README side by side); as root (a
# container, say) Jupyter refuses to start without --allow-root.
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=. $(LAB_ARGS)

test: lint
	$(TEST_ENV) $(PY) -m pytest chapters tests --nbval-lax --nbval-cell-timeout=900 $(XDIST) $(PYTEST_ARGS)

# ruff: lint and formatting of the package, tests, tools and benchmarks (settings in pyproject.toml)
lint: $(STAMP)
	$(PY) -m ruff check minflow tests tools benchmarks
	$(PY) -m ruff format --check minflow tests tools benchmarks

unit: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest tests $(XDIST) $(PYTEST_ARGS)

# The other two environments CI proves, each in its own venv. The newest leg hides this
# machine's local wheels from pip (an empty find-links folder), as on a newcomer's machine.
test-newest:
	PIP_FIND_LINKS=$$(mktemp -d) $(MAKE) test VENV=.venv-newest TORCH='$(TORCH_NEWEST)'

unit-oldest:
	$(MAKE) unit VENV=.venv-oldest TORCH='$(TORCH_OLDEST)'

ci: test test-newest unit-oldest

# Regenerate every chapters/NN_*.ipynb from its jupytext source (no outputs).
notebooks: $(STAMP)
	$(PY) tools/notebooks.py sync
	$(PY) tools/notebooks.py student

# Student versions only (students/NN_*.ipynb: solutions replaced by stubs with a hint).
students: $(STAMP)
	$(PY) tools/notebooks.py student

# The book also writes a reveal.js deck per chapter (executed, so with its figures).
slides: book

book: $(STAMP)
	mkdir -p build
	MINFLOW_QUICK=0 $(PY) tools/notebooks.py book --out build

# On a machine with a CUDA GPU: every chapter in full mode, a short DDP training on all GPUs and
# the benchmarks, one Markdown table of times and results (~10 min); without a GPU it says so, status 2.
gpu-check: $(STAMP)
	$(PY) tools/gpu_check.py

clean:
	rm -rf build .pytest_cache
