# Ansible and Molecule (issue 5): owned by the Ansible work; placeholder until it lands.
.PHONY: molecule
molecule: venv ## Run every Molecule scenario (docker driver, offline)
	@echo "molecule: not written yet" >&2; exit 1
