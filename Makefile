# Two commands for a fresh machine with Python 3 and make: `make demo`, `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONHASHSEED ?= 0
export NO_MKDOCS_2_WARNING ?= 1

.PHONY: demo test test-keras-next lint docs composition-docs bench kill-resume venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) recipes/digits_mlp.py --out runs/digits

# Lint, format and the docs build run first so that pytest's summary line closes the output.
# `-n auto`: one pytest-xdist worker per core; every test is independent of
# the others (own tmp_path, free ports, own processes).
test: $(STAMP)
	$(VENV)/bin/ruff check --quiet nnkit tests recipes bench
	$(VENV)/bin/ruff format --check --quiet nnkit tests recipes bench
	$(VENV)/bin/mkdocs build --strict --site-dir .site
	$(PY) -m pytest -n auto

# The probes of nnkit/_keras and the fast suite against Keras's newest
# pre-release, in a virtual environment of its own (not part of CI: it
# downloads keras-nightly). See docs/keras-internals.md.
NEXT_VENV ?= .venv-keras-next
test-keras-next:
	test -x $(NEXT_VENV)/bin/python || $(PYTHON) -m venv $(NEXT_VENV)
	$(NEXT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(NEXT_VENV)/bin/python -m pip install --quiet -e ".[dev]"
	$(NEXT_VENV)/bin/python -m pip uninstall --quiet -y keras
	# keras and keras-nightly share the keras/ folder: uninstalling keras on a
	# reused venv deletes keras-nightly's files, so always reinstall it.
	$(NEXT_VENV)/bin/python -m pip install --quiet --upgrade --force-reinstall --no-deps --pre keras-nightly
	$(NEXT_VENV)/bin/python -c "import keras; print('keras', keras.__version__)"
	$(NEXT_VENV)/bin/python -m pytest tests/_keras -p no:cacheprovider
	$(NEXT_VENV)/bin/python -m pytest -n auto -m "not slow" -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check nnkit tests recipes bench
	$(VENV)/bin/ruff format --check nnkit tests recipes bench

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir .site

# docs/composition.md is rendered from the composition matrix's table
# (tests/composition/_parts.py); tests/composition/test_matrix.py checks it.
composition-docs: $(STAMP)
	$(PY) -m tests.composition.render

bench: $(STAMP)
	$(PY) bench/schedule_overhead.py

# 50 SIGKILL points, resumed and compared with an uninterrupted run (docs/reliability.md).
kill-resume: $(STAMP)
	PYTHONPATH=$(CURDIR) $(PY) bench/kill_resume.py --points 50

clean:
	rm -rf $(VENV) $(NEXT_VENV) .site runs .pytest_cache
