# Real Linux VMs under qemu (docs/vm.md): an offline Debian image built with mmdebstrap from the
# host's apt sources, VMs booted from qcow2 overlays on it, SSH on forwarded loopback ports, a
# private link between the VMs inside qemu, an Ansible inventory under out/. Then the installed
# collection's playbooks and testinfra suite on them, with the very commands ansible/README.md
# gives for real hosts (the Molecule scenario `vm` runs these targets: one path for both).
# Debian suite of the image (bookworm; trixie boots too).
VM_SUITE ?= bookworm
VM_IMAGES ?= out/vm/images
# State of the running set: overlays, consoles, known_hosts, inventory.yml.
VM_STATE ?= out/vm/run
# The set: NAME:GROUP[,GROUP], in boot order (the first VM hosts the private link's hub); a
# name is never a group's (Ansible's `hosts: server` would then reach that host alone). The
# loadgen VM is also a server, the negative control (VM_HOST_VARS): a third VM would cost a
# boot and its share of two host cores.
VM_SET ?= server1:server loadgen1:loadgen,server
# Host variables written into the inventory, NAME:KEY=VALUE (VALUE as JSON when it is): the
# negative control's service without SO_REUSEADDR; 8 load clients (64 time out under emulation).
VM_HOST_VARS ?= loadgen1:echo_server_reuseaddr=false loadgen1:echo_loadgen_clients=8
# Per VM. Measured here (docs/vm.md): -smp 2 boots and converges faster than 1 even with two
# VMs on two host cores.
VM_SMP ?= 2
VM_MEMORY ?= 1024
# The login user made at boot (passwordless sudo, the key in out/vm/ssh/).
VM_USER ?= debian
# auto: KVM when a guest really boots under it (probed once, cached), else TCG.
VM_ACCEL ?= auto
VM_BOOT_TIMEOUT ?= 600
# `make vm-ssh VM=loadgen1`; VM_CMD runs a command instead of a shell.
VM ?= server1
VM_CMD ?=
# More ansible-playbook arguments for vm-site and vm-restart (e.g. --skip-tags echo_loadgen_run).
VM_ANSIBLE_ARGS ?=

VMCTL = $(PYTHON) vm/vmctl.py --state $(VM_STATE) --image $(VM_IMAGES)/$(VM_SUITE)
VM_INVENTORY = $(abspath $(VM_STATE))/inventory.yml
# The installed collection's testinfra suite (make collection-install puts it there).
VM_TESTS = $(abspath $(COLLECTIONS_PATH))/ansible_collections/echolab/lab/extensions/molecule/tests
# What a user's shell has after ansible/README.md's set-up: the venv's tools first on PATH
# (testinfra runs ansible-inventory from there) and the installed collection.
VM_ENV = PATH="$(abspath $(VENV))/bin:$$PATH" ANSIBLE_COLLECTIONS_PATH="$(abspath $(COLLECTIONS_PATH))" \
	ANSIBLE_FORCE_COLOR=$${ANSIBLE_FORCE_COLOR:-0}

# The commands qemu's VMs need, from Debian's packages (mk/host.mk). qemu-utils is pinned to the
# version of the qemu-system-common apt installs: a host may carry a newer qemu-utils (a
# backport whose Breaks: qemu-system-common (<< 1:8.0) would make apt remove it, qemu-img with
# it); nothing else depends on the newer one.
VM_HOST_TOOLS := qemu-system-x86_64 qemu-img mke2fs ssh ssh-keygen
HOST_TOOLS += $(VM_HOST_TOOLS)
VM_QEMU_APT_ARGS = --no-install-recommends --allow-downgrades \
	qemu-utils=$$(apt-cache policy qemu-system-common | sed -n 's/^ *Candidate: //p')
HOST_PACKAGE_qemu-system-x86_64 := qemu-system-x86
HOST_APT_ARGS_qemu-system-x86_64 = $(VM_QEMU_APT_ARGS)
HOST_PACKAGE_qemu-img := qemu-utils
HOST_APT_ARGS_qemu-img = $(VM_QEMU_APT_ARGS)
HOST_PACKAGE_mke2fs := e2fsprogs
HOST_PACKAGE_ssh := openssh-client
HOST_PACKAGE_ssh-keygen := openssh-client

