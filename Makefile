# echolab — plain `make` prints this menu. Every knob is `?=`; every public target says what it
# does with `## text`. Area fragments live in mk/*.mk (lab, ansible, bench).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTEST_ARGS ?=
# Extras installed into $(VENV): test tools plus the container/Ansible/Molecule tool chain.
EXTRAS ?= test,infra
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

.PHONY: help venv lint lint-extra typecheck test test-unit test-integration check clean serve

help: ## Show this menu
	@echo "echolab $(VERSION) — make TARGET [VAR=value]"
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_.-]+:.*## / {printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "Knobs: PYTHON=$(PYTHON) VENV=$(VENV) PYTEST_ARGS='$(PYTEST_ARGS)' (see README.md)"

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[$(EXTRAS)]'
	@touch $@

venv: $(VENV)/.installed ## Create .venv with the project and its test tools

lint: venv ## Lint Python (ruff), shell (shellcheck), YAML and Ansible, Dockerfiles
	$(VENV)/bin/ruff check app tests bench
	$(VENV)/bin/ruff format --check app tests bench
	@$(MAKE) lint-extra

typecheck: venv ## Type-check app/ with mypy --strict
	$(VENV)/bin/mypy

test-unit: venv ## Unit tests (no network beyond loopback)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: venv ## Integration tests: real servers and clients on loopback
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

check: lint typecheck ## Lint and type-check only

test: venv ## Everything CI runs: lint, types, unit, integration, lab (Docker) and Molecule
	@$(MAKE) lint typecheck
	$(PY) -m pytest tests/unit tests/integration $(PYTEST_ARGS)
	@$(MAKE) test-lab
	@$(MAKE) molecule

serve: venv ## Run the server in the foreground on ECHOLAB_PORT (default 7007)
	$(VENV)/bin/echolab serve

lint-extra:: venv
	shellcheck .ci/run $(wildcard scripts/*.sh docker/*/*.sh bench/*.sh)

clean: ## Remove the venv, caches and build output (not Docker images: see lab-clean)
	rm -rf $(VENV) build dist app/*.egg-info .pytest_cache .mypy_cache .ruff_cache out

include $(sort $(wildcard mk/*.mk))
