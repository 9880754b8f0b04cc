# Ansible roles and Molecule scenarios (issue 5). Offline: the platform images are built here
# from the mmdebstrap base (docker/base/build.sh), the project's wheels on this machine; no pull,
# no Galaxy, collections from the PyPI `ansible` package in $(VENV).
# Scenarios `make molecule` runs, in order (ansible/molecule/<name>).
MOLECULE_SCENARIOS ?= default cluster no-reuseaddr
# Debian suites with a Molecule platform image (echolab/molecule:<suite>).
MOLECULE_SUITES ?= bookworm trixie
# Debian packages added to the base set for a systemd host Ansible can drive.
MOLECULE_INCLUDE ?= systemd,systemd-sysv,dbus,python3-apt,sudo
MOLECULE_ARGS ?=
ANSIBLE_LINT_ARGS ?=

# Molecule runs from ansible/, with the venv's pytest, ansible-playbook and molecule on PATH.
MOLECULE = cd ansible && PATH="$(abspath $(VENV))/bin:$$PATH" ANSIBLE_FORCE_COLOR=$${ANSIBLE_FORCE_COLOR:-0} \
	$(abspath $(VENV))/bin/molecule

.PHONY: molecule molecule-image ansible-wheelhouse ansible-lint molecule-clean

# The roles install from the shared wheelhouse (mk/wheels.mk).
ansible-wheelhouse: wheelhouse

# One image per suite: the mmdebstrap base with systemd (skipped when present), then
# docker/molecule/Dockerfile on top (cached by the engine).
molecule-image: ## Build the Molecule platform images echolab/molecule:<suite> (systemd as PID 1)
	@command -v $(DOCKER) >/dev/null && $(DOCKER) info >/dev/null 2>&1 \
	  || { echo "molecule: the Docker engine is unreachable ('$(DOCKER) info' failed)" >&2; exit 1; }
	@DOCKER=$(DOCKER) MOLECULE_INCLUDE=$(MOLECULE_INCLUDE) docker/molecule/build.sh $(MOLECULE_SUITES)

molecule: venv-infra molecule-image ansible-wheelhouse ## Run every Molecule scenario, offline (one: make molecule-<scenario>)
	@for s in $(MOLECULE_SCENARIOS); do \
	  start=$$(date +%s); \
	  ( $(MOLECULE) test -s $$s $(MOLECULE_ARGS) ) || { echo "molecule: scenario $$s FAILED" >&2; exit 1; }; \
	  echo "molecule: scenario $$s passed in $$(( $$(date +%s) - start )) s"; \
	done

molecule-%: venv-infra molecule-image ansible-wheelhouse ## Run one scenario, e.g. make molecule-cluster
	$(MOLECULE) test -s $* $(MOLECULE_ARGS)

molecule-clean: ## Destroy the containers of every scenario (images stay)
	@for s in $(MOLECULE_SCENARIOS); do ( $(MOLECULE) destroy -s $$s >/dev/null ) || true; done

ansible-lint: venv-infra ## Lint the Ansible tree: ansible-lint (production), yamllint, ruff, hadolint
	cd ansible && PATH="$(abspath $(VENV))/bin:$$PATH" ansible-lint $(ANSIBLE_LINT_ARGS)
	$(VENV)/bin/yamllint --strict ansible .ansible-lint .yamllint
	$(VENV)/bin/ruff check ansible/tests
	$(VENV)/bin/ruff format --check ansible/tests
	$(VENV)/bin/hadolint docker/molecule/Dockerfile

lint-extra:: venv-infra
	@$(MAKE) ansible-lint
