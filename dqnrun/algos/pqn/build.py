"""Config -> PQN's parts. Part of the builder layer: the only PQN module that sees a config.

``algo=pqn`` composes ``algo.*`` (rollout length, epochs, minibatches, lambda, learning-rate decay, reward
clipping), ``learner.*`` (discount, loss, gradient clipping), ``network.*`` (a LayerNorm network in every
preset), ``optimizer.*`` (RAdam) and ``schedule.*`` (epsilon); `parts` turns them into what `PQN` receives.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig
from torch import nn

from dqnrun import builders
from dqnrun.builders import EnvSpec
from dqnrun.envs import obs_dtype_and_shape


def build_policy(cfg: DictConfig, spec: EnvSpec) -> nn.Module:
    """The Q-network, untrained: what a checkpoint's ``policy`` weights load into (eval, export, API)."""
    return builders.build_network(cfg.network, spec)


def preflight(cfg: DictConfig, spec: EnvSpec) -> None:
    """The network fits the env's spaces (before any run directory exists)."""
    build_policy(cfg, spec)


def parts(cfg: DictConfig, spec: EnvSpec) -> dict[str, Any]:
    """The network on its device, its optimizer, the epsilon schedule, the env's sizes and the update's
    settings: the arguments `PQN` takes besides its own ``algo.*`` values."""
    network = build_policy(cfg, spec)
    device = builders.resolve_device(cfg.device, network, spec)
    network = network.to(device)
    optimizer = builders.build_optimizer(cfg.optimizer, network.parameters(), device)
    dtype, shape, _ = obs_dtype_and_shape(spec.observation_space)
    lc = cfg.learner
    return {"network": network, "optimizer": optimizer, "schedule": builders.build_schedule(cfg.schedule),
            "n_actions": spec.n_actions, "num_envs": cfg.env.num_envs, "obs_shape": shape, "obs_dtype": dtype,
            "seed": cfg.seed, "gamma": lc.gamma, "max_grad_norm": lc.max_grad_norm, "loss": lc.loss}
