#!/usr/bin/env bash
# Print the host's apt entries for a Debian suite (and SUITE-updates, SUITE-security), deb822
# stanzas or one-line entries, for mmdebstrap to read: the images (docker/base/build.sh) and the
# VM image (vm/build-image.sh) come from the host's own apt sources, never from a mirror named in
# this repository. A third-party repository on the host has nothing to do with them and is left out.
#
# Usage: mk/apt-sources.sh SUITE [SOURCES_FILE]
#   SOURCES_FILE: read only this file (default: the host's /etc/apt/sources.list{,.d/*}).
# When the host has no entry for SUITE but has some for its own release, those are printed with
# the release's name replaced by SUITE (a note on stderr). Exit 1, nothing printed, when none.
set -euo pipefail

suite=${1:?usage: mk/apt-sources.sh SUITE [SOURCES_FILE]}
file=${2:-}

entries_for() {
  local want=$1 path
  if [[ -n $file ]]; then
    set -- "$file"
  else
    shopt -s nullglob
    set -- /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list
    shopt -u nullglob
  fi
  for path; do
    [[ -s $path ]] || continue
    if [[ $path == *.sources ]]; then
      # deb822: stanzas separated by blank lines; keep those whose Suites name $want.
      awk -v suite="$want" 'BEGIN { RS = ""; ORS = "\n\n" }
        { if (match($0, /(^|\n)Suites:[^\n]*/)) { line = substr($0, RSTART, RLENGTH)
            if (line ~ ("[ \t]" suite "([ \t-]|$)")) print } }' "$path"
    else
      grep -E "^[[:space:]]*deb[[:space:]].*[[:space:]]${want}([[:space:]]|-)" "$path" || true
    fi
  done
}

if [[ -n $file && ! -r $file ]]; then
  echo "apt-sources: cannot read apt sources file $file" >&2
  exit 1
fi
found=$(entries_for "$suite")
if [[ -z $found && -z $file ]]; then
  host_suite=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release 2>/dev/null | tr -d '"')
  if [[ -n $host_suite && $host_suite != "$suite" ]]; then
    found=$(entries_for "$host_suite" | sed -E "s/\\b${host_suite}\\b/${suite}/g")
    [[ -z $found ]] || echo "apt-sources: no apt source for $suite on this host; using the host's $host_suite entries renamed" >&2
  fi
fi
[[ -n $found ]] || exit 1
printf '%s\n' "$found"
