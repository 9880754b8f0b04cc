# The Ansible collection echolab.lab (ansible/): its tarball, its input tests and its Molecule
# scenarios. Offline: the platform images are built here from the mmdebstrap base
# (docker/base/build.sh), the hosts' wheels on this machine; no pull, no Galaxy, collections
# from the PyPI `ansible` package in $(VENV).
# Scenarios `make molecule` runs, in order (ansible/extensions/molecule/<name>).
MOLECULE_SCENARIOS ?= default cluster
# Debian suites with a Molecule platform image (echolab/molecule:<suite>).
MOLECULE_SUITES ?= bookworm trixie
# Debian packages added to the base set for a systemd host reachable over SSH. The base's
# python3-venv is removed again in docker/molecule/Dockerfile: hosts as cloud VMs come.
MOLECULE_INCLUDE ?= systemd,systemd-sysv,dbus,sudo,openssh-server
MOLECULE_ARGS ?=
ANSIBLE_LINT_ARGS ?=
# pytest arguments for the role input tests (ansible/tests/), e.g. -k fuzz
ANSIBLE_TEST_ARGS ?=
# The venv's shellcheck (from its PyPI wheel) when it has one, else the system's.
SHELLCHECK ?= $(firstword $(wildcard $(VENV)/bin/shellcheck) shellcheck)

# The collection: built from a copy of ansible/ with the wheels the hosts need inside
# (roles/wheel_venv/files/wheelhouse/: out/wheelhouse plus pip's own wheel, which the hosts run
# to install without python3-venv), then installed into an empty collections path for Molecule.
COLLECTION_VERSION := $(shell sed -n 's/^version: *//p' ansible/galaxy.yml)
# Where the tarball is built (make test gives the VM scenario one of its own).
COLLECTION_OUT := out
COLLECTION := $(COLLECTION_OUT)/echolab-lab-$(COLLECTION_VERSION).tar.gz
COLLECTION_SRC := out/ansible/collection-src
COLLECTIONS_PATH := out/ansible/collections
# pip's wheel, fetched once from PyPI at the version of $(VENV)'s pip (out/ansible/pip; remove it
# to fetch again). Any pip that runs on Python 3.11 does; it never stays on the hosts.
PIP_WHEEL_DIR := out/ansible/pip

# Molecule runs from the collection root with the venv's tools on PATH and the installed
# collection on Ansible's collections path.
MOLECULE = cd ansible && PATH="$(abspath $(VENV))/bin:$$PATH" ANSIBLE_FORCE_COLOR=$${ANSIBLE_FORCE_COLOR:-0} \
	ANSIBLE_COLLECTIONS_PATH="$(abspath $(COLLECTIONS_PATH))" $(abspath $(VENV))/bin/molecule

.PHONY: collection collection-install ansible-test molecule molecule-image ansible-lint molecule-clean

