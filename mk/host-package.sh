#!/usr/bin/env bash
# Make sure a host command exists; install its Debian package when it does not.
#
#   [HOST_APT_ARGS='shell words'] mk/host-package.sh COMMAND PACKAGE [APT-ARGS...]
#
# As root: apt-get. Otherwise password-less `sudo -n apt-get`. Otherwise one line that says what
# to run, and exit 1. APT-ARGS are more `apt-get install` arguments (a package pinned to a
# version, --allow-downgrades). HOST_APT_ARGS holds more, as shell words expanded only after
# `apt-get update`, so that a `$(apt-cache ...)` in them reads fresh package lists (mk/host.mk
# passes a fragment's HOST_APT_ARGS_<command> this way). Another apt run may hold the dpkg lock:
# wait for it up to 10 minutes.
# Environment: HOST_PACKAGE_APT_GET (default apt-get: the command that installs).
set -euo pipefail

cmd=${1:?usage: mk/host-package.sh COMMAND PACKAGE [APT-ARGS...]}
pkg=${2:?usage: mk/host-package.sh COMMAND PACKAGE [APT-ARGS...]}
shift 2
command -v "$cmd" >/dev/null 2>&1 && exit 0

apt_get=${HOST_PACKAGE_APT_GET:-apt-get}
die() {
  echo "host-tools: $*" >&2
  exit 1
}
command -v "${apt_get%% *}" >/dev/null 2>&1 \
  || die "'$cmd' is missing: install it with your system's package manager (Debian's package: $pkg)"
if [[ $(id -u) -eq 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  die "'$cmd' is missing: run 'sudo apt-get install $pkg${*:+ $*}${HOST_APT_ARGS:+ $HOST_APT_ARGS}' (make installs it itself as root or with password-less sudo)"
fi

# shellcheck disable=SC2206  # the apt-get command may carry its own arguments
apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive $apt_get -qq -o DPkg::Lock::Timeout=600)
echo "host-tools: installing $pkg for '$cmd' from the host's Debian packages"
"${apt[@]}" update >/dev/null
extra=("$@")
if [[ -n ${HOST_APT_ARGS:-} ]]; then eval "extra+=($HOST_APT_ARGS)"; fi
"${apt[@]}" install -y "$pkg" "${extra[@]}" >/dev/null \
  || die "'apt-get install $pkg ${extra[*]}' failed (see above)"
command -v "$cmd" >/dev/null 2>&1 || die "installed $pkg, but '$cmd' is still not on PATH"
echo "host-tools: $cmd: $(command -v "$cmd")"
