#!/bin/bash
# Run on a VM by `vm/vmctl.py check` (over SSH, as the login user, through `bash -s`): prints
# what the host judges, one `key=value` per line. PEERS: the other VMs' private-link addresses.
echo "user=$(id -un)"
echo "sudo=$(sudo -n id -u 2>/dev/null || echo no)"
echo "hostname=$(hostname)"
echo "systemd=$(systemctl is-system-running --wait 2>/dev/null)"
echo "failed_units=$(systemctl list-units --failed --plain --no-legend 2>/dev/null \
  | cut -d' ' -f1 | tr '\n' ' ')"
echo "python=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)"
echo "addresses=$(ip -4 -o addr show | awk '{print $4}' | tr '\n' ' ')"
echo "default_route=$(ip -4 route show default | head -1)"
# A peer answers when its sshd sends its banner across the link.
for peer in ${PEERS:-}; do
  banner=$(python3 -c 'import socket, sys
print(socket.create_connection((sys.argv[1], 22), timeout=10).recv(7).decode())' "$peer" 2>/dev/null)
  echo "peer_$peer=$banner"
done
