# minflow course: the commands README.md names.
#   make lab    create the environment if missing, then open JupyterLab on chapters/
#   make test   unit + property tests, every chapter under nbval in quick mode, pairing check
#   make book   execute every chapter (full mode) into HTML under build/
#   make students  regenerate students/ (chapters with solutions replaced by stubs)
#   make slides    the book, whose run also writes a reveal.js deck per chapter to build/slides/
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.minflow-installed
PYTEST_ARGS ?=

.PHONY: env lab test book notebooks students slides clean

env: $(STAMP)

# The environment: a venv with minflow installed editable plus the course and test extras.
# torch is not pinned. If this machine offers a local torch wheel through pip's find-links
# (a CPU build, say), it is taken first, without asking the index; anywhere else this step
# finds nothing and pip takes the registry's default torch.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	-$(PY) -m pip install --quiet --no-index --no-deps torch 2>/dev/null
	$(PY) -m pip install --quiet -e ".[course,test]"
	touch $(STAMP)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab chapters/

test: $(STAMP)
	MINFLOW_QUICK=1 MPLBACKEND=Agg $(PY) -m pytest tests chapters --nbval-lax $(PYTEST_ARGS)

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
	MINFLOW_QUICK=0 MPLBACKEND=Agg $(PY) tools/notebooks.py book --out build

clean:
	rm -rf build .pytest_cache
