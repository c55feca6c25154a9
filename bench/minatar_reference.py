"""Young and Tian's own DQN (MinAtar's ``examples/dqn.py``, the code behind the published MinAtar curves) run on
this machine for a given number of frames, beside dqnrun's MinAtar runs.

The published DQN curves exist only as an image (the paper's Figure 2, ``img/learning_curves.gif``); running the
code that made them, with its own constants, on the same machine and at the same frame count gives the numbers
to put beside dqnrun's. This script does not copy that code: it imports the ``dqn.py`` you point it at (a
MinAtar checkout's ``examples/dqn.py``), seeds it, lowers ``NUM_FRAMES`` (its epsilon schedule and every other
constant do not depend on it, so the first N frames are those of a full 5M-frame run), and records each episode's
return and end frame through a thin proxy around the ``minatar.Environment`` it plays. Nothing of the run is
changed by the proxy.

    git clone https://github.com/kenjyoung/MinAtar /tmp/MinAtar
    .venv/bin/python bench/minatar_reference.py --dqn-py /tmp/MinAtar/examples/dqn.py --game breakout \
        --seed 0 --frames 1000000 --out /tmp/ref_breakout_0.json
    .venv/bin/python bench/minatar_reference.py --table /tmp/ref_breakout_0.json [more.json ...] \
        [--dqnrun <multirun dir>]

``--table`` prints, per game, the mean training return (epsilon 0.1 after the first 105k frames, as in the
published curves) of the episodes that end in the 50k frames before each mark, averaged over seeds; with
``--dqnrun`` it reads dqnrun's runs (the episode returns in their TensorBoard scalars) the same way. Frames/s are
in the JSON but not in the table: these runs share the cores, so their rates are not a speed comparison.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

MARKS = (100_000, 250_000, 350_000, 500_000, 750_000, 1_000_000)
WINDOW = 50_000


class Recorder:
    """Stands in for ``minatar.Environment``: passes every call through and notes each episode's return."""

    def __init__(self, env: Any, out: Path, meta: dict[str, Any], flush_every: int = 50_000) -> None:
        self._env, self._out, self.meta, self._flush_every = env, out, meta, flush_every
        self.frames, self.ret, self.episodes = 0, 0.0, []
        self.t0 = time.perf_counter()

    def act(self, action: Any) -> tuple[float, bool]:
        reward, terminated = self._env.act(action)
        self.frames += 1
        self.ret += float(reward)
        if terminated:
            self.episodes.append((self.frames, self.ret))
            self.ret = 0.0
        if self.frames % self._flush_every == 0:
            self.flush()
        return reward, terminated

    def flush(self) -> None:
        elapsed = time.perf_counter() - self.t0
        self._out.write_text(json.dumps({"frames": self.frames, "seconds": round(elapsed, 1),
                                         "frames_per_s": round(self.frames / max(elapsed, 1e-9), 1),
                                         "episodes": self.episodes, **self.meta}))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)


def run(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    from minatar import Environment

    torch.set_num_threads(args.threads)
    spec = importlib.util.spec_from_file_location("minatar_reference_dqn", args.dqn_py)
    assert spec is not None and spec.loader is not None
    dqn = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dqn)
    dqn.NUM_FRAMES = args.frames
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    game = Environment(args.game)  # its defaults: sticky actions 0.1, difficulty ramping, the full action set
    game.seed(args.seed)
    env = Recorder(game, out, {"game": args.game, "seed": args.seed, "source": str(args.dqn_py),
                               "threads": args.threads, "num_actions": game.num_actions()})
    dqn.dqn(env, False, False, str(out.with_suffix("")), step_size=dqn.STEP_SIZE)
    env.flush()
    print(f"{args.game} seed {args.seed}: {env.frames} frames in {time.perf_counter() - env.t0:.0f} s, "
          f"{len(env.episodes)} episodes -> {out}")


def window_means(episodes: list[tuple[int, float]]) -> dict[int, float | None]:
    """Mean return of the episodes ending in (mark - WINDOW, mark], per mark."""
    means: dict[int, float | None] = {}
    for mark in MARKS:
        rets = [r for end, r in episodes if mark - WINDOW < end <= mark]
        means[mark] = sum(rets) / len(rets) if rets else None
    return means


def dqnrun_episodes(run_dir: Path) -> list[tuple[int, float]]:
    """(end step, return) of every training episode of a dqnrun run, from its TensorBoard scalars."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: list[tuple[int, float]] = []
    for events in sorted(run_dir.glob("tb/**/events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if "charts/episodic_return" in acc.Tags()["scalars"]:
            out += [(e.step, e.value) for e in acc.Scalars("charts/episodic_return")]
    return sorted(out)


def table(args: argparse.Namespace) -> None:
    rows: dict[tuple[str, str], list[dict[int, float | None]]] = {}
    for path in args.table:
        data = json.loads(Path(path).read_text())
        key = (data["game"], "MinAtar examples/dqn.py")
        rows.setdefault(key, []).append(window_means([tuple(e) for e in data["episodes"]]))
    for multirun in args.dqnrun or []:
        for results in sorted(Path(multirun).glob("**/results.json")):
            res = json.loads(results.read_text())
            game = res["env_id"].split("/")[-1].split("-")[0].lower().replace("spaceinvaders", "space_invaders")
            extra = [o for o in res.get("overrides", []) if not o.startswith(("env=", "seed=", "log."))]
            key = (game, "dqnrun " + (" ".join(extra) if extra else "preset"))
            rows.setdefault(key, []).append(window_means(dqnrun_episodes(results.parent)))
    print("| game | implementation | seeds | " + " | ".join(f"{m // 1000}k" for m in MARKS) + " |")
    print("|---|---|---|" + "---|" * len(MARKS))
    for (game, impl), per_seed in sorted(rows.items()):
        cells = []
        for mark in MARKS:
            vals = [s[mark] for s in per_seed if s[mark] is not None]
            cells.append(f"{sum(vals) / len(vals):.1f}" if vals else "-")
        print(f"| {game} | {impl} | {len(per_seed)} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dqn-py", type=Path, help="MinAtar's examples/dqn.py")
    p.add_argument("--game", default="breakout")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=1_000_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="minatar_reference.json")
    p.add_argument("--table", nargs="+", help="JSON files of reference runs: print the comparison table")
    p.add_argument("--dqnrun", nargs="+", help="dqnrun multirun directories to put beside them")
    args = p.parse_args(argv)
    if args.table:
        table(args)
    elif args.dqn_py is None:
        sys.exit("minatar_reference: --dqn-py <MinAtar checkout>/examples/dqn.py is needed to run")
    else:
        run(args)


if __name__ == "__main__":
    main()
