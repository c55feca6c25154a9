"""PQN's own keys: their rules and the checks across them, read before any run starts (no torch here: the command
line checks a sweep's jobs in a process that never trains). What the network must fit is checked where the
network is built (`dqnrun.algos.pqn.build.preflight`).
"""

from __future__ import annotations

from omegaconf import DictConfig

from dqnrun.config.rules import Rule, cross_check
from dqnrun.errors import UsageError

# Acts, explores and bootstraps only through the legal actions of envs that report them (env.action_mask).
ACTION_MASKS = True

# A resume cannot change the network's shape or the rollout's length (a rollout in progress is saved).
FROZEN_ON_RESUME = ("network", "algo.num_steps")

RULES: dict[str, Rule] = {
    "algo.num_steps": ("int", 1, 1_000_000, True, True, False),
    "algo.epochs": ("int", 1, 10_000, True, True, False),
    "algo.minibatches": ("int", 1, 1_000_000, True, True, False),
    "algo.q_lambda": ("float", 0, 1, True, True, False),
    "algo.lr_decay_steps": ("int", 1, float("inf"), True, True, True),
    "algo.reward_clip": ("float", 0, float("inf"), False, False, True),
    "learner.gamma": ("float", 0, 1, True, True, False),
    "learner.max_grad_norm": ("float", 0, float("inf"), False, False, True),
}
CHOICES = {"learner.loss": ("mse", "huber")}


def check(cfg: DictConfig) -> None:
    """PQN's rules across keys; each raises UsageError naming the keys and what to do."""
    cross_check(cfg, RULES, (), CHOICES)
    algo = cfg.algo
    batch = algo.num_steps * cfg.env.num_envs
    if algo.minibatches > batch:
        raise UsageError(f"algo.minibatches={algo.minibatches} exceeds the rollout's {batch} transitions "
                         f"(algo.num_steps={algo.num_steps} x env.num_envs={cfg.env.num_envs}); lower "
                         "algo.minibatches or lengthen the rollout")
    if cfg.total_steps < batch:
        raise UsageError(f"total_steps={cfg.total_steps} is shorter than one rollout of {batch} env steps "
                         f"(algo.num_steps={algo.num_steps} x env.num_envs={cfg.env.num_envs}): the run would "
                         "never update; raise total_steps or shorten the rollout")
    for key in ("learner.distributional", "learner.double", "learner.munchausen"):
        if cfg.get("learner") is not None and cfg.learner.get(key.split(".")[1]):
            raise UsageError(f"{key} is a DQN switch; PQN has no target network or replay. Drop it, or use algo=dqn")
    if cfg.network.get("noisy"):
        raise UsageError("network.noisy=true is not supported by algo=pqn (it explores epsilon-greedily); "
                         "set network.noisy=false or use algo=dqn")
