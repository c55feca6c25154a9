# dqnrun: `make train` and `make test` work on a fresh clone (they create .venv and install first).
.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV ?= .venv
PY := $(VENV)/bin/python
# The Ray launcher pins cloudpickle<3 and joblib (the joblib launcher) needs >=3: Ray gets its own environment.
RAY_VENV ?= .venv-ray
# Installed before the package so pip never resolves torch itself (on this machine torch==2.13.0 is a
# local CPU build; a bare `torch` requirement would pull a multi-GB CUDA build). Override elsewhere,
# e.g. `make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"`.
TORCH ?= torch==2.13.0
EXTRAS ?= video,box2d,atari,minatar,sweeps,report,export,wandb,dev
STAMP := $(VENV)/.installed-$(shell echo "$(TORCH) $(EXTRAS)" | cksum | cut -d' ' -f1)
RAY_STAMP := $(RAY_VENV)/.installed-$(shell echo "$(TORCH) ray" | cksum | cut -d' ' -f1)
ARGS ?=

.PHONY: help install train test test-slow test-thorough test-ray lint bench bench-learning bench-pixels sweep-demo tensorboard clean

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

test: install ## the default test tier: fast, deterministic, CPU only (one worker per core, a test file each)
	$(VENV)/bin/pytest -q -n auto --dist loadfile $(ARGS)

test-slow: install ## learning tests with real thresholds over several seeds
	$(VENV)/bin/pytest -q -m slow $(ARGS)

test-thorough: install ## every kill point, env family, signal timing and fault (the default tier runs some of each)
	$(VENV)/bin/pytest -q -n auto --dist loadfile -m thorough $(ARGS)

$(RAY_STAMP): pyproject.toml
	test -x $(RAY_VENV)/bin/python || python3 -m venv $(RAY_VENV)
	$(RAY_VENV)/bin/python -m pip install -q $(TORCH)
	$(RAY_VENV)/bin/python -m pip install -q -e ".[ray,dev]"
	rm -f $(RAY_VENV)/.installed-* && touch $@

test-ray: $(RAY_STAMP) ## the Ray launcher, in its own environment (.venv-ray)
	$(RAY_VENV)/bin/pytest -q -m ray -p no:cacheprovider tests/e2e/test_ray.py $(ARGS)

sweep-demo: install ## a real sweep: 2 learning rates x 5 seeds on CartPole, in parallel (joblib), then its report
	rm -rf outputs/sweep-demo
	$(VENV)/bin/dqnrun train -m env=cartpole optimizer.lr=2.5e-3,2.5e-4 seed=0,1,2,3,4 hydra/launcher=joblib \
		log.progress=false hydra.sweep.dir=outputs/sweep-demo
	$(VENV)/bin/dqnrun report outputs/sweep-demo --compare

lint: install ## ruff
	$(VENV)/bin/ruff check dqnrun tests bench hydra_plugins

bench: install ## benchmarks against Stable-Baselines3 (installs the bench extra)
	$(PY) -m pip install -q -e ".[$(EXTRAS),bench]"
	@mkdir -p outputs/bench
	$(PY) bench/floor.py --json outputs/bench/floor.json
	$(PY) bench/throughput.py --floor outputs/bench/floor.json --json outputs/bench/throughput.json
	$(PY) bench/solve_time.py
	$(PY) bench/scaling.py

bench-learning: install ## the learning-quality table over presets and seeds (long: ~30 min)
	$(PY) bench/learning.py $(ARGS)

bench-pixels: install ## pixels against SB3: Pong acting, MinAtar training, Pong time split, replay memory
	$(PY) -m pip install -q -e ".[$(EXTRAS),bench]"
	$(PY) bench/pixels.py $(ARGS)

tensorboard: install ## serve TensorBoard over outputs/
	$(VENV)/bin/tensorboard --logdir outputs

clean: ## remove caches and build files (keeps .venv and outputs/)
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
