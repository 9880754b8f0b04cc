#!/bin/sh
# The log command `echolab restart-check --strategy reload` runs on a host provisioned by the
# echo_server role (installed as INSTALL_DIR/service-log, not templated):
#   service-log UNIT
# Prints the journal of the unit's current invocation, one message a line: what the server
# logged since systemd last started it. A reload keeps the invocation (the same process
# re-executes itself) and logs "reloaded: generation N" in it; a restart begins another
# invocation, whose server counts its generations from 1 again. Fails when the unit has no
# invocation (it is not running).
set -u
if [ "$#" -ne 1 ]; then
  echo "usage: service-log UNIT" >&2
  exit 2
fi
unit=$1
invocation=$(systemctl show --property InvocationID --value -- "$unit") || exit 1
if [ -z "$invocation" ]; then
  echo "service-log: $unit has no invocation (not running)" >&2
  exit 1
fi
exec journalctl --no-pager --output cat "_SYSTEMD_INVOCATION_ID=$invocation"
