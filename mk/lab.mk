# The container lab (issue 4): base image, server and loadgen images, compose.yaml, lab tests.
# Works offline: the base image is built from the host's apt sources with mmdebstrap, the
# project's wheel and its dependencies are built on the host; nothing is pulled.
DOCKER ?= docker
BASE_IMAGE ?= echolab/base:bookworm
# Extra Debian packages for the base image (comma separated), e.g. BASE_INCLUDE=strace
BASE_INCLUDE ?=

.PHONY: base-image docker-check

# Every lab target depends on this: a clear message and a non-zero exit without an engine.
docker-check:
	@command -v $(DOCKER) >/dev/null || { echo "lab: '$(DOCKER)' not found: install Docker Engine to use the lab" >&2; exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 || { echo "lab: the Docker engine is unreachable (is dockerd running, may $$USER use it?)" >&2; exit 1; }

base-image: docker-check ## Build echolab/base:bookworm with mmdebstrap from the host's apt sources (skips when present)
	@if [ "$(BASE_IMAGE)" = echolab/base:bookworm ]; then \
	  DOCKER=$(DOCKER) docker/base/build.sh --tag $(BASE_IMAGE) $(if $(BASE_INCLUDE),--include $(BASE_INCLUDE)); \
	else echo "base-image: BASE_IMAGE=$(BASE_IMAGE) is not built here (pull it yourself)"; fi

# Placeholder until the rest of the lab lands.
.PHONY: test-lab
test-lab: venv ## Lab tests: build images, compose up, load, restart-check, hardening, down
	@echo "test-lab: not written yet" >&2; exit 1
