"""Where a pixel population's step goes: the parts of one lockstep round, timed alone, K members against one.

For the GPU row of the populations issue (bench/population_gpu.sh times whole commands; this says why its ratio
is what it is). For K members of a preset (Pong's Nature CNN by default) and one solo member, on ``--device``:

- acting: one greedy forward for all K members' envs (`PopulationLearner.greedy`) against one member's forward;
- learning: one batched update of all K members (`PopulationLearner.update`) against one member's own update;
- replay: each member storing one transition and drawing one batch (stacked for the update), against one member;
- envs (Atari presets): K members' one-game C++ envs stepped one after another (``step``), and sent together
  before any is received (``send``/``recv``, as the population engine steps them), against one env's step.

Times are medians over ``--reps`` after warm-up, in milliseconds; the device is synchronized around each. Run:

    python bench/population_parts.py --device cuda --k 16          # on the GPU machine
    .venv/bin/python bench/population_parts.py --device cpu --k 2 --reps 5   # a dry run here
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch


def timed(fn: Callable[[], Any], reps: int, sync: Callable[[], None]) -> float:
    """Median milliseconds of ``fn`` over ``reps`` calls after 3 warm-ups."""
    for _ in range(3):
        fn()
    sync()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t) * 1e3)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="pong")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", default=None, help="also write the table as JSON here")
    a = ap.parse_args()

    from dqnrun import builders
    from dqnrun.config.compose import compose, rewrite
    from dqnrun.population.engine import stack_batches
    from dqnrun.population.member import stack_members
    from dqnrun.population.rows import StackedFrames, StackedRows
    from dqnrun.replay import Batch

    def dqn(seed: int) -> Any:
        cfg = compose("train", rewrite([f"env={a.env}", f"device={a.device}", f"seed={seed}", "replay.capacity=1000",
                                        f"replay.batch_size={a.batch}"])[0])[0]
        torch.manual_seed(seed)
        return builders.build_algorithm(cfg, builders.build_env_spec(cfg.env)), cfg

    dqns = [dqn(s) for s in range(a.k)]
    cfg = dqns[0][1]
    solo = dqns[0][0]
    pop = stack_members([d for d, _ in dqns])
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    spec = builders.build_env_spec(cfg.env)
    shape, n_act = spec.observation_space.shape, int(spec.action_space.n)
    gen = np.random.default_rng(0)
    obs1 = gen.integers(0, 255, (1, *shape), dtype=np.uint8)
    obsk = gen.integers(0, 255, (a.k, 1, *shape), dtype=np.uint8)

    def batch() -> Batch:
        b = a.batch
        obs = torch.randint(0, 255, (1, b, *shape), dtype=torch.uint8, device=dev)
        nxt = torch.randint(0, 255, (1, b, *shape), dtype=torch.uint8, device=dev)
        return Batch(obs, torch.randint(0, n_act, (1, b), device=dev), torch.randn(1, b, device=dev), nxt,
                     (torch.rand(1, b, device=dev) < 0.05).float())

    b1 = batch()
    bk = stack_batches({m: batch() for m in range(a.k)}, a.k)
    rows: dict[str, Any] = {"env": a.env, "k": a.k, "device": a.device, "batch": a.batch,
                            "learner": type(pop).__name__}
    rows["act_solo_ms"] = timed(lambda: solo.learner.greedy_actions(obs1), a.reps, sync)
    rows["act_pop_ms"] = timed(lambda: pop.greedy(obsk), a.reps, sync)
    rows["update_solo_ms"] = timed(lambda: solo.learner.update(b1), a.reps, sync)
    rows["update_pop_ms"] = timed(lambda: pop.update(bk), a.reps, sync)

    # the members' replays: storing one transition each (every env step), drawing one batch each and stacking them
    # (every update): per member, as the engine does where replays do not share columns (pixel frames)
    replays = [d.replay for d, _ in dqns]
    frames = gen.integers(0, 255, (400, *shape[1:]), dtype=np.uint8) if len(shape) == 3 else None
    t_ = [0]

    def transition(i: int) -> tuple[Any, ...]:
        if frames is not None:  # consecutive stacks of one frame sequence, as an Atari env gives them
            o, n = frames[i:i + shape[0]][None], frames[i + 1:i + 1 + shape[0]][None]
        else:
            o, n = gen.normal(size=(1, *shape)).astype(np.float32), gen.normal(size=(1, *shape)).astype(np.float32)
        return o, np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.float32), n, np.zeros(1, bool), np.zeros(1, bool)

    for r in replays:
        for i in range(300):
            r.add(*transition(i))
    pending = [transition(300 + i) for i in range(80)]

    def store(rs: list[Any]) -> None:
        x = pending[t_[0] % len(pending)]
        t_[0] += 1
        for r in rs:
            r.add(*x)

    # storing: timed with the next sample after it, less that sample alone, so that frames written later (an
    # accelerator's, which wait on the host until a read) count where they are written
    rows["store_solo_ms"] = timed(lambda: (store(replays[:1]), replays[0].sample(n_batches=1, step=10_000)),
                                  a.reps, sync) - timed(lambda: replays[0].sample(n_batches=1, step=10_000), a.reps,
                                                        sync)
    rows["sample_solo_ms"] = timed(lambda: replays[0].sample(n_batches=1, step=10_000), a.reps, sync)
    shared = StackedRows(replays) if StackedRows.fits(replays) else \
        StackedFrames(replays) if StackedFrames.fits(replays) else None  # as the engine chooses
    rows["replay_with_member_axis"] = shared is not None

    def sample_all() -> Any:
        if shared is None:
            return stack_batches({m: r.sample(n_batches=1, step=10_000) for m, r in enumerate(replays)}, a.k)
        return shared.gather({m: (*r.sampler.draw(1, 10_000), r) for m, r in enumerate(replays)}, a.k)

    rows["store_pop_ms"] = timed(lambda: (store(replays), sample_all()), a.reps, sync) - timed(sample_all, a.reps,
                                                                                               sync)
    rows["sample_pop_ms"] = timed(sample_all, a.reps, sync)

    if cfg.env.get("atari") is not None:
        from omegaconf import OmegaConf

        from dqnrun.envs.atari import make_vector_env

        atari = OmegaConf.to_container(cfg.env.atari, resolve=True)
        envs = [make_vector_env(atari, 1, threads=1) for _ in range(a.k)]  # type: ignore[arg-type]
        for i, e in enumerate(envs):
            e.reset(seed=i)
        acts = [np.zeros(1, dtype=np.int64) for _ in envs]

        def serial() -> None:
            for e, x in zip(envs, acts, strict=True):
                e.step(x)

        def halves() -> None:
            for e, x in zip(envs, acts, strict=True):
                e.send(x)
            for e in envs:
                e.recv()

        rows["env_solo_ms"] = timed(lambda: envs[0].step(acts[0]), a.reps * 4, lambda: None)
        rows["env_pop_serial_ms"] = timed(serial, a.reps, lambda: None)
        rows["env_pop_send_recv_ms"] = timed(halves, a.reps, lambda: None)
        for e in envs:
            e.close()
    for key in [k for k in rows if k.endswith("_ms")]:
        rows[key] = round(rows[key], 3)
    print(json.dumps(rows, indent=2))
    print(f"{'part':<10}{'one member':>12}{f'{a.k} members':>14}{'per member':>12}{'speed-up':>10}")
    for name, solo_key, pop_key in [("act", "act_solo_ms", "act_pop_ms"),
                                    ("update", "update_solo_ms", "update_pop_ms"),
                                    ("store", "store_solo_ms", "store_pop_ms"),
                                    ("sample", "sample_solo_ms", "sample_pop_ms"),
                                    ("env", "env_solo_ms", "env_pop_send_recv_ms"),
                                    ("env serial", "env_solo_ms", "env_pop_serial_ms")]:
        if solo_key in rows:
            s, p = rows[solo_key], rows[pop_key]
            print(f"{name:<10}{s:>10.3f}ms{p:>12.3f}ms{p / a.k:>10.3f}ms{s * a.k / p:>9.2f}x")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