.PHONY: vm-host-packages vm-image vm-boot vm-site vm-up vm-check vm-restart vm-testinfra vm-verify \
	vm-ssh vm-status vm-down vm-clean molecule-vm test-vm

##@ Real VMs (qemu)

vm-host-packages: $(addprefix host-tool-,mmdebstrap $(VM_HOST_TOOLS)) ## Install qemu, qemu-img, mmdebstrap, ssh from Debian's packages when missing (root or sudo -n)

vm-image: vm-host-packages ## Build the offline Debian VM image (VM_SUITE), cached by its recipe's hash
	@vm/build-image.sh --suite $(VM_SUITE) --out $(VM_IMAGES)

vm-boot: vm-image ## Boot the VMs (VM_SET), wait for SSH, write out/vm/run/inventory.yml (VM_STATE)
	@$(VMCTL) up $(foreach v,$(VM_SET),--vm $(v)) $(foreach v,$(VM_HOST_VARS),--host-var $(v)) \
	  --user $(VM_USER) --smp $(VM_SMP) --memory $(VM_MEMORY) --accel $(VM_ACCEL) \
	  --boot-timeout $(VM_BOOT_TIMEOUT)

# The steps on running VMs, without prerequisites (vm-up and vm-verify bring them; the Molecule
# scenario `vm` runs them after `make molecule-vm` installed the collection).
vm-site: ## Run echolab.lab.site on the running VMs (the collection installed: make collection-install)
	$(VM_ENV) ansible-playbook -i $(VM_INVENTORY) echolab.lab.site $(VM_ANSIBLE_ARGS)

vm-check: ## Check the running VMs: login and sudo, systemd, Python, the private link, no way out
	@$(VMCTL) check

vm-restart: ## Run echolab.lab.verify_restart on the running VMs: SO_REUSEADDR and the negative control
	$(VM_ENV) ansible-playbook -i $(VM_INVENTORY) echolab.lab.verify_restart $(VM_ANSIBLE_ARGS)

vm-testinfra: ## Run the collection's testinfra suite on the running VMs over SSH, as the user with sudo
	$(VM_ENV) pytest --ansible-inventory=$(VM_INVENTORY) $(VM_TESTS)

vm-up: venv-infra collection-install vm-boot ## Boot the VMs, write the inventory, run echolab.lab.site on them
	@$(MAKE) vm-site

vm-verify: ## On the VMs of vm-up: vm-check, verify_restart (with the negative control), testinfra
	@$(MAKE) vm-check vm-restart vm-testinfra

vm-ssh: ## SSH into a running VM as its user (VM=server1|loadgen1, VM_CMD='...' to run one command)
	@$(VMCTL) ssh $(VM) $(if $(VM_CMD),-- $(VM_CMD))

vm-status: ## The running VMs, their SSH ports and private-link addresses
	@$(VMCTL) status

vm-down: ## End every VM of the set (VM_STATE); nothing is left running, after a failure too
	@$(VMCTL) down

vm-clean: vm-down ## vm-down, then remove the VM images, the state and the SSH key (out/vm)
	rm -rf out/vm

# The Molecule scenario (ansible/extensions/molecule/vm): the steps above, each a make target.
# An explicit rule: it needs no container image, unlike molecule-% (mk/ansible.mk).
molecule-vm: venv-infra collection-install ## The Molecule scenario vm: boot, site, idempotence, verify_restart, testinfra, down (what make test runs)
	@start=$$(date +%s); $(MOLECULE) test -s vm $(MOLECULE_ARGS); \
	echo "molecule: scenario vm passed in $$(( $$(date +%s) - start )) s"

test-vm: venv-infra ## VM tests of vmctl itself: boot two VMs, check them over SSH, failed boots, tear down (slow)
	$(PY) -m pytest tests/vm $(PYTEST_ARGS)

lint-extra:: venv
	$(VENV)/bin/shellcheck vm/*.sh vm/guest/echolab-identity
	$(VENV)/bin/ruff check vm
	$(VENV)/bin/ruff format --check vm
