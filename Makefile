# Two entry points for a fresh machine: `make run` and `make test`. Both install what they
# need first (Debian packages, a project virtualenv with torch 2.11.0 and the bundled model).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= $(CURDIR)/.venv
CARGO_TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR
# tch's build script finds libtorch through the virtualenv's python.
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(CURDIR)/.tools/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1

WORKER := $(CARGO_TARGET_DIR)/release/kb-worker
RUN_DIR := $(CURDIR)/.run
LISTEN ?= 127.0.0.1:8080

.PHONY: help setup setup-system setup-python setup-tools build run test lint unit

help:
	@echo "make run   - install, build, start a worker on the bundled model, ingest examples/docs, query"
	@echo "make test  - install, then fmt, clippy and every test"

setup: setup-system setup-python setup-tools

setup-system:
	@scripts/setup-system.sh

$(VENV)/.installed: requirements.txt
	@test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

setup-python: $(VENV)/.installed

setup-tools:
	@scripts/setup-k8s-tools.sh $(CURDIR)/.tools

build: setup-system setup-python
	cargo build --release -p kb-worker -p kb-operator

run: build
	@scripts/run-demo.sh $(WORKER) $(LISTEN) $(RUN_DIR)

lint: setup-system setup-python
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

unit: setup
	KB_MODEL_DIR=$$(scripts/model-dir.sh) cargo test --workspace

test: lint unit
