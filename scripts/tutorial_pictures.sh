#!/usr/bin/env bash
# `make tutorial-pictures`: run every experiment of docs/tutorial.md for real and keep what it
# showed: each timeline as docs/img/NAME.svg (restart-check --plot) and each command with its
# output as out/tutorial/NAME.txt (what the tutorial pastes). Every run must end with the exit
# status the tutorial explains (0 pass, 1 fail, 3 invalid): anything else stops the script.
#
# Usage: scripts/tutorial_pictures.sh ECHOLAB MAKE_VARS...   (ECHOLAB: the venv's echolab;
# MAKE_VARS go to the lab's make targets, e.g. COMPOSE=... COMPOSE_PROJECT_NAME=...)
# As root, --compare and --migrate-req run each strategy in a network namespace of its own
# (tcp_migrate_req 0 and 1); otherwise those rows are skipped and say why.
set -euo pipefail

echolab=${1:?usage: scripts/tutorial_pictures.sh ECHOLAB [MAKE_VARS...]}
shift
img=docs/img
out=out/tutorial
mkdir -p "$img" "$out"
# The same SVG bytes for the same picture: matplotlib dates it by SOURCE_DATE_EPOCH.
export SOURCE_DATE_EPOCH=0

# run NAME EXPECTED COMMAND...: the command and its output into $out/NAME.txt; EXPECTED is the
# exit status the tutorial explains ("0|1": either, when the machine decides; make itself
# exits 2 when a recipe fails).
run() {
    local name=$1 expected=$2 status
    shift 2
    echo "tutorial: $name: $*"
    set +e
    { echo "\$ $*"; "$@" 2>&1; } | grep -v -E '^ *Container .* (Creating|Created) *$' \
        | tee "$out/$name.txt"
    status=${PIPESTATUS[0]}
    set -e
    if [[ "|$expected|" != *"|$status|"* ]]; then
        echo "tutorial: $name exited $status, expected $expected" >&2
        exit 1
    fi
}

# 1. Who closes first, and where TIME_WAIT lands.
run 01-server-closes-first 0 "$echolab" restart-check --port 0 --plot "$img/01-server-closes-first.svg"
run 01-client-closes-first 3 "$echolab" restart-check --port 0 --close-first client \
    --plot "$img/01-client-closes-first.svg"
# 2. The same restart without SO_REUSEADDR: EADDRINUSE while TIME_WAIT lingers.
run 02-no-reuseaddr 0 "$echolab" restart-check --port 0 --no-reuseaddr --plot "$img/02-no-reuseaddr.svg"
# 3. The lab: the server's container stopped and started while the netns holder keeps the
# namespace (and its TIME_WAIT), judged by restart-check inside it; then the control.
run 03-lab-up 0 make --no-print-directory lab-up "$@"
run 03-lab-restart-check 0 make --no-print-directory lab-restart-check \
    LAB_PLOT="$img/03-lab-restart-check.svg" "$@"
# 4. Four strategies, one table (root: reuseport twice, with tcp_migrate_req 0 and 1).
run 04-compare "0|1" "$echolab" restart-check --compare \
    --plot "$img/04-compare.svg"
# 5. tcp_migrate_req: what happens to the old listener's accept queue (root only).
if [ "$(id -u)" = 0 ]; then
    run 05-reuseport-migrate-off 1 "$echolab" restart-check --strategy reuseport --migrate-req off \
        --plot "$img/05-reuseport-migrate-off.svg"
    run 05-reuseport-migrate-on 0 "$echolab" restart-check --strategy reuseport --migrate-req on \
        --plot "$img/05-reuseport-migrate-on.svg"
fi
# 6. Reload in place: the lab's server, judged by restart-check in its namespaces, then the
# engine's own reload run.
run 06-lab-reload 0 make --no-print-directory lab-reload LAB_PLOT="$img/06-lab-reload.svg" "$@"
run 06-reload 0 "$echolab" restart-check --port 0 --strategy reload --plot "$img/06-reload.svg"
run 06-lab-compare "0|2" make --no-print-directory lab-compare LAB_PLOT="$img/06-lab-compare.svg" "$@"
echo "tutorial: pictures in $img/, outputs in $out/"
