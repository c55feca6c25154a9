"""The cost of one DQN-family update for any config: ``Learner.update`` on a random batch of the env's shapes.

    .venv/bin/python bench/update_cost.py env=minatar_breakout learner.distributional=iqn [--threads 1] [--n 10]

Builds the learner exactly as a run would (the same networks, heads, optimizer and fast path), then times ``n``
single-step updates after 3 warm-up ones. It says what an update costs, not what a run costs (acting, the env and
the replay are left out): use it to decide whether a variant fits a CPU before starting a long run.
"""

from __future__ import annotations

import argparse
import time

import torch

from dqnrun import builders
from dqnrun.algos.dqn import build as dqn_build
from dqnrun.config.compose import compose, normalize
from dqnrun.replay import Batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", help="config overrides, as for dqnrun train")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg, _ = compose("train", list(args.overrides))
    cfg = normalize(cfg)
    spec = builders.build_env_spec(cfg.env)
    learner = dqn_build.parts(cfg, spec)["learner"]
    b, shape = int(cfg.replay.batch_size), spec.observation_space.shape
    gen = torch.Generator().manual_seed(0)

    def obs() -> torch.Tensor:
        x = torch.rand(1, b, *shape, generator=gen)
        return x < 0.1 if spec.observation_space.dtype == bool else x

    batch = Batch(obs=obs(), action=torch.randint(0, spec.n_actions, (1, b), generator=gen), reward=torch.ones(1, b),
                  next_obs=obs(), terminated=torch.zeros(1, b))
    for _ in range(3):
        learner.update(batch)
    t0 = time.perf_counter()
    for _ in range(args.n):
        learner.update(batch)
    ms = (time.perf_counter() - t0) / args.n * 1e3
    print(f"{' '.join(args.overrides)}: {ms:.1f} ms per update (batch {b}, {args.threads} thread(s), "
          f"{'hand-written' if learner.manual is not None else 'autograd'} path)")


if __name__ == "__main__":
    main()
