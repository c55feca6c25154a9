"""Config -> objects. The only module that calls ``hydra.utils.instantiate``.

Derived values (observation shape, action count, device) are passed as arguments and never written back
into the config, so the stored config is exactly what the user asked for.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dqnrun.envs import make_vector_env, obs_dtype_and_shape, probe_spaces
from dqnrun.errors import UsageError
from dqnrun.learner import Learner
from dqnrun.replay import ReplayBuffer

# `device=auto` puts a network on CUDA only when it is big enough to gain from it. For DQN-sized MLPs the
# update is dominated by per-op dispatch, which a GPU does not shorten, and acting then pays a host-device
# copy per env step; pixel networks (CNNs) and wide MLPs are compute-bound and do gain.
AUTO_CUDA_MIN_PARAMS = 1_000_000


@dataclass(frozen=True)
class EnvSpec:
    """What the builders need to know about an env: spaces, without keeping an env open."""

    env_id: str
    observation_space: gym.Space
    action_space: gym.spaces.Discrete

    @property
    def n_actions(self) -> int:
        return int(self.action_space.n)


def env_kwargs(cfg_env: DictConfig) -> dict[str, Any]:
    kwargs = cfg_env.get("kwargs")
    return {} if kwargs is None else OmegaConf.to_container(kwargs, resolve=True)  # type: ignore[return-value]


def build_env_spec(cfg_env: DictConfig) -> EnvSpec:
    obs_space, act_space = probe_spaces(cfg_env.id, env_kwargs(cfg_env))
    return EnvSpec(cfg_env.id, obs_space, act_space)  # type: ignore[arg-type]


def build_vector_env(cfg_env: DictConfig, num_envs: int | None = None) -> gym.vector.VectorEnv:
    n = cfg_env.num_envs if num_envs is None else num_envs
    return make_vector_env(cfg_env.id, n, env_kwargs(cfg_env), cfg_env.get("vectorization", "auto"))


def build_network(cfg_network: DictConfig, spec: EnvSpec, cfg_learner: DictConfig | None = None) -> nn.Module:
    _, shape, n_cat = obs_dtype_and_shape(spec.observation_space)
    extra: dict[str, Any] = {"n_obs_categories": n_cat} if n_cat else {}
    if cfg_learner is not None and cfg_learner.get("distributional"):
        extra.update(n_atoms=cfg_learner.atoms, v_min=cfg_learner.v_min, v_max=cfg_learner.v_max)
    try:
        return instantiate(cfg_network, obs_shape=shape, n_actions=spec.n_actions, **extra)
    except Exception as exc:  # instantiate wraps constructor errors; surface the cause in one line
        cause = exc.__cause__ or exc
        raise UsageError(f"network: cannot build {cfg_network.get('_target_')}: {cause}") from None


def resolve_device(requested: str, network: nn.Module, spec: EnvSpec) -> torch.device:
    """`auto`: CUDA for pixel observations or networks with >= AUTO_CUDA_MIN_PARAMS parameters."""
    if requested != "auto":
        return torch.device(requested)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    n_params = sum(p.numel() for p in network.parameters())
    pixels = len(getattr(spec.observation_space, "shape", ()) or ()) >= 3
    return torch.device("cuda" if pixels or n_params >= AUTO_CUDA_MIN_PARAMS else "cpu")


def build_optimizer(cfg_optimizer: DictConfig, params: Any, device: torch.device) -> torch.optim.Optimizer:
    kwargs: dict[str, Any] = {}
    if cfg_optimizer.get("fused") and device.type not in ("cpu", "cuda"):
        kwargs["fused"] = False  # fused kernels exist for CPU and CUDA only
    try:
        return instantiate(cfg_optimizer, **kwargs)(params=params)
    except Exception as exc:
        cause = exc.__cause__ or exc
        raise UsageError(f"optimizer: cannot build {cfg_optimizer.get('_target_')}: {cause}") from None


def _obs_storage(spec: EnvSpec) -> tuple[tuple[int, ...], torch.dtype]:
    """Per-observation shape and the torch dtype replay stores it in (the observation space's dtype)."""
    np_dtype, shape, _ = obs_dtype_and_shape(spec.observation_space)
    return shape, torch.from_numpy(np.zeros((), dtype=np_dtype)).dtype


def check_replay_memory(cfg_replay: DictConfig, spec: EnvSpec) -> None:
    """Estimate the buffer's bytes before allocating it; refuse what the machine cannot hold."""
    shape, dtype = _obs_storage(spec)
    need = ReplayBuffer.nbytes(cfg_replay.capacity, shape, dtype)
    avail = available_memory_bytes()
    if avail is not None and need > avail:
        raise UsageError(
            f"replay.capacity={cfg_replay.capacity} needs {need / 2**30:.1f} GiB but only "
            f"{avail / 2**30:.1f} GiB of memory is available; lower replay.capacity"
        )


def build_replay(cfg_replay: DictConfig, spec: EnvSpec, device: torch.device, seed: int,
                 gamma: float = 0.99) -> ReplayBuffer:
    check_replay_memory(cfg_replay, spec)
    shape, dtype = _obs_storage(spec)
    return instantiate(cfg_replay, obs_shape=shape, obs_dtype=dtype, device=device, seed=seed, gamma=gamma)


def build_schedule(cfg_schedule: DictConfig) -> Any:
    return instantiate(cfg_schedule)


def build_learner(cfg: DictConfig, spec: EnvSpec) -> tuple[Learner, torch.device]:
    """Online and target networks (same init), optimizer and learner, on the resolved device."""
    online = build_network(cfg.network, spec, cfg.learner)
    device = resolve_device(cfg.device, online, spec)
    online = online.to(device)
    target = copy.deepcopy(online)
    optimizer = build_optimizer(cfg.optimizer, online.parameters(), device)
    lc = cfg.learner
    learner = Learner(
        online, target, optimizer, gamma=lc.gamma, loss=lc.loss, max_grad_norm=lc.max_grad_norm,
        tau=lc.tau, double=lc.get("double", False), fast_mlp=lc.get("fast_mlp", True),
        distributional=lc.get("distributional", False), compile=cfg.get("compile", False),
    )
    return learner, device


def available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
