# garminsync developer tasks. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
# The one source of truth for the dependency: the PEP 723 header of garminsync.py.
DEPS   := $(shell sed -n '/^# \/\/\/ script/,/^# \/\/\/$$/p' garminsync.py | grep -o '"garminconnect[^"]*"' | tr -d '"')

.PHONY: test lint venv clean

$(VENV)/.installed: garminsync.py tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet '$(DEPS)' -r tests/requirements.txt
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VPY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
