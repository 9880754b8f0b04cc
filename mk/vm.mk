# Real Linux VMs under qemu (docs/vm.md): an offline Debian image built with mmdebstrap from the
# host's apt sources, VMs booted from qcow2 overlays on it, SSH on forwarded loopback ports, a
# private link between the VMs inside qemu, an Ansible inventory under out/.
# Debian suite of the image (bookworm; trixie boots too).
VM_SUITE ?= bookworm
VM_IMAGES ?= out/vm/images
# State of the running set: overlays, consoles, known_hosts, inventory.yml.
VM_STATE ?= out/vm/run
# The set: NAME:GROUP, in boot order (the first VM hosts the private link's hub).
VM_SET ?= server:server loadgen:loadgen
# Per VM. Measured here (docs/vm.md): -smp 2 boots and converges faster than 1 even with two
# VMs on two host cores.
VM_SMP ?= 2
VM_MEMORY ?= 1024
# The login user made at boot (passwordless sudo, the key in out/vm/ssh/).
VM_USER ?= debian
# auto: KVM when a guest really boots under it (probed once, cached), else TCG.
VM_ACCEL ?= auto
VM_BOOT_TIMEOUT ?= 600
# `make vm-ssh VM=loadgen`; VM_CMD runs a command instead of a shell.
VM ?= server
VM_CMD ?=

VMCTL = $(PYTHON) vm/vmctl.py --state $(VM_STATE) --image $(VM_IMAGES)/$(VM_SUITE)

.PHONY: vm-host-packages vm-image vm-up vm-verify vm-ssh vm-status vm-down vm-clean test-vm

vm-host-packages: ## Install qemu, qemu-img and mmdebstrap from Debian's packages when missing (root or sudo -n)
	@vm/host-packages.sh

vm-image: vm-host-packages ## Build the offline Debian VM image (VM_SUITE), cached by its recipe's hash
	@vm/build-image.sh --suite $(VM_SUITE) --out $(VM_IMAGES)

vm-up: vm-image ## Boot the VMs (VM_SET), wait for SSH, write out/vm/run/inventory.yml (VM_STATE)
	@$(VMCTL) up $(foreach v,$(VM_SET),--vm $(v)) --user $(VM_USER) --smp $(VM_SMP) \
	  --memory $(VM_MEMORY) --accel $(VM_ACCEL) --boot-timeout $(VM_BOOT_TIMEOUT)

vm-verify: ## Check the running VMs: login and sudo, systemd, Python, the private link, no way out
	@$(VMCTL) check

vm-ssh: ## SSH into a running VM as its user (VM=server|loadgen, VM_CMD='...' to run one command)
	@$(VMCTL) ssh $(VM) $(if $(VM_CMD),-- $(VM_CMD))

vm-status: ## The running VMs, their SSH ports and private-link addresses
	@$(VMCTL) status

vm-down: ## End every VM of the set (VM_STATE); nothing is left running
	@$(VMCTL) down

vm-clean: vm-down ## vm-down, then remove the VM images, the state and the SSH key (out/vm)
	rm -rf out/vm

test-vm: venv ## VM tests: build the image, boot two VMs, check them over SSH, tear down (slow)
	$(PY) -m pytest tests/vm $(PYTEST_ARGS)

lint-extra:: venv
	shellcheck vm/*.sh vm/guest/echolab-identity
	$(VENV)/bin/ruff check vm
	$(VENV)/bin/ruff format --check vm
