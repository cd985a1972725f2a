# One command each: `make train` installs and runs the default job; `make test` installs and
# runs every test (what CI runs); `make test-quick` leaves out the end-to-end runs marked slow
# and runs the rest on two processes (the contributor loop, minutes). All install into .venv
# with the Python given by PYTHON (3.9-3.11).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: setup train test test-quick docs clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 9) <= v < (3, 12) else "estimator-gan needs Python >=3.9,<3.12 (TensorFlow 2.15); $(PYTHON) is %d.%d: run make PYTHON=python3.11 ..." % v)'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $@

train: setup
	$(PY) run_train.py $(ARGS)

test: setup
	$(PY) -m pytest tests

test-quick: setup
	$(PY) -m pytest tests -m "not slow" -n 2 --dist loadfile

docs: setup
	$(PY) -m estimator_gan.docs

clean:
	rm -rf $(VENV) runs build *.egg-info
