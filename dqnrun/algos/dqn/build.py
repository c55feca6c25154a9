"""Config -> DQN's parts. Part of the builder layer: the only DQN module that sees a config.

``algo=dqn`` composes ``algo.*`` (the loop's cadences and reward clipping), ``learner.*`` (the update),
``replay.*``, ``schedule.*``, ``network.*`` and ``optimizer.*``; `parts` turns them into the objects
`dqnrun.algos.dqn.DQN` receives, and `dqnrun.builders.build_algorithm` instantiates ``algo`` with them.
"""

from __future__ import annotations

import copy
from typing import Any

from omegaconf import DictConfig
from torch import nn

from dqnrun import builders
from dqnrun.algos.dqn.heads import head_of
from dqnrun.algos.dqn.learner import Learner
from dqnrun.builders import EnvSpec


def head_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """What the network's head is, from ``learner.distributional``: C51's categorical distribution, QR's quantiles,
    IQN's (with its acting grid K); nothing for Q-learning (the network's default)."""
    head = head_of(cfg.learner.get("distributional", False))
    if head == "q":
        return {}
    if head == "iqn":
        return {"head": head, "iqn_k": cfg.learner.get("iqn_k", 32)}
    return {"head": head}


def build_policy(cfg: DictConfig, spec: EnvSpec) -> nn.Module:
    """The online network, untrained: what a checkpoint's ``policy`` weights load into (eval, export, API)."""
    return builders.build_network(cfg.network, spec, **head_kwargs(cfg))


def preflight(cfg: DictConfig, spec: EnvSpec) -> None:
    """Checks that need the env's spaces, before any run directory exists: the network fits the env, the
    replay fits in memory."""
    builders.check_replay_memory(cfg.replay, spec, cfg.env.num_envs)
    build_policy(cfg, spec)


def parts(cfg: DictConfig, spec: EnvSpec) -> dict[str, Any]:
    """The learner (online and target networks with the same init, optimizer), replay, epsilon schedule and
    action count: the arguments `DQN` takes besides its own ``algo.*`` values."""
    online = build_policy(cfg, spec)
    device = builders.resolve_device(cfg.device, online, spec)
    online = online.to(device)
    target = copy.deepcopy(online)
    optimizer = builders.build_optimizer(cfg.optimizer, online.parameters(), device)
    lc = cfg.learner
    learner = Learner(
        online, target, optimizer, gamma=lc.gamma, loss=lc.loss, max_grad_norm=lc.max_grad_norm,
        tau=lc.tau, double=lc.get("double", False), fast_mlp=lc.get("fast_mlp", True),
        distributional=lc.get("distributional", False), compile=cfg.get("compile", False),
        munchausen=lc.get("munchausen", False), munchausen_alpha=lc.get("munchausen_alpha", 0.9),
        munchausen_tau=lc.get("munchausen_tau", 0.03), munchausen_clip=lc.get("munchausen_clip", -1.0),
        iqn_n=lc.get("iqn_n", 64), iqn_n_prime=lc.get("iqn_n_prime", 64), seed=cfg.seed,
    )
    replay = builders.build_replay(cfg.replay, spec, device, seed=cfg.seed, gamma=lc.gamma,
                                   num_envs=cfg.env.num_envs, masked=bool(cfg.env.get("action_mask", False)))
    return {"learner": learner, "replay": replay, "schedule": builders.build_schedule(cfg.schedule),
            "n_actions": spec.n_actions}
