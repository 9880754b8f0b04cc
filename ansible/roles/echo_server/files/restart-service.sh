#!/bin/sh
# The restart command `echolab restart-check` runs on a host provisioned by the echo_server
# role (installed as INSTALL_DIR/restart-service, not templated):
#   restart-service UNIT
# Restarts the unit; `systemctl restart` returns once the new server echoes (ExecStartPost) and
# fails when it cannot start. On failure it prints the unit's last journal lines (the server's
# one-line reason, e.g. "... is already in use") and exits with the main process's exit status
# when it exited (`echolab serve` exits 6 when the address is in use), else 1.
set -u
if [ "$#" -ne 1 ]; then
  echo "usage: restart-service UNIT" >&2
  exit 2
fi
unit=$1
if systemctl restart -- "$unit"; then
  exit 0
fi
# The failed main process's status first: Restart=on-failure starts another one after
# RestartSec, and its status would replace this one's.
code=$(systemctl show --property ExecMainCode --value -- "$unit")
status=$(systemctl show --property ExecMainStatus --value -- "$unit")
journalctl --unit "$unit" --lines 20 --output cat --no-pager
# ExecMainCode 1 is CLD_EXITED: the main process exited by itself with ExecMainStatus.
if [ "$code" = 1 ] && [ -n "$status" ] && [ "$status" != 0 ]; then
  exit "$status"
fi
exit 1
