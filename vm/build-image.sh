#!/usr/bin/env bash
# Build the VM image, offline: a Debian root file system made by mmdebstrap from the host's own
# apt sources (no mirror is named in the project), written into an ext4 disk image, plus the
# kernel and initrd that boot it (qemu -kernel/-initrd: no boot loader, no partition table).
#
#   vm/build-image.sh [--suite bookworm] [--out out/vm/images] [--size 3G] [--force]
#   vm/build-image.sh --print-dir [--suite S] [--out DIR]    the image directory, built or not
#
# Result: OUT/SUITE-HASH/{disk.img,vmlinuz,initrd.img,recipe.txt} and the link OUT/SUITE to it.
# HASH is the recipe's: this script, vm/guest/*, the suite, the package list and the size. An
# image of the same recipe is reused; a changed recipe builds a new one and removes the old.
# Like a cloud image it has no user and no SSH key: vm/guest/echolab-identity makes them at boot
# from what the launcher passes in (hostname, user, key, addresses). The image holds the
# sources.list mmdebstrap writes (it names the mirror the host uses): never commit an image.
#
# mmdebstrap writes a root-owned tree: run as root, or with sudo that needs no password.
# Suites the host has no apt entries for (trixie on a bookworm host) use the host's entries for
# its own Debian release with the suite renamed, at build time only.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
argv=("$@")

# Like a Debian cloud image: systemd as init (its networkd does DHCP: ifupdown and dhclient
# took 13 to 18 s of each boot under emulation), udev, dbus (a non-root `systemctl` needs the
# bus), SSH, sudo, python3 for Ansible, iproute2 (`ip`, `ss`), procps (`ps`). No python3-venv
# and no python3-apt: what the roles need, they bring.
PACKAGES="systemd-sysv,udev,dbus,linux-image-amd64,openssh-server,sudo,python3,iproute2,procps,netbase"
# Units that only cost CPU in a short-lived VM without a network (apt's timers, fstrim, e2scrub).
MASK_UNITS="apt-daily.timer apt-daily-upgrade.timer fstrim.timer e2scrub_all.timer e2scrub_reap.service"

suite=bookworm
out=out/vm/images
size=3G
force=0
print_dir=0

die() {
  echo "vm-image: $*" >&2
  exit 1
}

# Bad arguments: one line, exit 2 (as everywhere in echolab).
usage_error() {
  echo "vm-image: $* (see --help)" >&2
  exit 2
}

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
  exit "${1:-0}"
}

# mmdebstrap's customize hook: `build-image.sh --customize ROOTDIR` (see build()).
customize() {
  local root=$1 unit
  install -m 0755 "$here/guest/echolab-identity" "$root/usr/local/sbin/echolab-identity"
  install -m 0644 "$here/guest/echolab-identity.service" "$root/etc/systemd/system/"
  install -m 0644 "$here/guest/sshd-echolab.conf" "$root/etc/ssh/sshd_config.d/echolab.conf"
  install -m 0644 "$here/guest/99-echolab-dhcp.network" "$root/etc/systemd/network/"
  chroot "$root" systemctl enable --quiet echolab-identity.service systemd-networkd.service
  for unit in $MASK_UNITS; do chroot "$root" systemctl mask --quiet "$unit"; done
  # Made per VM at boot: the host keys (echolab-identity), the machine id (systemd).
  rm -f "$root"/etc/ssh/ssh_host_*
  : >"$root/etc/machine-id"
  echo debian >"$root/etc/hostname"
  printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
  # No resolver: the VMs have no route beyond their own links (and mmdebstrap leaves the host's).
  echo "# no name server: this VM reaches nothing beyond its own links" >"$root/etc/resolv.conf"
  printf '/dev/vda\t/\text4\trw,errors=remount-ro\t0\t1\n' >"$root/etc/fstab"
}

while (($#)); do
  case "$1" in
    --customize) customize "${2:?--customize needs the root directory}"; exit 0 ;;
    --suite) suite="${2:-}"; shift $(($# > 1 ? 2 : 1)) ;;
    --suite=*) suite="${1#*=}"; shift ;;
    --out) out="${2:-}"; shift $(($# > 1 ? 2 : 1)) ;;
    --out=*) out="${1#*=}"; shift ;;
    --size) size="${2:-}"; shift $(($# > 1 ? 2 : 1)) ;;
    --size=*) size="${1#*=}"; shift ;;
    --force) force=1; shift ;;
    --print-dir) print_dir=1; shift ;;
    -h | --help) usage 0 ;;
    *) usage_error "unknown argument: $1" ;;
  esac
