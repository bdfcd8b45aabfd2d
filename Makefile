# Two commands for a fresh machine with Python 3 and make: `make demo`, `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONHASHSEED ?= 0
export NO_MKDOCS_2_WARNING ?= 1

.PHONY: demo test lint docs bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) recipes/digits_mlp.py --out runs/digits

# The docs build runs first so that pytest's summary line closes the output.
test: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir .site
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check nnkit tests recipes bench

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir .site

bench: $(STAMP)
	$(PY) bench/schedule_overhead.py

clean:
	rm -rf $(VENV) .site runs .pytest_cache
