# `make help`: every target documented with `## text`, grouped in sections. A `##@ Title` line
# starts a section for the targets after it in the same file; a file without one is listed
# under a title made from its name (mk/ansible.mk: "Ansible and Molecule"). Sections print in
# the order below, then any other in the order make read them.
#   awk -f mk/help.awk Makefile mk/*.mk
BEGIN {
  FS = ":.*## "
  n = split("Set-up|Container lab|Tests and checks|Ansible and Molecule|VMs|Benchmarks", order, "|")
  named["ansible"] = "Ansible and Molecule"
  named["bench"] = "Benchmarks"
  named["lab"] = "Container lab"
  named["vm"] = "VMs"
  named["vms"] = "VMs"
}
FNR == 1 {
  base = FILENAME
  sub(/.*\//, "", base)
  sub(/\.mk$/, "", base)
  section = (base in named) ? named[base] : base
}
/^##@ / { section = substr($0, 5); next }
/^[a-zA-Z0-9_.%-]+:.*## / {
  if (!(section in lines)) seen[++nseen] = section
  lines[section] = lines[section] sprintf("  \033[36m%-22s\033[0m %s\n", $1, $2)
}
END {
  for (i = 1; i <= n; i++) print_section(order[i])
  for (i = 1; i <= nseen; i++) print_section(seen[i])
  print ""
}
function print_section(title) {
  if (!(title in lines) || (title in printed)) return
  printed[title] = 1
  printf "\n\033[1m%s\033[0m\n%s", title, lines[title]
}