done
[[ $suite =~ ^[a-z]+$ ]] || usage_error "--suite must be a Debian code name such as bookworm, not '$suite'"
[[ -n $out ]] || usage_error "--out needs a directory"
[[ $size =~ ^[0-9]+[MG]$ ]] || usage_error "--size must look like 3G or 2048M, not '$size'"

recipe_hash() {
  {
    printf 'suite=%s\npackages=%s\nmask=%s\nsize=%s\n' "$suite" "$PACKAGES" "$MASK_UNITS" "$size"
    cat "$here/build-image.sh"
    for f in "$here"/guest/*; do printf '%s\n' "${f##*/}"; cat "$f"; done
  } | sha256sum | cut -c1-12
}
hash=$(recipe_hash)
dir="$out/$suite-$hash"
if ((print_dir)); then
  echo "$dir"
  exit 0
fi

if ((!force)) && [[ -e $dir/complete ]]; then
  echo "vm-image: $dir is up to date (recipe $hash), skipping (--force rebuilds)"
  ln -sfn "$suite-$hash" "$out/$suite"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  if ! command -v sudo >/dev/null || ! sudo -n true 2>/dev/null; then
    die "building the image needs root (mmdebstrap writes a root-owned tree): run as root or with passwordless sudo"
  fi
  exec sudo -n --preserve-env=PATH "$0" "${argv[@]}"
fi
for cmd in mmdebstrap mke2fs sha256sum; do
  command -v "$cmd" >/dev/null || die "'$cmd' is missing: run 'make vm-host-packages'"
done

# The host's apt entries for SUITE (mk/apt-sources.sh: deb822 or one-line; the host's own
# release renamed when it has none for SUITE).
apt_sources=$("$here/../mk/apt-sources.sh" "$suite") || apt_sources=""
[[ -n $apt_sources ]] || die "no apt source for '$suite' in the host's apt configuration (/etc/apt/sources.list.d/*.sources, /etc/apt/sources.list)"

mkdir -p "$out"
exec 9>"$out/.lock"
flock 9
started=$SECONDS
work=$(mktemp -d "$out/.build-$suite.XXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work"  # apt downloads as the _apt user
printf '%s\n' "$apt_sources" >"$work/sources"

echo "vm-image: building $dir (Debian $suite, recipe $hash): mmdebstrap, about 2 minutes"
# Leave out man pages, translations and docs (copyright files stay).
"$here/../mk/mmdebstrap-slim.sh" --mode=root --variant=minbase --include="$PACKAGES" \
  --customize-hook="\"$here/build-image.sh\" --customize \"\$1\"" \
  "$suite" "$work/rootfs" - <"$work/sources" \
  || die "mmdebstrap failed (see above)"

mkdir "$work/image"
kernel=$(find "$work/rootfs/boot" -name 'vmlinuz-*' | sort -V | tail -1)
initrd=$(find "$work/rootfs/boot" -name 'initrd.img-*' | sort -V | tail -1)
[[ -n $kernel && -n $initrd ]] || die "the root file system has no /boot/vmlinuz-* and initrd.img-*"
cp "$kernel" "$work/image/vmlinuz"
cp "$initrd" "$work/image/initrd.img"
echo "vm-image: writing the ext4 disk image ($size, sparse)"
mke2fs -q -t ext4 -L echolab-root -d "$work/rootfs" "$work/image/disk.img" "$size" >/dev/null
chmod 0444 "$work/image/disk.img"
{
  echo "suite: $suite"
  echo "recipe: $hash"
  echo "packages: $PACKAGES"
  echo "kernel: ${kernel##*/vmlinuz-}"
  echo "size: $size"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) in $((SECONDS - started)) s"
} >"$work/image/recipe.txt"
touch "$work/image/complete"

rm -rf "$dir"
mv "$work/image" "$dir"
ln -sfn "$suite-$hash" "$out/$suite"
# Older builds of this suite are stale by definition.
find "$out" -maxdepth 1 -name "$suite-*" ! -name "$suite-$hash" -exec rm -rf {} +
if [[ -n ${SUDO_UID:-} ]]; then chown -R "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$out"; fi
used=$(du -sm "$dir" | cut -f1)
echo "vm-image: $dir built in $((SECONDS - started)) s ($used MB on disk; kernel ${kernel##*/vmlinuz-})"
