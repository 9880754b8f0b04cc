#!/usr/bin/env bash
# Build the Molecule platform image echolab/molecule:SUITE: a Debian host with systemd as PID 1,
# offline. The root file system comes from the project's mmdebstrap script (docker/base/build.sh,
# skipped when echolab/molecule-rootfs:SUITE exists), docker/molecule/Dockerfile goes on top.
#
#   docker/molecule/build.sh [SUITE]...        (default: bookworm)
#
# A suite the host has no apt source for (trixie on a bookworm host) gets one derived at build
# time from the host's bookworm entries, with the suite name replaced; nothing is written into
# the project. Environment: DOCKER (default docker), MOLECULE_INCLUDE (packages added to the
# base set), ECHOLAB_APT_SOURCES (a sources file to use instead of the host's).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
docker="${DOCKER:-docker}"
include="${MOLECULE_INCLUDE:-systemd,systemd-sysv,dbus,sudo,openssh-server}"
(($#)) || set -- bookworm

tmp=$(mktemp -d "${TMPDIR:-/tmp}/echolab-molecule.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

for suite in "$@"; do
  sources_args=()
  if [[ -n ${ECHOLAB_APT_SOURCES:-} ]]; then
    sources_args=(--sources "$ECHOLAB_APT_SOURCES")
  fi
  # (Without it, a suite the host has no entries for gets the host's own renamed: mk/apt-sources.sh.)
  # Rebuild the root file system when its package list (a label of the image) is not ours.
  force=()
  have=$("$docker" image inspect --format '{{ index .Config.Labels "echolab.base.packages" }}' \
    "echolab/molecule-rootfs:$suite" 2>/dev/null || true)
  if [[ -n $have && $have != *",$include" ]]; then
    echo "molecule-image: echolab/molecule-rootfs:$suite lacks some of $include; rebuilding"
    force=(--force)
  fi
  DOCKER="$docker" "$root/docker/base/build.sh" --suite "$suite" --tag "echolab/molecule-rootfs:$suite" \
    --include "$include" "${sources_args[@]}" "${force[@]}"
  "$docker" build --quiet --build-arg "ROOTFS=echolab/molecule-rootfs:$suite" \
    -t "echolab/molecule:$suite" "$here" >/dev/null 2>"$tmp/build.log" \
    || { cat "$tmp/build.log" >&2; exit 1; }
  echo "molecule-image: echolab/molecule:$suite ready"
done
