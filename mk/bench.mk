# The benchmark: `make bench` (docs/bench.md).
# echolab serve against a C fork server, the minimal Python fork server, ForkingTCPServer and
# asyncio, all loaded by a C epoll client; every Python server on one clean venv's interpreter.
BENCH_VENV ?= .venv-bench
BENCH_BIN ?= bench/bin
BENCH_OUT ?= bench/results
BENCH_CC ?= gcc
BENCH_CFLAGS ?= -O2 -Wall -Wextra -Werror
BENCH_PEERS ?= c,minimal,forking,asyncio,echolab
BENCH_CONNECTIONS ?= 10000
BENCH_INFLIGHT ?= 8,64
BENCH_STREAMS ?= 1,8
BENCH_STREAM_SECONDS ?= 3
BENCH_IDLE_CLIENTS ?= 200
BENCH_REPEATS ?= 3
BENCH_ARGS ?=
# matplotlib lives in a venv of its own: the benchmark's venv must stay clean.
BENCH_PLOT_VENV ?= .venv-bench-plot
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_TOOLS := $(BENCH_BIN)/echo_server $(BENCH_BIN)/echo_load
BENCH_RUN = $(PYTHON) bench/run.py --python $(BENCH_PY) --bin $(BENCH_BIN) --out $(BENCH_OUT) \
	--peers $(BENCH_PEERS)

.PHONY: bench bench-smoke bench-plot bench-tools bench-venv bench-clean

$(BENCH_BIN)/%: bench/c/%.c
	@mkdir -p $(BENCH_BIN)
	$(BENCH_CC) $(BENCH_CFLAGS) -o $@ $<

bench-tools: $(BENCH_TOOLS) ## Build the benchmark's C echo server and C load client

# A clean venv with echolab installed as a user gets it (not editable) and nothing else.
# setuptools is removed after the install: its distutils-precedence.pth imports a module at
# every interpreter start, which every fork() of every Python server would pay for.
$(BENCH_VENV)/.installed: pyproject.toml $(wildcard app/echolab/*.py)
	rm -rf $(BENCH_VENV)
	$(PYTHON) -m venv $(BENCH_VENV)
	PIP_DISABLE_PIP_VERSION_CHECK=1 $(BENCH_PY) -m pip install --quiet .
	PIP_DISABLE_PIP_VERSION_CHECK=1 $(BENCH_PY) -m pip uninstall --quiet --yes setuptools
	@touch $@

bench-venv: $(BENCH_VENV)/.installed ## Create the benchmark's clean venv (echolab, nothing else)

bench: $(BENCH_TOOLS) $(BENCH_VENV)/.installed ## Benchmark echolab serve against its peers (3.5-9 min; results in bench/results/)
	$(BENCH_RUN) --connections $(BENCH_CONNECTIONS) --inflight '$(BENCH_INFLIGHT)' \
		--streams '$(BENCH_STREAMS)' --stream-seconds $(BENCH_STREAM_SECONDS) \
		--idle-clients $(BENCH_IDLE_CLIENTS) --repeats $(BENCH_REPEATS) $(BENCH_ARGS)

bench-smoke: $(BENCH_TOOLS) $(BENCH_VENV)/.installed ## Run the benchmark with tiny sizes (~20 s; checks it works, figures mean nothing)
	$(BENCH_RUN) --quick $(BENCH_ARGS)

$(BENCH_PLOT_VENV)/.installed:
	$(PYTHON) -m venv $(BENCH_PLOT_VENV)
	PIP_DISABLE_PIP_VERSION_CHECK=1 $(BENCH_PLOT_VENV)/bin/pip install --quiet matplotlib
	@touch $@

bench-plot: $(BENCH_PLOT_VENV)/.installed ## Draw the last benchmark as bench/results/latest.png (installs matplotlib in its own venv)
	$(BENCH_PLOT_VENV)/bin/python bench/plot.py $(BENCH_OUT)/latest.json $(BENCH_OUT)/latest.png

bench-clean: ## Remove the benchmark's binaries, venvs and results
	rm -rf $(BENCH_BIN) $(BENCH_VENV) $(BENCH_PLOT_VENV) $(BENCH_OUT)

lint-extra:: venv
	$(BENCH_CC) $(BENCH_CFLAGS) -fsyntax-only bench/c/echo_server.c bench/c/echo_load.c
