"""The cost floor of DQN on this CPU: bare, preallocated pieces timed without any framework around them.

- one DQN update (target forward, online forward + gather, Huber loss, backward, clip_grad_norm,
  Adam step), with Adam(fused=True) and the default (foreach) Adam, alternated;
- one vectorized CartPole step (Gymnasium's numpy CartPoleVectorEnv) for n = 1, 4, 16, 64;
- one batched action selection (numpy obs -> tensor -> forward -> argmax -> numpy) for the same n;
- dqnrun's ReplayBuffer.add of one 1-env transition and one burst sample.

Then it predicts the per-env-step cost of the two configurations that bench/throughput.py runs:
updates/step x update + acting + env step (+ replay add), and the steps/s a whole run would reach.

    .venv/bin/python bench/floor.py [--quick] [--rounds 5] [--compile] [--json out.json]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import _common as C
import gymnasium as gym
import numpy as np
import torch
from torch import nn

NETS = [((256, 256), 64), ((120, 84), 128), ((64, 64), 128)]
ENV_NS = [1, 4, 16, 64]
BURST = 16  # gradient steps per burst for the "dqnrun, burst of G" column (one batched target forward)
BURST_KEY = f"dqnrun_g{BURST}"
OBS_DIM, N_ACTIONS = 4, 2


def mlp(hidden: tuple[int, ...]) -> nn.Module:
    layers: list[nn.Module] = []
    d = OBS_DIM
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    layers.append(nn.Linear(d, N_ACTIONS))
    return nn.Sequential(*layers)


def make_update(hidden: tuple[int, ...], batch: int, fused: bool) -> Callable[[], None]:
    """A closure doing one full DQN update on a preallocated batch (what SB3's train() does per step)."""
    torch.manual_seed(0)
    online, target = mlp(hidden), mlp(hidden)
    target.load_state_dict(online.state_dict())
    target.requires_grad_(False)
    opt = torch.optim.Adam(online.parameters(), lr=1e-3, fused=fused)
    params = list(online.parameters())
    obs, next_obs = torch.randn(batch, OBS_DIM), torch.randn(batch, OBS_DIM)
    action = torch.randint(0, N_ACTIONS, (batch,))
    reward, terminated = torch.ones(batch), torch.zeros(batch)
    gamma = 0.99

    def step() -> None:
        with torch.no_grad():
            y = reward + gamma * (1.0 - terminated) * target(next_obs).max(1).values
        q = online(obs).gather(1, action.unsqueeze(1)).squeeze(1)
        loss = nn.functional.smooth_l1_loss(q, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 10.0, foreach=True)
        opt.step()

    return step


def make_dqnrun_update(hidden: tuple[int, ...], batch: int, g: int,
                       extra: tuple[str, ...] = ()) -> Callable[[], None] | None:
    """dqnrun's own Learner.update on a preallocated (G, B) burst, built through dqnrun's builders (so with
    whatever update path dqnrun picks for an MLP). One call = G gradient steps. None if the API moved."""
    try:
        from dqnrun import builders
        from dqnrun.replay import Batch

        hid = "[" + ",".join(map(str, hidden)) + "]"
        cfg = C.compose_dqnrun(["env=cartpole", "replay.n_step=1", "device=cpu",
                                f"network.hidden={hid}", f"replay.batch_size={batch}",
                                *extra])
        learner = builders.build_algorithm(cfg, builders.build_env_spec(cfg.env)).learner
    except Exception as exc:  # the benchmark must not break on an API change elsewhere
        print(f"(dqnrun Learner not measured: {type(exc).__name__}: {exc})")
        return None
    torch.manual_seed(0)
    b = Batch(torch.randn(g, batch, OBS_DIM), torch.randint(0, N_ACTIONS, (g, batch)), torch.ones(g, batch),
              torch.randn(g, batch, OBS_DIM), torch.zeros(g, batch))

    def step() -> None:
        learner.update(b)

    return step


def make_env_step(n: int, mode: str = "vector_entry_point") -> Callable[[], None]:
    envs = gym.make_vec("CartPole-v1", n, vectorization_mode=mode)
    envs.reset(seed=0)
    acts = np.random.default_rng(0).integers(0, N_ACTIONS, (1024, n))
    i = [0]

    def step() -> None:
        envs.step(acts[i[0] & 1023])
        i[0] += 1

    return step


def make_bare_env_step() -> Callable[[], None]:
    """One `gym.make("CartPole-v1")` env stepped directly, reset on episode end: the least a 1-env loop pays."""
    env = gym.make("CartPole-v1")
    env.reset(seed=0)
    acts = np.random.default_rng(0).integers(0, N_ACTIONS, 1024)
    i = [0]

    def step() -> None:
        _, _, terminated, truncated, _ = env.step(acts[i[0] & 1023])
        if terminated or truncated:
            env.reset()
        i[0] += 1

    return step


def make_act(hidden: tuple[int, ...], n: int) -> Callable[[], None]:
    """What dqnrun's loop does per vector step to pick greedy actions."""
    net = mlp(hidden)
    obs = np.random.default_rng(0).standard_normal((n, OBS_DIM)).astype(np.float32)

    def step() -> None:
        with torch.inference_mode():
            net(torch.as_tensor(obs)).argmax(1).cpu().numpy()

    return step


def make_replay_add(n: int = 1) -> Callable[[], None]:
    from dqnrun.replay import ReplayBuffer

    rb = ReplayBuffer(100_000, 64, (OBS_DIM,), torch.float32)
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((n, OBS_DIM)).astype(np.float32)
    a, r = np.zeros(n, np.int64), np.ones(n, np.float32)
    done = np.zeros(n, bool)
    valid = np.ones(n, bool)

    def step() -> None:
        rb.add(obs, a, r, obs, done, done, valid)

    return step


def make_replay_sample(batch: int, g: int) -> Callable[[], None]:
    from dqnrun.replay import ReplayBuffer

    rb = ReplayBuffer(100_000, batch, (OBS_DIM,), torch.float32)
    rb.size = rb.capacity

    def step() -> None:
        rb.sample(n_batches=g)

    return step


def time_us(fn: Callable[[], None], iters: int) -> float:
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters * 1e6


def bench_alternating(fns: dict[str, Callable[[], None]], iters: int, rounds: int, warmup: int,
                      divide: dict[str, int] | None = None) -> dict[str, float]:
    """Median over rounds of the mean µs per call; the candidates take turns within each round.
    ``divide[k]``: that call does k units of work; it is called iters // k times (at least 2)."""
    divide = divide or {}
    for k, fn in fns.items():
        time_us(fn, max(warmup // divide.get(k, 1), 1))
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            samples[k].append(time_us(fn, max(iters // divide.get(k, 1), 2)))
    return {k: C.median(v) for k, v in samples.items()}


def predict(cfg: C.DQNConfig, update_us: float, act_us: float, env_us: float, add_us: float) -> dict[str, float]:
    """Per-env-step cost in steady state, and the whole-run SPS given the exact update/forward counts."""
    ups = cfg.gradient_steps / cfg.train_freq
    steady = ups * update_us + act_us + env_us + add_us
    total = cfg.rounded_total()
    n_updates = cfg.expected_updates(total)
    acting_steps = max(total - cfg.learning_starts, 0)  # random acting before learning_starts: no forward
    run_us = n_updates * update_us + acting_steps * act_us + total * (env_us + add_us)
    return {
        "updates_per_step": ups, "steady_us_per_step": steady, "steady_sps": 1e6 / steady,
        "run_total_steps": total, "run_updates": n_updates, "run_seconds": run_us / 1e6,
        "run_sps": total / (run_us / 1e6),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few iterations: a smoke run, not a measurement")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per comparison (median kept)")
    p.add_argument("--update-iters", type=int, default=300, help="updates timed per round")
    p.add_argument("--cleanrl-total", type=int, default=30_000,
                   help="total_steps assumed for config (b) in the whole-run prediction (as throughput.py)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--compile", action="store_true",
                   help="also time dqnrun's compile=true update (adds ~20-40 s of compiling per net)")
    args = p.parse_args()
    rounds, u_iters, s_iters = args.rounds, args.update_iters, 2000
    if args.quick:
        rounds, u_iters, s_iters = 2, 20, 100
    torch.set_num_threads(1)

    env = C.environment()
    print(f"# floor: bare DQN pieces, torch threads 1 ({env['date']}, git {env.get('git')}, torch {env['torch']}, "
          f"gymnasium {env['gymnasium']}, {env['cpus']} CPUs)\n")

    # --- updates: fused vs default Adam, alternated ----------------------------------------------------
    upd: dict[str, dict[str, float]] = {}
    compile_s: dict[str, float] = {}
    rows = []
    for hidden, batch in NETS:
        key = f"{list(hidden)}/{batch}"
        fns = {"fused": make_update(hidden, batch, True), "foreach": make_update(hidden, batch, False)}
        d1, dg = make_dqnrun_update(hidden, batch, 1), make_dqnrun_update(hidden, batch, BURST)
        if d1 is not None and dg is not None:
            fns["dqnrun_g1"] = d1
            fns[BURST_KEY] = dg
        autograd = make_dqnrun_update(hidden, batch, 1, ("++learner.fast_mlp=false",))
        if autograd is not None:
            fns["dqnrun_autograd_g1"] = autograd
        if args.compile:  # compile=true: torch.compile of the autograd update; the first call compiles
            compiled = make_dqnrun_update(hidden, batch, 1, ("compile=true",))
            if compiled is not None:
                t0 = time.perf_counter()
                compiled()
                compile_s[key] = time.perf_counter() - t0
                fns["dqnrun_compiled_g1"] = compiled
        r = bench_alternating(fns, u_iters, rounds, warmup=max(u_iters // 5, 5), divide={BURST_KEY: BURST})
        if BURST_KEY in r:  # one call did BURST gradient steps: report per step
            r[BURST_KEY] = r[BURST_KEY] / BURST
        upd[key] = r
        rows.append([str(list(hidden)), batch, C.fmt(r["fused"]), C.fmt(r["foreach"]),
                     C.fmt(r["foreach"] / r["fused"], 2), C.fmt(r.get("dqnrun_g1")), C.fmt(r.get(BURST_KEY)),
                     C.fmt(r["dqnrun_g1"] / r["fused"], 2) if "dqnrun_g1" in r else "-",
                     C.fmt(r.get("dqnrun_autograd_g1")),
                     C.fmt(r["dqnrun_autograd_g1"] / r["dqnrun_g1"], 2)
                     if "dqnrun_autograd_g1" in r and "dqnrun_g1" in r else "-"]
                    + ([C.fmt(r.get("dqnrun_compiled_g1")), C.fmt(compile_s.get(key), 1)] if args.compile else []))
    print("## One DQN update (µs per gradient step)\n")
    print(C.md_table(["net", "batch", "bare, Adam(fused=True)", "bare, Adam (default)", "default/fused",
                      "dqnrun Learner.update, burst of 1", f"dqnrun, burst of {BURST} (per step)",
                      "dqnrun(1)/bare fused", "dqnrun fast_mlp=false, burst of 1", "fast_mlp speedup"]
                     + (["dqnrun compile=true, burst of 1", "compile seconds"] if args.compile else []), rows))
    print("\nbare = target forward, online forward + gather, Huber, backward, clip_grad_norm_(foreach), Adam step, "
          "on a preallocated batch (autograd). dqnrun = its Learner.update as built by dqnrun.builders (its own "
          "update path, incl. its metric accumulation); a burst of G shares one batched target forward. "
          "fast_mlp=false = dqnrun's autograd path; speedup = its time / the default path's.")

    # --- env step and action selection -----------------------------------------------------------------
    env_us = bench_alternating({str(n): make_env_step(n) for n in ENV_NS}
                               | {f"sync{n}": make_env_step(n, "sync") for n in ENV_NS}
                               | {"bare1": make_bare_env_step()}, s_iters, rounds, warmup=200)
    act_us: dict[str, dict[str, float]] = {}
    for hidden, _ in NETS:
        act_us[str(list(hidden))] = bench_alternating(
            {str(n): make_act(hidden, n) for n in ENV_NS}, s_iters, rounds, warmup=200)
    rows = []
    for n in ENV_NS:
        e = env_us[str(n)]
        rows.append([n, C.fmt(e, 1), C.fmt(e / n, 2), C.fmt(env_us[f"sync{n}"], 1)]
                    + [C.fmt(act_us[str(list(h))][str(n)], 1) for h, _ in NETS])
    print("\n## Vector env step and batched action selection (µs per call)\n")
    print(C.md_table(["n envs", "CartPoleVectorEnv.step", "per env step", "SyncVectorEnv.step (reference)"]
                     + [f"act {list(h)}" for h, _ in NETS], rows))
    print(f"\nbare gym.make('CartPole-v1') env.step (1 env, no vector wrapper): {env_us['bare1']:.1f} µs")

    # --- dqnrun replay --------------------------------------------------------------------------------
    rep = bench_alternating({"add(1 env)": make_replay_add(1), "add(4 envs)": make_replay_add(4)},
                            s_iters, rounds, warmup=200)
    rep.update(bench_alternating({"sample 128x64": make_replay_sample(64, 128),
                                  "sample 1x128": make_replay_sample(128, 1)},
                                 max(s_iters // 20, 10), rounds, warmup=5))
    print("\n## dqnrun ReplayBuffer (µs per call)\n")
    print(C.md_table(["operation", "µs"], [[k, C.fmt(v, 1)] for k, v in rep.items()]))

    # --- predictions for throughput.py's configurations -------------------------------------------------
    preds: dict[str, dict[str, float]] = {}
    rows = []
    cfgs = [(C.ZOO_CARTPOLE, "[256, 256]/64", BURST_KEY),
            (C.CLEANRL_DEFAULTS.with_total(args.cleanrl_total), "[120, 84]/128", "dqnrun_g1")]
    for cfg, key, dkey in cfgs:
        net = key.split("/")[0]
        env1 = min(env_us["1"], env_us["sync1"], env_us["bare1"])  # the cheapest way to step one env
        parts = (act_us[net]["1"], env1, rep["add(1 env)"])
        pr = predict(cfg, upd[key]["fused"], *parts)
        preds[cfg.name] = pr
        dq = predict(cfg, upd[key][dkey], *parts) if dkey in upd[key] else None
        if dq is not None:
            preds[cfg.name + " (dqnrun update)"] = dq
        rows.append([cfg.name, C.fmt(pr["updates_per_step"], 3), C.fmt(upd[key]["fused"]),
                     C.fmt(act_us[net]["1"], 1), C.fmt(env1, 1), C.fmt(rep["add(1 env)"], 1),
                     C.fmt(pr["steady_us_per_step"]), C.fmt(pr["steady_sps"]),
                     f"{pr['run_total_steps']:,} / {pr['run_updates']:,}", C.fmt(pr["run_sps"]),
                     C.fmt(upd[key].get(dkey)), C.fmt(dq["run_sps"]) if dq else "-"])
    print("\n## Predicted floor per env step, 1 env (µs)\n")
    print(C.md_table(["config", "updates/step", "update (bare fused)", "act", "env step", "replay add",
                      "µs/step (steady)", "steady SPS", "run steps / updates", "whole-run SPS",
                      "update (dqnrun)", "whole-run SPS with dqnrun's update"], rows))
    print("\nenv step = the cheapest of CartPoleVectorEnv, SyncVectorEnv and a bare gym.make env at n=1; "
          "act = the torch forward above. "
          "steady = updates/step x update + act + env step + replay add, after learning_starts. whole-run adds "
          "the random-acting warm-up (no forward, no updates) and the exact update count. Replay sampling and "
          "the loop's own bookkeeping are excluded; compare with bench/throughput.py's measured SPS.")

    print(f"\nload average at start: {env['loadavg_at_start']}; {C.load_note()}")
    env["load_at_end"] = C.load_note()
    C.write_json(args.json, {"env": env, "update_us": upd, "compile_seconds": compile_s, "env_step_us": env_us,
                             "act_us": act_us, "replay_us": rep, "predictions": preds, "args": vars(args)})


if __name__ == "__main__":
    main()
