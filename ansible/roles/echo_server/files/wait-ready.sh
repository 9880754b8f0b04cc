#!/bin/sh
# ExecStartPost of the echolab service (installed by the echo_server role, not templated: every
# value comes in as an argument):
#   wait-ready ECHOLAB_BIN HOST:PORT TIMEOUT_SECONDS
# Waits until the server echoes, so that `systemctl start` and `systemctl restart` return only
# once it serves, and fail when it cannot (a bind error such as EADDRINUSE ends the main
# process: stop waiting then). systemd sets $MAINPID.
set -u
if [ "$#" -ne 3 ]; then
  echo "usage: wait-ready ECHOLAB_BIN HOST:PORT TIMEOUT_SECONDS" >&2
  exit 2
fi
bin=$1
target=$2
timeout=$3
deadline=$(($(date +%s) + timeout))
# Each probe may wait 5 s for its echo: behind a queue of connections a slow host serves one by
# one (a VM under emulation forks each session in tens of ms), a 1 s probe never got through. A
# refused connect returns at once, and a server that exited ends the wait below.
until "$bin" probe --quiet --timeout 5 --target "$target"; do
  if [ -n "${MAINPID:-}" ] && ! kill -0 "$MAINPID" 2>/dev/null; then
    echo "wait-ready: the server exited before it served $target" >&2
    exit 1
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "wait-ready: no echo from $target within $timeout s" >&2
    exit 1
  fi
  sleep 0.1
done
