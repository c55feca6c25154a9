# dqnrun: `make train` and `make test` work on a fresh clone (they create .venv and install first).
.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV ?= .venv
PY := $(VENV)/bin/python
# Installed before the package so pip never resolves torch itself (on this machine torch==2.13.0 is a
# local CPU build; a bare `torch` requirement would pull a multi-GB CUDA build). Override elsewhere,
# e.g. `make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"`.
TORCH ?= torch==2.13.0
EXTRAS ?= video,box2d,atari,minatar,sweeps,report,export,wandb,dev
STAMP := $(VENV)/.installed-$(shell echo "$(TORCH) $(EXTRAS)" | cksum | cut -d' ' -f1)
ARGS ?=

.PHONY: help install train test test-slow lint bench bench-learning tensorboard clean

help: ## show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-12s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install torch, then dqnrun (editable) with its extras

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-* && touch $@

train: install ## train DQN on CartPole-v1 (pass overrides with ARGS="seed=3 optimizer.lr=5e-4")
	$(VENV)/bin/dqnrun train env=cartpole $(ARGS)

test: install ## the default test tier: fast, deterministic, CPU only
	$(VENV)/bin/pytest -q $(ARGS)

test-slow: install ## learning tests with real thresholds over several seeds
	$(VENV)/bin/pytest -q -m slow $(ARGS)

lint: install ## ruff
	$(VENV)/bin/ruff check dqnrun tests bench

bench: install ## benchmarks against Stable-Baselines3 (installs the bench extra)
	$(PY) -m pip install -q -e ".[$(EXTRAS),bench]"
	@mkdir -p outputs/bench
	$(PY) bench/floor.py --json outputs/bench/floor.json
	$(PY) bench/throughput.py --floor outputs/bench/floor.json --json outputs/bench/throughput.json
	$(PY) bench/solve_time.py
	$(PY) bench/scaling.py

bench-learning: install ## the learning-quality table over presets and seeds (long: ~30 min)
	$(PY) bench/learning.py $(ARGS)

tensorboard: install ## serve TensorBoard over outputs/
	$(VENV)/bin/tensorboard --logdir outputs

clean: ## remove caches and build files (keeps .venv and outputs/)
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
