# Two entry points on a fresh machine: `make book` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PROFILE ?= quick

.PHONY: test book venv clean

$(VENV)/.installed-%: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$*]'
	touch $@

venv: $(VENV)/.installed-dev,book

test: $(VENV)/.installed-dev,book
	$(PY) -m pytest -q

book: $(VENV)/.installed-book
	$(VENV)/bin/hessbatch book --profile $(PROFILE)

clean:
	rm -rf $(VENV) _build results
