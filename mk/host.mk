# Host tools that come from Debian's packages, installed by make itself when missing: as root
# with apt-get, otherwise with password-less `sudo -n`, otherwise one line saying what to run
# (mk/host-package.sh). A target that needs COMMAND lists `host-tool-COMMAND` as a prerequisite.
# A fragment adds a tool of its own in three lines, with any install quirk it has, e.g. qemu
# with the suite's qemu-utils in place of a newer local one:
#   HOST_TOOLS += qemu-system-x86_64
#   HOST_PACKAGE_qemu-system-x86_64 := qemu-system-x86
#   HOST_APT_ARGS_qemu-system-x86_64 = --allow-downgrades \
#     qemu-utils=$$(apt-cache madison qemu-utils | awk '/bookworm/ {print $$3; exit}')
# HOST_APT_ARGS_<command> are more `apt-get install` arguments, as shell words that
# mk/host-package.sh expands only after `apt-get update` (so apt-cache sees fresh lists).
HOST_TOOLS += mmdebstrap

.PHONY: host-tools

##@ Set-up

host-tools: $(addprefix host-tool-,$(HOST_TOOLS)) ## Install the host tools the targets need from Debian's packages, when missing (mmdebstrap...)

host-tool-%:
	@HOST_APT_ARGS=$(call shell-quote,$(HOST_APT_ARGS_$*)) mk/host-package.sh $* $(or $(HOST_PACKAGE_$*),$*)

# $(call shell-quote,TEXT): TEXT as one single-quoted shell word.
shell-quote = '$(subst ','\'',$(1))'
