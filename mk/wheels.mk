# One wheelhouse for everything that installs echolab without an index: the lab's images
# (docker/Dockerfile copies it) and the Ansible roles (copied to the hosts).
WHEELHOUSE ?= out/wheelhouse
WHEEL_BUILD := out/wheel-src

.PHONY: wheelhouse

##@ Set-up

# The project's wheel, built by uv (its build environments are cached: half the time of `pip
# wheel` here) from a clean copy of the sources (no stale build/ in the tree) with a fixed
# SOURCE_DATE_EPOCH, so identical sources give a byte-identical wheel: an unchanged tree hits
# Docker's layer cache and a second converge copies nothing. Plus the wheels of the `load`
# extra at the versions uv.lock pins (for the loadgen image and the echo_loadgen role).
wheelhouse: venv-lab ## Build the wheels the images and the roles install (out/wheelhouse)
	@rm -rf $(WHEELHOUSE) $(WHEEL_BUILD) && mkdir -p $(WHEELHOUSE) $(WHEEL_BUILD)
	@tar -cf - --exclude='*.egg-info' --exclude=__pycache__ pyproject.toml app $(wildcard README.md LICENSE*) \
	  | tar -xf - -C $(WHEEL_BUILD)
	@{ SOURCE_DATE_EPOCH=315532800 UV_PYTHON_DOWNLOADS=never $(UV) build --quiet --wheel \
	     --python $(PY) --out-dir $(WHEELHOUSE) $(WHEEL_BUILD) \
	   && $(UV) export --quiet --frozen --no-emit-project --no-hashes --extra load \
	     --output-file $(WHEEL_BUILD)/load.txt \
	   && PIP_DISABLE_PIP_VERSION_CHECK=1 $(PIP) download --quiet --no-deps --only-binary=:all: \
	     --dest $(WHEELHOUSE) --requirement $(WHEEL_BUILD)/load.txt; \
	 } >$(WHEEL_BUILD).log 2>&1 || { cat $(WHEEL_BUILD).log >&2; exit 1; }
	@echo "wheelhouse: $(WHEELHOUSE): $$(cd $(WHEELHOUSE) && echo *.whl)"
