# orderstream developer commands. Everything runs from .venv, created on first use with the
# Python named in .python-version (the Lambda runtime's: python3.13).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON_VERSION := $(shell cat .python-version)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
MUTATION_VENV := .venv-mutation
MUTATION_STAMP := $(MUTATION_VENV)/.installed
SITE := $(VENV)/lib/python$(PYTHON_VERSION)/site-packages
# sam build looks for python3.13 on PATH; the venv provides it.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export AWS_DEFAULT_REGION ?= eu-west-1

.PHONY: help venv test unit lint typecheck pytest build run status bench mutation schemas clean

help:
	@echo "make test       lint, type-check and run every test (creates .venv on first use)"
	@echo "make lint       ruff check + ruff format --check"
	@echo "make typecheck  mypy"
	@echo "make build      sam build"
	@echo "make schemas    regenerate schemas/ from the code"
	@echo "make run        the whole pipeline locally: broker, AWS emulator, API, mappings"
	@echo "make status     what the running local stack holds"
	@echo "make bench      benchmarks, each a ratio to a baseline measured in the same run"
	@echo "make mutation   mutation testing of the layer and handlers (tests/MUTATION.md)"
	@echo ".venv/bin/orderstream --help   replay, redrive and smoke-test a stack (AWS or local)"
	@echo "make clean      remove .venv and build output"

venv: $(STAMP) $(CHECKOV_STAMP)

$(STAMP): requirements-dev.txt constraints.txt layers/shared/requirements.txt .python-version Makefile
	@if [ ! -x $(PY) ]; then \
	  interpreter=$$(scripts/find-python $(PYTHON_VERSION)); \
	  echo "creating $(VENV) with $$interpreter"; \
	  "$$interpreter" -m venv $(VENV); \
	fi
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	@# The layer package and the repo root on the venv's path, as Lambda and the tests see them.
	printf '%s\n%s\n' "$(CURDIR)/layers/shared" "$(CURDIR)" > $(SITE)/orderstream-dev.pth
	@# The operator's command (operate/): .venv/bin/orderstream.
	printf '#!/bin/sh\nexec "%s" -m operate "$$@"\n' "$(CURDIR)/$(PY)" > $(VENV)/bin/orderstream
	chmod +x $(VENV)/bin/orderstream
	@touch $@

# checkov pins an older boto3 than aws-sam-cli: it gets a virtual environment of its own.
$(CHECKOV_STAMP): requirements-checkov.txt constraints-checkov.txt .python-version
	@if [ ! -x $(CHECKOV_VENV)/bin/python ]; then \
	  "$$(scripts/find-python $(PYTHON_VERSION))" -m venv $(CHECKOV_VENV); \
	fi
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-checkov.txt -c constraints-checkov.txt
	@touch $@

# mutmut 3.8 and aws-sam-cli disagree on click: mutation testing gets a virtual environment of
# its own, with the unit tests' dependencies and sam-cli's package alone (devstack.template
# parses YAML with it; none of its dependencies are needed for that).
$(MUTATION_STAMP): requirements-mutation.txt constraints-mutation.txt layers/shared/requirements.txt requirements-dev.txt .python-version
	@if [ ! -x $(MUTATION_VENV)/bin/python ]; then \
	  "$$(scripts/find-python $(PYTHON_VERSION))" -m venv $(MUTATION_VENV); \
	fi
	$(MUTATION_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-mutation.txt -c constraints-mutation.txt
	$(MUTATION_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps "$$(grep '^aws-sam-cli==' requirements-dev.txt)"
	@touch $@

test: lint typecheck pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# pytest exits 5 when it collected nothing: that is a failure here, never a pass. The console's
# browser test drives the system's Chromium: scripts/find-chromium finds it, or installs
# Debian's package (never a browser download, which fails offline).
pytest: $(STAMP) $(CHECKOV_STAMP)
	CHROMIUM="$$(scripts/find-chromium)" $(PY) -m pytest

# The inner loop: the fast tests only (no broker, no stack, no template tools, nothing marked
# slow), under a minute; `make test` runs them all.
unit: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests/unit

# Then bytecode that stays valid in Lambda's read-only folders (scripts/bytecode.py says why).
build: $(STAMP)
	sam build --cached --parallel
	$(PY) scripts/bytecode.py .aws-sam/build

schemas: $(STAMP)
	$(PY) -m devstack schemas

# The whole pipeline on 127.0.0.1, in the foreground; Ctrl-C stops it.
# Ports: BROKER_PORT (9092), AWS_PORT (5000), API_PORT (3000), LAMBDA_PORT (3001, Lambda's
# Invoke API for .venv/bin/orderstream --local); KAFKA_BOOTSTRAP_SERVERS uses
# your own broker instead of the embedded one.
run: $(STAMP)
	$(PY) -m devstack run

status: $(STAMP)
	$(PY) -m devstack status

# One table of ratios to baselines measured in the same run, also written to bench/README.md.
# Under 10 minutes, loopback only; not part of `make test`.
bench: $(STAMP) build
	$(PY) bench/run.py

# mutmut over the layer and the handlers, driven by the fast unit tests; under an hour, not part
# of `make test`. Its summary goes to tests/MUTATION.md.
mutation: $(MUTATION_STAMP)
	$(MUTATION_VENV)/bin/python scripts/mutation.py

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) $(MUTATION_VENV) .mutation .aws-sam .mypy_cache .ruff_cache .pytest_cache
