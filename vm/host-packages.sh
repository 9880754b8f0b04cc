#!/usr/bin/env bash
# Install the host tools the VMs need, from the host's Debian packages, when they are missing:
#   qemu-system-x86_64 (qemu-system-x86), qemu-img (qemu-utils), mmdebstrap, mke2fs (e2fsprogs),
#   ssh and ssh-keygen (openssh-client).
#
#   vm/host-packages.sh [--check]
#
# --check only says what is missing (exit 1 if anything is). Installing needs root, or sudo
# without a password (`sudo -n`); otherwise one line says what to install and the exit is 1.
#
# qemu-utils: a host may carry a newer qemu-utils than its suite's qemu-system-common accepts
# (e.g. a backport: its Breaks: qemu-system-common (<< 1:8.0)). apt would then remove qemu-utils,
# and with it qemu-img. So qemu-utils is pinned to the version of the qemu-system-common apt
# would install (--allow-downgrades); nothing else on such a host depends on the newer one.
# Other engineers may run apt at the same time: every apt call waits for the lock.
set -euo pipefail

APT_OPTS=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)

die() {
  echo "vm-host-packages: $*" >&2
  exit 1
}

# The commands the VM targets run, and the package each comes from.
declare -A PACKAGE_OF=(
  [qemu-system-x86_64]=qemu-system-x86
  [qemu-img]=qemu-utils
  [mmdebstrap]=mmdebstrap
  [mke2fs]=e2fsprogs
  [ssh]=openssh-client
  [ssh-keygen]=openssh-client
)

missing_packages() {
  local cmd
  for cmd in "${!PACKAGE_OF[@]}"; do
    command -v "$cmd" >/dev/null || PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null \
      || echo "${PACKAGE_OF[$cmd]}"
  done | sort -u
}

check_only=0
case "${1:-}" in
  --check) check_only=1 ;;
  "") ;;
  -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
  *) echo "vm-host-packages: unknown argument: $1 (see --help)" >&2; exit 2 ;;
esac

mapfile -t need < <(missing_packages)
((${#need[@]})) || exit 0
((check_only)) && die "missing host packages: ${need[*]}"

if [[ $(id -u) -eq 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  die "missing host packages: ${need[*]}; install them as root (apt-get install --no-install-recommends ${need[*]}), or run make as root or with passwordless sudo"
fi
command -v apt-get >/dev/null || die "missing host packages: ${need[*]}, and this host has no apt-get: install them with its package manager"

echo "vm-host-packages: installing ${need[*]} from the host's Debian packages"
"${as_root[@]}" apt-get "${APT_OPTS[@]}" update -qq

# The qemu-utils that goes with the qemu-system-common apt would install (see the header).
candidate() {
  apt-cache policy "$1" | sed -n 's/^ *Candidate: //p'
}
installed() {
  dpkg-query -W -f '${db:Status-Abbrev} ${Version}\n' "$1" 2>/dev/null | sed -n 's/^ii  *//p'
}
args=()
for pkg in "${need[@]}"; do
  [[ $pkg == qemu-utils ]] || args+=("$pkg")
done
if [[ " ${need[*]} " == *" qemu-system-x86 "* || " ${need[*]} " == *" qemu-utils "* ]]; then
  system_common=$(candidate qemu-system-common)
  [[ -n $system_common && $system_common != "(none)" ]] \
    || die "the host's apt sources offer no qemu-system-common: cannot install qemu-system-x86"
  if [[ $(installed qemu-utils) != "$system_common" ]]; then
    args+=("qemu-utils=$system_common")
  fi
fi

DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get "${APT_OPTS[@]}" install -y -qq \
  --no-install-recommends --allow-downgrades "${args[@]}" >/dev/null \
  || die "apt-get install ${args[*]} failed (see above)"

mapfile -t still < <(missing_packages)
((${#still[@]} == 0)) || die "still missing after the install: ${still[*]}"
echo "vm-host-packages: installed; $(qemu-system-x86_64 --version | head -1)"
