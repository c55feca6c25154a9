"""Config -> objects. The only module that calls ``hydra.utils.instantiate``.

Generic parts (envs, networks, optimizers, replay buffers, schedules, loggers) are built here; an algorithm's
``build`` module (`dqnrun.algos`) combines them into the parts its class receives, and `build_algorithm`
instantiates ``algo`` with them. Derived values (observation shape, action count, device) are passed as
arguments and never written back into the config, so the stored config is exactly what the user asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import gymnasium as gym
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dqnrun.envs import make_env, make_vector_env, obs_dtype_and_shape, probe_spaces, resolve_env_id
from dqnrun.errors import UsageError

if TYPE_CHECKING:  # torch is imported where a part is built: an env's spec and probe load none
    import torch
    from torch import nn

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


T = TypeVar("T")


def _build(what: str, make: Callable[[], T]) -> T:
    """``make()`` (an ``instantiate``), with any failure turned into one line ``<what>: <its cause>``; instantiate
    wraps constructor errors, so the cause is what the user can act on."""
    try:
        return make()
    except Exception as exc:
        cause = exc.__cause__ or exc
        if isinstance(cause, UsageError):
            raise cause from None
        first = (str(cause).strip().splitlines() or [repr(cause)])[0]
        raise UsageError(f"{what}: {first}") from None


def env_wrapper(cfg_env: DictConfig) -> Callable[[gym.Env], gym.Env] | None:
    """``env.wrappers`` (validated as a list of ``_target_`` configs): each called as ``target(env=env,
    **kwargs)``, in order, around every single env (training, evaluation, video); then, with
    ``env.action_mask``, `dqnrun.envs.masks.ActionMaskInfo` outermost (a wrapper of the user's may be what
    reports the mask). None if there is nothing to wrap."""
    specs = cfg_env.get("wrappers") or []
    masked = bool(cfg_env.get("action_mask", False))
    return _WrapperChain(specs, masked) if specs or masked else None


class _WrapperChain:
    """Picklable (a sweep launcher may pickle the env factories)."""

    def __init__(self, specs: Any, masked: bool = False) -> None:
        self.specs = OmegaConf.to_container(specs, resolve=True) if OmegaConf.is_config(specs) else list(specs)
        self.masked = masked

    def __call__(self, env: gym.Env) -> gym.Env:
        for i, spec in enumerate(self.specs):  # type: ignore[union-attr]
            env = _build(f"env.wrappers[{i}]: cannot wrap the env with {spec.get('_target_')}",
                         lambda spec=spec, env=env: instantiate(spec, env=env))
        if self.masked:
            from dqnrun.envs.masks import ActionMaskInfo

            env = ActionMaskInfo(env)
        return env


def build_env_spec(cfg_env: DictConfig) -> EnvSpec:
    obs_space, act_space = probe_spaces(cfg_env.id, env_kwargs(cfg_env), env_wrapper(cfg_env), _atari(cfg_env))
    return EnvSpec(cfg_env.id, obs_space, act_space)  # type: ignore[arg-type]


def _atari(cfg_env: DictConfig) -> dict[str, Any] | None:
    """The ``env.atari`` block of an Atari preset (ale_py's C++ vector env and its preprocessing), else None."""
    atari = cfg_env.get("atari")
    return None if atari is None else OmegaConf.to_container(atari, resolve=True)  # type: ignore[return-value]


def build_vector_env(cfg_env: DictConfig, num_envs: int | None = None, threads: int | None = None,
                     evaluation: bool = False) -> gym.vector.VectorEnv:
    """The training envs, or (``evaluation``) envs for greedy evaluation: those report raw game scores of
    whole games (Atari: no life-loss terminations, no reward clipping). ``threads`` caps an env's own worker
    threads (ale_py's C++ vector env) to this job's share of the cores."""
    n = cfg_env.num_envs if num_envs is None else num_envs
    return make_vector_env(cfg_env.id, n, env_kwargs(cfg_env), cfg_env.get("vectorization", "auto"),
                           wrapper=env_wrapper(cfg_env), atari=_atari(cfg_env), threads=threads,
                           evaluation=evaluation)


def build_render_env(cfg_env: DictConfig, render_mode: str) -> gym.Env:
    """One env that renders (videos, ``render=human``), with training's observations: wrappers included; for
    Atari, Gymnasium's twin of the C++ vector env's preprocessing."""
    atari = _atari(cfg_env)
    if atari is not None:
        from dqnrun.envs import atari as A

        return A.make_render_env(atari, render_mode)
    return make_env(resolve_env_id(cfg_env.id), env_kwargs(cfg_env), env_wrapper(cfg_env), render_mode=render_mode)


def build_network(cfg_network: DictConfig, spec: EnvSpec, **head: Any) -> nn.Module:
    """The ``network`` config for this env's spaces; ``head`` (e.g. ``head="c51"``) comes from the algorithm."""
    _, shape, n_cat = obs_dtype_and_shape(spec.observation_space)
    extra: dict[str, Any] = {"n_obs_categories": n_cat} if n_cat else {}
    return _build(f"network: cannot build {cfg_network.get('_target_')}",
                  lambda: instantiate(cfg_network, obs_shape=shape, n_actions=spec.n_actions, **extra, **head))


def resolve_device(requested: str, network: nn.Module, spec: EnvSpec) -> torch.device:
    """`auto`: CUDA for pixel observations or networks with >= AUTO_CUDA_MIN_PARAMS parameters."""
    import torch

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
    return _build(f"optimizer: cannot build {cfg_optimizer.get('_target_')}",
                  lambda: instantiate(cfg_optimizer, **kwargs)(params=params))


def _obs_storage(spec: EnvSpec) -> tuple[tuple[int, ...], torch.dtype]:
    """Per-observation shape and the torch dtype replay stores it in (the observation space's dtype)."""
    import torch

    np_dtype, shape, _ = obs_dtype_and_shape(spec.observation_space)
    return shape, torch.from_numpy(np.zeros((), dtype=np_dtype)).dtype


def check_replay_memory(cfg_replay: DictConfig, spec: EnvSpec, num_envs: int = 1) -> None:
    """Estimate the buffer's bytes before allocating it; refuse what the machine cannot hold."""
    from dqnrun.replay import ReplayBuffer

    shape, dtype = _obs_storage(spec)
    storage = cfg_replay.get("storage", "transitions")
    need = ReplayBuffer.nbytes(cfg_replay.capacity, shape, dtype, storage=storage, num_envs=num_envs,
                               n_step=cfg_replay.get("n_step", 1))
    avail = available_memory_bytes()
    if avail is not None and need > avail:
        hint = "" if storage == "frames" or len(shape) < 3 else " (or store each frame once: replay.storage=frames)"
        raise UsageError(
            f"replay.capacity={cfg_replay.capacity} needs {need / 2**30:.1f} GiB but only "
            f"{avail / 2**30:.1f} GiB of memory is available; lower replay.capacity{hint}"
        )


def build_replay(cfg_replay: DictConfig, spec: EnvSpec, device: torch.device, seed: int,
                 gamma: float = 0.99, num_envs: int = 1, masked: bool = False) -> ReplayBuffer:
    """The ``replay`` config for this env; ``masked`` (env.action_mask) keeps each row's next legal actions."""
    check_replay_memory(cfg_replay, spec, num_envs)
    shape, dtype = _obs_storage(spec)
    replay_device = _replay_device(cfg_replay.get("device", "auto"), device)
    return _build("replay: cannot build the buffer", lambda: instantiate(
        cfg_replay, obs_shape=shape, obs_dtype=dtype, device=replay_device, seed=seed, gamma=gamma, num_envs=num_envs,
        mask_actions=spec.n_actions if masked else 0))


def _replay_device(requested: str, learner_device: torch.device) -> torch.device:
    """``auto``: the learner's device, so that a sampled batch never crosses the bus."""
    import torch

    return learner_device if requested in (None, "auto") else torch.device(requested)


def build_logger(cfg: DictConfig, run_dir: Path, label: str, purge_step: int | None) -> Any:
    """The ``logger`` group: one logger, or a ``MultiLogger`` over several (``logger=[tensorboard,csv]``)."""
    from dqnrun.loggers import MultiLogger

    specs = cfg.get("logger") or {}
    config = OmegaConf.to_container(cfg, resolve=True)
    # the run's config goes to the constructor as it is: an instantiate kwarg is first merged into a DictConfig
    # (7 of a CartPole logger's 8 ms)
    loggers = [
        _build(f"logger.{name}: cannot start {spec.get('_target_')}", lambda spec=spec: instantiate(
            spec, _partial_=True, _recursive_=False, _convert_="all")(
            run_dir=run_dir, label=label, purge_step=purge_step, run_config=config))
        for name, spec in specs.items() if spec is not None
    ]
    return loggers[0] if len(loggers) == 1 else MultiLogger(loggers)


def build_schedule(cfg_schedule: DictConfig) -> Any:
    return instantiate(cfg_schedule)


def build_algorithm(cfg: DictConfig, spec: EnvSpec) -> Any:
    """The algorithm ``cfg.algo`` names, instantiated with the parts its ``build`` module makes from the config
    (`dqnrun.algos`): ``instantiate(cfg.algo, **parts)``."""
    from dqnrun.config.rules import algorithm_module

    parts = algorithm_module(cfg).parts(cfg, spec)
    return _build(f"algo: cannot build {cfg.algo.get('_target_')}", lambda: instantiate(cfg.algo, **parts))


def available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
