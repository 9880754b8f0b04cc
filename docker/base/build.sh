#!/usr/bin/env bash
# Build a Debian base image with mmdebstrap and `docker import`, offline from any container
# registry: the packages come from the host's own apt sources (never a mirror written here).
#
#   docker/base/build.sh [--tag echolab/base:bookworm] [--suite bookworm] [--include PKGS]...
#                        [--variant minbase] [--sources FILE] [--force]
#
# Skips when TAG already exists (unless --force). --include adds packages to the base set and may
# be repeated (comma or space separated), e.g. a systemd host for Molecule:
#   docker/base/build.sh --tag echolab/systemd:bookworm --include systemd,systemd-sysv,sudo
# Environment: ECHOLAB_APT_SOURCES (a sources file, same as --sources), DOCKER (default docker).
set -euo pipefail

# The base set: Python 3.11 with venv for the project's wheel, iproute2 for `ss`, procps for
# `ps`, netbase for /etc/services, ca-certificates for anyone who adds TLS clients later.
BASE_PACKAGES="python3,python3-venv,iproute2,procps,netbase,ca-certificates"

tag="echolab/base:bookworm"
suite="bookworm"
variant="minbase"
extra=""
sources="${ECHOLAB_APT_SOURCES:-}"
force=0
docker="${DOCKER:-docker}"

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
  exit "${1:-0}"
}

die() {
  echo "base-image: $*" >&2
  exit 1
}

while (($#)); do
  case "$1" in
    --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
    --tag=*) tag="${1#*=}"; shift ;;
    --suite) suite="${2:?--suite needs a value}"; shift 2 ;;
    --suite=*) suite="${1#*=}"; shift ;;
    --include) extra="$extra,${2:?--include needs a value}"; shift 2 ;;
    --include=*) extra="$extra,${1#*=}"; shift ;;
    --variant) variant="${2:?--variant needs a value}"; shift 2 ;;
    --variant=*) variant="${1#*=}"; shift ;;
    --sources) sources="${2:?--sources needs a value}"; shift 2 ;;
    --sources=*) sources="${1#*=}"; shift ;;
    --force) force=1; shift ;;
    -h | --help) usage 0 ;;
    *) echo "base-image: unknown argument: $1" >&2; usage 2 ;;
  esac
done

packages="$BASE_PACKAGES$(tr ' ' ',' <<<"$extra" | tr -s ',')"
packages="${packages%,}"

command -v "$docker" >/dev/null || die "'$docker' not found: install Docker Engine (https://docs.docker.com/engine/install/)"
"$docker" info >/dev/null 2>&1 || die "the Docker engine is unreachable (is dockerd running, may this user use it?)"

if ((!force)) && "$docker" image inspect "$tag" >/dev/null 2>&1; then
  echo "base-image: $tag exists, skipping (--force rebuilds)"
  exit 0
fi

# mmdebstrap from the host's Debian packages when it is missing (the same step as
# `make host-tools`): as root, or with password-less sudo; otherwise a line saying what to run.
root=$(cd "$(dirname "$0")/../.." && pwd)
"$root/mk/host-package.sh" mmdebstrap mmdebstrap || exit 1

# The host's apt entries for $suite only (mk/apt-sources.sh).
apt_sources=$("$root/mk/apt-sources.sh" "$suite" ${sources:+"$sources"}) || apt_sources=""
[[ -n $apt_sources ]] || die "no apt source for '$suite' found in the host's apt configuration
  (/etc/apt/sources.list.d/*.sources or /etc/apt/sources.list); pass --sources FILE with a
  sources list for $suite, or build with BASE_IMAGE=python:3.12-slim"

echo "base-image: building $tag ($suite, $variant) with: $packages"
started=$SECONDS
tmp=$(mktemp -d "${TMPDIR:-/tmp}/echolab-base.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
printf '%s\n' "$apt_sources" >"$tmp/sources"

# Leave out man pages, translations and most docs (copyright files stay): about 30 MB.
"$root/mk/mmdebstrap-slim.sh" --quiet --variant="$variant" --include="$packages" \
  "$suite" "$tmp/rootfs.tar" - <"$tmp/sources"

"$docker" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  --change "LABEL org.opencontainers.image.title=\"$tag\"" \
  --change "LABEL org.opencontainers.image.description=\"Debian $suite ($variant), built by mmdebstrap\"" \
  --change "LABEL echolab.base.packages=\"$packages\"" \
  --message "mmdebstrap --variant=$variant $suite: $packages" \
  "$tmp/rootfs.tar" "$tag" >/dev/null

size=$("$docker" image inspect --format '{{.Size}}' "$tag")
echo "base-image: $tag built in $((SECONDS - started)) s, $((size / 1000000)) MB"
