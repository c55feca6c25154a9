"""A validation pass over the composed config, run before any work starts.

Each failure is a UsageError naming the key, the bad value and what to do instead.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dqnrun.envs import SEED_LIMIT
from dqnrun.errors import UsageError

INF = math.inf
# key: (kind, low, high, low_inclusive, high_inclusive, nullable)
TRAIN_RULES: dict[str, tuple[str, float, float, bool, bool, bool]] = {
    "seed": ("int", 0, SEED_LIMIT, True, False, False),
    "total_steps": ("int", 1, INF, True, True, False),
    "torch_threads": ("int", 1, 1024, True, True, False),
    "env.num_envs": ("int", 1, 4096, True, True, False),
    "optimizer.lr": ("float", 0, INF, False, True, False),
    "replay.capacity": ("int", 1, INF, True, True, False),
    "replay.batch_size": ("int", 1, INF, True, True, False),
    "schedule.start": ("float", 0, 1, True, True, False),
    "schedule.end": ("float", 0, 1, True, True, False),
    "schedule.decay_steps": ("int", 0, INF, True, True, False),
    "learner.gamma": ("float", 0, 1, True, True, False),
    "learner.train_freq": ("int", 1, INF, True, True, False),
    "learner.gradient_steps": ("int", 1, INF, True, True, False),
    "learner.learning_starts": ("int", 0, INF, True, True, False),
    "learner.target_update_interval": ("int", 1, INF, True, True, False),
    "learner.tau": ("float", 0, 1, False, True, False),
    "learner.max_grad_norm": ("float", 0, INF, False, True, True),
    "eval.every": ("int", 0, INF, True, True, False),
    "eval.episodes": ("int", 1, INF, True, True, False),
    "eval.epsilon": ("float", 0, 1, True, True, False),
    "eval.max_envs": ("int", 1, 4096, True, True, False),
    "checkpoint.every": ("int", 0, INF, True, True, False),
    "checkpoint.keep_last": ("int", 0, INF, True, True, False),
    "checkpoint.replay_max_gb": ("float", 0, INF, True, True, False),
    "log.every": ("int", 1, INF, True, True, False),
    "replay.n_step": ("int", 1, 1000, True, True, False),
    "replay.alpha": ("float", 0, 1, True, True, False),
    "replay.beta": ("float", 0, 1, True, True, False),
    "replay.beta_steps": ("int", 0, INF, True, True, False),
    "learner.atoms": ("int", 2, 10_000, True, True, False),
    "learner.v_min": ("float", -INF, INF, False, False, False),
    "learner.v_max": ("float", -INF, INF, False, False, False),
    "learner.reward_clip": ("float", 0, INF, False, False, True),
}
_ABSENT = object()
EVAL_RULES = {
    "episodes": ("int", 1, INF, True, True, False),
    "epsilon": ("float", 0, 1, True, True, True),
    "seed": ("int", 0, SEED_LIMIT, True, True, False),
    "video_episodes": ("int", 1, INF, True, True, False),
}
BOOL_KEYS = ("compile", "learner.double", "learner.distributional", "learner.fast_mlp", "network.dueling",
             "network.noisy", "network.noisy_input", "network.channels_last", "checkpoint.save_replay",
             "log.progress", "stop_when_solved", "env.atari.life_loss", "env.atari.fire_reset",
             "env.atari.full_action_space")
CHOICES = {
    "device": ("auto", "cpu", "cuda"),
    "learner.loss": ("huber", "mse", "half_sse"),
    "env.vectorization": ("auto", "sync", "async", "vector"),
    "objective": ("auc", "best_eval", "final_eval", "steps_to_solve"),
    "replay.storage": ("transitions", "frames"),
    "replay.device": ("auto", "cpu", "cuda"),
    "network.conv": (None, "nature", "minatar"),
}


def _interval(low: float, high: float, lo_inc: bool, hi_inc: bool) -> str:
    lo = "[" if lo_inc else "("
    hi = "]" if hi_inc and high != INF else ")"
    return f"{lo}{low:g}, {'inf' if high == INF else f'{high:g}'}{hi}"


def check_value(key: str, value: Any, rule: tuple[str, float, float, bool, bool, bool]) -> None:
    kind, low, high, lo_inc, hi_inc, nullable = rule
    if value is None:
        if nullable:
            return
        raise UsageError(f"{key} must be set (got null)")
    ok_type = isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "int":
        ok_type = ok_type and float(value).is_integer()
    if not ok_type:
        want, example = ("an integer", "1000") if kind == "int" else ("a number", "3e-4")
        raise UsageError(f"{key}={value!r} is not {want}; pass e.g. {key}={example}")
    v = float(value)
    if math.isnan(v) or (v < low or (v == low and not lo_inc)) or (v > high or (v == high and not hi_inc)):
        raise UsageError(f"{key}={value!r} is out of range; it must lie in {_interval(low, high, lo_inc, hi_inc)}")


def check_bool(cfg: DictConfig, key: str) -> None:
    """A switch must be true or false: `learner.double=yes` would otherwise be a truthy string."""
    value = OmegaConf.select(cfg, key, default=_ABSENT)
    if value is not _ABSENT and not isinstance(value, bool):
        raise UsageError(f"{key}={value!r} is not a boolean; pass {key}=true or {key}=false")


def _normalize_int(cfg: DictConfig, key: str, rule: tuple) -> None:
    """`total_steps=1e5` parses as a float; an integer setting gets the int it denotes."""
    value = _get(cfg, key)
    if rule[0] == "int" and isinstance(value, float):
        OmegaConf.update(cfg, key, int(value))


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, throw_on_missing=False)


def validate_train_config(cfg: DictConfig) -> None:
    """Raise UsageError for the first impossible value in a composed train config."""
    if OmegaConf.is_missing(cfg.env, "id"):
        raise UsageError("env.id is not set; pick a preset (env=cartpole) or set env.id=<Gymnasium id>")
    if not isinstance(cfg.env.id, str):
        raise UsageError(f"env.id={cfg.env.id!r} must be a string such as CartPole-v1")
    for key, rule in TRAIN_RULES.items():
        if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
            continue  # a key that only some group options have (e.g. replay.alpha)
        check_value(key, _get(cfg, key), rule)
        _normalize_int(cfg, key, rule)
    if _get(cfg, "learner.distributional") and not cfg.learner.v_min < cfg.learner.v_max:
        raise UsageError(f"learner.v_min={cfg.learner.v_min} must be below learner.v_max={cfg.learner.v_max}")
    for key in BOOL_KEYS:
        check_bool(cfg, key)
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and value not in choices:
            raise UsageError(f"{key}={value!r} is not one of {' | '.join(str(c) for c in choices)}")
    _check_names(cfg)
    kwargs = _get(cfg, "env.kwargs")
    if kwargs is not None and not OmegaConf.is_dict(kwargs):
        raise UsageError(f"env.kwargs={kwargs!r} must be a mapping; set one keyword with env.kwargs.NAME=value")
    wrappers = _get(cfg, "env.wrappers")
    if wrappers is not None and not (OmegaConf.is_list(wrappers) and all(
            OmegaConf.is_dict(w) and "_target_" in w for w in wrappers)):
        raise UsageError("env.wrappers must be a list of {_target_: ..., <kwargs>} entries, e.g. "
                         "'env.wrappers=[{_target_:gymnasium.wrappers.TimeAwareObservation}]'")
    if cfg.get("init_from") and cfg.get("resume") not in (None, "", "auto"):
        raise UsageError("init_from and resume exclude each other: resume continues a run (its optimizer and "
                         "counters too); init_from starts a new run from trained weights. Pass one of them")
    if cfg.get("stop_when_solved") and cfg.env.get("solved_score") is None:
        raise UsageError("stop_when_solved=true needs env.solved_score (this env has none); set "
                         "env.solved_score=<return>")
    if _get(cfg, "replay.storage") == "frames" and cfg.replay.get("latest"):
        raise UsageError("replay.storage=frames does not apply to replay=latest; use replay=uniform or prioritized")
    hidden = _get(cfg, "network.hidden")
    if hidden is not None and (
        not OmegaConf.is_list(hidden)
        or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden)
    ):
        raise UsageError(f"network.hidden={hidden} must be a list of positive integers, e.g. [64,64]")
    if cfg.replay.batch_size > cfg.replay.capacity:
        raise UsageError(
            f"replay.batch_size={cfg.replay.batch_size} exceeds replay.capacity={cfg.replay.capacity}; "
            "lower the batch size or raise the capacity"
        )
    if _get(cfg, "replay.latest") and cfg.learner.train_freq != cfg.env.num_envs:
        raise UsageError(
            f"replay=latest learns from each vector step once, so learner.train_freq={cfg.learner.train_freq} "
            f"must equal env.num_envs={cfg.env.num_envs}; set learner.train_freq={cfg.env.num_envs}"
        )
    if cfg.total_steps <= cfg.learner.learning_starts:
        raise UsageError(
            f"total_steps={cfg.total_steps} is not above learner.learning_starts={cfg.learner.learning_starts}: "
            "the run would never update; raise total_steps or lower learning_starts"
        )
    if _get(cfg, "schedule._target_") == "dqnrun.schedules.ExponentialSchedule" and (
        cfg.schedule.start <= 0 or cfg.schedule.end <= 0
    ):
        raise UsageError("schedule=exponential needs schedule.start > 0 and schedule.end > 0; "
                         "use schedule=linear to decay to 0")
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("device=cuda but no CUDA device is available; use device=auto or device=cpu")


def _check_names(cfg: DictConfig) -> None:
    name = cfg.get("name")
    if name is not None and not isinstance(name, str | int | float):
        raise UsageError(f"name={name!r} must be a string, e.g. name=baseline")
    tags = cfg.get("tags")
    if tags is not None and not (OmegaConf.is_list(tags) and all(isinstance(t, str | int | float) for t in tags)):
        raise UsageError(f"tags={tags!r} must be a list of strings, e.g. tags=[baseline,v2]")


def validate_eval_config(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "ckpt") or cfg.ckpt in (None, ""):
        raise UsageError("ckpt is required: dqnrun eval ckpt=outputs/<date>/<time>/checkpoints/best.pt")
    for key, rule in EVAL_RULES.items():
        if key in cfg:
            check_value(key, cfg[key], rule)
            _normalize_int(cfg, key, rule)
    check_bool(cfg, "video")
    if cfg.get("render") not in (None, "human"):
        raise UsageError(f"render={cfg.render!r} is not supported; use render=human (a window) or video=true")
