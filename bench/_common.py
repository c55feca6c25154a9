"""Shared pieces of the benchmarks: the two compared configurations, tables, JSON output, run helpers.

Imported by the scripts in bench/ (which put this folder on sys.path by being run as files).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class DQNConfig:
    """One DQN configuration, stated once and translated to both dqnrun overrides and SB3 kwargs.

    All cadences count env steps (1 env here, so env steps == SB3 ``num_timesteps``).
    """

    name: str
    source: str
    total_steps: int
    lr: float
    batch_size: int
    buffer_size: int
    learning_starts: int
    gamma: float
    target_update_interval: int
    train_freq: int
    gradient_steps: int
    eps_start: float
    eps_end: float
    eps_decay_steps: int
    net_arch: tuple[int, ...]
    tau: float = 1.0
    max_grad_norm: float = 10.0
    num_envs: int = 1
    notes: list[str] = field(default_factory=list)

    def with_total(self, total_steps: int) -> DQNConfig:
        d = asdict(self)
        d["total_steps"] = int(total_steps)
        d["net_arch"] = tuple(d["net_arch"])
        return DQNConfig(**d)

    def rounded_total(self) -> int:
        """The number of env steps SB3 really runs for ``total_steps``: it collects whole rollouts of
        ``train_freq`` steps and only checks the budget between rollouts, so it rounds up."""
        return math.ceil(self.total_steps / self.train_freq) * self.train_freq

    def expected_updates(self, total: int | None = None) -> int:
        """Gradient steps both tools should do: one burst after every ``train_freq`` env steps once
        ``step > learning_starts``."""
        total = self.rounded_total() if total is None else total
        bursts = sum(
            1 for k in range(1, total // self.train_freq + 1) if k * self.train_freq > self.learning_starts
        )
        return bursts * self.gradient_steps

    def dqnrun_overrides(self, total: int, seed: int = 0) -> list[str]:
        hidden = "[" + ",".join(str(h) for h in self.net_arch) + "]"
        return [
            "env=cartpole", f"env.num_envs={self.num_envs}", f"seed={seed}", "device=cpu", "torch_threads=1",
            f"network.hidden={hidden}", f"optimizer.lr={self.lr}",
            f"replay.capacity={self.buffer_size}", f"replay.batch_size={self.batch_size}", "replay.n_step=1",
            f"algo.train_freq={self.train_freq}", f"algo.gradient_steps={self.gradient_steps}",
            f"algo.learning_starts={self.learning_starts}",
            f"algo.target_update_interval={self.target_update_interval}", f"learner.tau={self.tau}",
            "learner.loss=huber", f"learner.max_grad_norm={self.max_grad_norm}", f"learner.gamma={self.gamma}",
            "schedule=linear", f"schedule.start={self.eps_start}", f"schedule.end={self.eps_end}",
            f"schedule.decay_steps={self.eps_decay_steps}",
            f"total_steps={total}", "eval.every=0", "checkpoint.every=0", "log.progress=false",
        ]

    def sb3_kwargs(self, total: int) -> dict[str, Any]:
        """DQN(...) kwargs; SB3 expresses the epsilon decay as a fraction of ``total_timesteps``."""
        return {
            "learning_rate": self.lr, "batch_size": self.batch_size, "buffer_size": self.buffer_size,
            "learning_starts": self.learning_starts, "gamma": self.gamma,
            "target_update_interval": self.target_update_interval, "train_freq": self.train_freq,
            "gradient_steps": self.gradient_steps, "tau": self.tau, "max_grad_norm": self.max_grad_norm,
            "exploration_initial_eps": self.eps_start, "exploration_final_eps": self.eps_end,
            "exploration_fraction": self.eps_decay_steps / total,
            "policy_kwargs": {"net_arch": list(self.net_arch)},
        }


# rl-zoo3 hyperparams/dqn.yml, CartPole-v1 ("Almost Tuned"), checked against DLR-RM/rl-baselines3-zoo.
ZOO_CARTPOLE = DQNConfig(
    name="a: rl-zoo3 CartPole-v1", source="rl-baselines3-zoo hyperparams/dqn.yml",
    total_steps=50_000, lr=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1000, gamma=0.99,
    target_update_interval=10, train_freq=256, gradient_steps=128, eps_start=1.0, eps_end=0.04,
    eps_decay_steps=8000,  # exploration_fraction 0.16 x n_timesteps 5e4
    net_arch=(256, 256),
)

# CleanRL cleanrl/dqn.py defaults (total_timesteps 5e5, exploration_fraction 0.5 -> 250k-step decay).
CLEANRL_DEFAULTS = DQNConfig(
    name="b: CleanRL dqn.py defaults", source="vwxyzjn/cleanrl cleanrl/dqn.py Args",
    total_steps=500_000, lr=2.5e-4, batch_size=128, buffer_size=10_000, learning_starts=10_000, gamma=0.99,
    target_update_interval=500, train_freq=10, gradient_steps=1, eps_start=1.0, eps_end=0.05,
    eps_decay_steps=250_000, net_arch=(120, 84),
)


def compose_dqnrun(overrides: Sequence[str]) -> Any:
    """The config `dqnrun train OVERRIDES` runs (old key spellings work, as on the command line)."""
    from dqnrun.config.compose import compose, rewrite

    return compose("train", rewrite(list(overrides))[0])[0]


def sb3_silent(model: Any) -> Any:
    """Give an SB3 model a logger with no outputs. SB3's default is the same, except that it first creates a
    /tmp/SB3-<time> directory for every model."""
    from stable_baselines3.common.logger import Logger

    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def fmt(x: Any, nd: int = 0) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if math.isnan(x):
            return "-"
        return f"{x:,.{nd}f}"
    return str(x)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    import gymnasium
    import torch

    info: dict[str, Any] = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(), "torch": torch.__version__, "gymnasium": gymnasium.__version__,
        "machine": platform.machine(), "cpus": _cpu_count(),
    }
    try:
        import stable_baselines3

        info["stable_baselines3"] = stable_baselines3.__version__
    except ImportError:
        pass
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=False).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "dqnrun", "conf"],
                               capture_output=True, text=True, check=False).stdout.strip()
        info["git"] = rev
        if dirty:
            diff = subprocess.run(["git", "-C", str(REPO), "diff", "HEAD", "--", "dqnrun", "conf"],
                                  capture_output=True, text=True, check=False).stdout
            sha = hashlib.sha1(diff.encode()).hexdigest()[:10]
            info["git"] += f"+uncommitted dqnrun/conf changes (diff sha1 {sha})"
    except OSError:
        pass
    info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def load_note() -> str:
    return "load average (1/5/15 min) now: " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def _cpu_count() -> int | None:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"\nwrote {path}")