collection: venv-infra wheelhouse ## Build the collection echolab.lab with the hosts' wheels inside (out/echolab-lab-VERSION.tar.gz)
	@[[ "$(COLLECTION_VERSION)" == "$(VERSION)" ]] || { echo "collection: ansible/galaxy.yml says \
	version $(COLLECTION_VERSION), pyproject.toml $(VERSION): make them agree" >&2; exit 1; }
	@if ! ls $(PIP_WHEEL_DIR)/pip-*.whl >/dev/null 2>&1; then \
	  $(PIP) download --quiet --no-deps --only-binary=:all: --dest $(PIP_WHEEL_DIR) \
	    "pip==$$($(PIP) --version | cut -d' ' -f2)"; fi
	@rm -rf $(COLLECTION_SRC) && mkdir -p $(COLLECTION_SRC)
	@tar -C ansible --exclude=__pycache__ --exclude=.ansible --exclude=.cache --exclude=.pytest_cache \
	  -cf - . | tar -C $(COLLECTION_SRC) -xf -
	@mkdir -p $(COLLECTION_SRC)/roles/wheel_venv/files/wheelhouse
	@cp $(WHEELHOUSE)/*.whl $(PIP_WHEEL_DIR)/pip-*.whl $(COLLECTION_SRC)/roles/wheel_venv/files/wheelhouse/
	@$(VENV)/bin/ansible-galaxy collection build --force --output-path $(COLLECTION_OUT) $(COLLECTION_SRC) >/dev/null
	@echo "collection: $(COLLECTION) ($$(du -k $(COLLECTION) | cut -f1) KiB; wheels: \
	$$(cd $(COLLECTION_SRC)/roles/wheel_venv/files/wheelhouse && echo *.whl))"

# What a user does with the tarball, into an empty collections path.
collection-install: collection
	@rm -rf $(COLLECTIONS_PATH)
	@ANSIBLE_COLLECTIONS_PATH=$(COLLECTIONS_PATH) $(VENV)/bin/ansible-galaxy collection install --offline \
	  -p $(COLLECTIONS_PATH) $(COLLECTION) >/dev/null
	@echo "collection: installed into $(COLLECTIONS_PATH)"

ansible-test: venv-infra collection molecule-image ## Role input tests: validation, injection, fuzzing, preflight, stale results, the tarball
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest ansible/tests $(ANSIBLE_TEST_ARGS)

# One image per suite: the mmdebstrap base with systemd (skipped when present), then
# docker/molecule/Dockerfile on top (cached by the engine).
molecule-image: ## Build the Molecule platform images echolab/molecule:<suite> (systemd as PID 1)
	@command -v $(DOCKER) >/dev/null && $(DOCKER) info >/dev/null 2>&1 \
	  || { echo "molecule: the Docker engine is unreachable ('$(DOCKER) info' failed)" >&2; exit 1; }
	@DOCKER=$(DOCKER) MOLECULE_INCLUDE=$(MOLECULE_INCLUDE) docker/molecule/build.sh $(MOLECULE_SUITES)

molecule: venv-infra molecule-image ansible-test collection-install ## The role input tests, then every Molecule scenario, offline (one: make molecule-<scenario>)
	@for s in $(MOLECULE_SCENARIOS); do \
	  start=$$(date +%s); \
	  ( $(MOLECULE) test -s $$s $(MOLECULE_ARGS) ) || { echo "molecule: scenario $$s FAILED" >&2; exit 1; }; \
	  echo "molecule: scenario $$s passed in $$(( $$(date +%s) - start )) s"; \
	done

molecule-%: venv-infra molecule-image collection-install ## Run one scenario, e.g. make molecule-cluster
	@start=$$(date +%s); $(MOLECULE) test -s $* $(MOLECULE_ARGS); \
	echo "molecule: scenario $* passed in $$(( $$(date +%s) - start )) s"

molecule-clean: ## Destroy the containers of every scenario (images stay)
	@for s in $(MOLECULE_SCENARIOS); do ( $(MOLECULE) destroy -s $$s >/dev/null ) || true; done

# ansible-lint sees the sources as the collection echolab.lab (a link, so nothing is copied).
LINT_COLLECTIONS := out/ansible/lint-collections
ansible-lint: venv-infra ## Lint the Ansible tree: ansible-lint (production), yamllint, ruff, shellcheck, hadolint
	@mkdir -p $(LINT_COLLECTIONS)/ansible_collections/echolab
	@ln -sfn $(abspath ansible) $(LINT_COLLECTIONS)/ansible_collections/echolab/lab
	cd ansible && PATH="$(abspath $(VENV))/bin:$$PATH" \
	  ANSIBLE_COLLECTIONS_PATH="$(abspath $(LINT_COLLECTIONS))" ansible-lint $(ANSIBLE_LINT_ARGS)
	$(VENV)/bin/yamllint --strict ansible .ansible-lint .yamllint
	$(VENV)/bin/ruff check ansible
	$(VENV)/bin/ruff format --check ansible
	$(SHELLCHECK) ansible/roles/*/files/*.sh
	$(VENV)/bin/hadolint docker/molecule/Dockerfile

lint-extra:: venv-infra
	@$(MAKE) ansible-lint
