#!/usr/bin/env bash
# mmdebstrap without man pages, translations, info pages and docs (copyright files stay): about
# 30 MB less in every root file system the project builds (the base and Molecule images, the VM
# image). Usage: mk/mmdebstrap-slim.sh [mmdebstrap options and arguments...]
set -euo pipefail
exec mmdebstrap \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  "$@"
