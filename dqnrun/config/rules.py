"""Validation rules of a composed config: each rule in one place, checked before any work starts.

Each failure is a UsageError naming the key, the bad value and what to do instead. Validation never writes to
the config (`dqnrun.config.compose.normalize` turns ``total_steps=1e5`` into an int before it). Rules of the
keys every run has live here; an algorithm's own keys are checked by its ``rules.check`` (`algorithm_rules`). No
torch here: the command line validates a sweep in a process that never trains.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dqnrun.envs import SEED_LIMIT
from dqnrun.errors import UsageError

INF = math.inf
# The network options `dqnrun.networks` builds (its ACTIVATIONS, NORMS and TORSOS; a test keeps the two the same)
ACTIVATIONS = ("relu", "tanh", "elu", "gelu")
NORMS = ("layernorm",)
TORSOS = ("nature", "minatar")
# (kind, low, high, low_inclusive, high_inclusive, nullable)
Rule = tuple[str, float, float, bool, bool, bool]
TRAIN_RULES: dict[str, Rule] = {
    "seed": ("int", 0, SEED_LIMIT, True, False, False),
    "total_steps": ("int", 1, INF, True, True, False),
    "torch_threads": ("int", 1, 1024, True, True, False),
    "env.num_envs": ("int", 1, 4096, True, True, False),
    "optimizer.lr": ("float", 0, INF, False, False, False),
    "schedule.start": ("float", 0, 1, True, True, False),
    "schedule.end": ("float", 0, 1, True, True, False),
    "schedule.decay_steps": ("int", 0, INF, True, True, False),
    "eval.every": ("int", 0, INF, True, True, False),
    "eval.episodes": ("int", 1, INF, True, True, False),
    "eval.epsilon": ("float", 0, 1, True, True, False),
    "eval.max_envs": ("int", 1, 4096, True, True, False),
    "checkpoint.every": ("int", 0, INF, True, True, False),
    "checkpoint.keep_last": ("int", 0, INF, True, True, False),
    "checkpoint.replay_max_gb": ("float", 0, INF, True, False, False),
    "log.every": ("int", 1, INF, True, True, False),
    "network.atoms": ("int", 2, 10_000, True, True, False),
    "network.v_min": ("float", -INF, INF, False, False, False),
    "network.v_max": ("float", -INF, INF, False, False, False),
}
EVAL_RULES: dict[str, Rule] = {
    "episodes": ("int", 1, INF, True, True, False),
    "epsilon": ("float", 0, 1, True, True, True),
    "seed": ("int", 0, SEED_LIMIT, True, True, False),
    "video_episodes": ("int", 1, INF, True, True, False),
}
BOOL_KEYS = ("compile", "network.dueling", "network.noisy", "network.noisy_input", "network.channels_last",
             "checkpoint.save_replay", "log.progress", "stop_when_solved", "env.action_mask",
             "env.atari.life_loss", "env.atari.fire_reset", "env.atari.full_action_space")
CHOICES: dict[str, tuple[Any, ...]] = {
    "device": ("auto", "cpu", "cuda"),
    "env.vectorization": ("auto", "sync", "async", "vector"),
    "objective": ("auc", "best_eval", "final_eval", "steps_to_solve"),
    "network.conv": (None, *TORSOS),
    "network.activation": ACTIVATIONS,
    "network.norm": (None, *NORMS),
}
_ABSENT = object()


def _interval(low: float, high: float, lo_inc: bool, hi_inc: bool) -> str:
    lo = "[" if lo_inc else "("
    hi = "]" if hi_inc and high != INF else ")"
    return f"{lo}{low:g}, {'inf' if high == INF else f'{high:g}'}{hi}"


def check_value(key: str, value: Any, rule: Rule) -> None:
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


def get(cfg: DictConfig, key: str) -> Any:
    """The value at ``key``, or `_ABSENT` where the composed config has no such key (a key that only some
    group options have, e.g. replay.alpha)."""
    return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)


def cross_check(cfg: DictConfig, rules: dict[str, Rule], bool_keys: tuple[str, ...] = (),
                choices: dict[str, tuple[Any, ...]] | None = None) -> None:
    """Value rules, switches (true/false, never a truthy string) and choices, for the keys the config has."""
    for key, rule in rules.items():
        value = get(cfg, key)
        if value is not _ABSENT:
            check_value(key, value, rule)
    for key in bool_keys:
        value = get(cfg, key)
        if value is not _ABSENT and not isinstance(value, bool):
            raise UsageError(f"{key}={value!r} is not a boolean; pass {key}=true or {key}=false")
    for key, allowed in (choices or {}).items():
        value = get(cfg, key)
        if value is not _ABSENT and value not in allowed:
            raise UsageError(f"{key}={value!r} is not one of {' | '.join(str(c) for c in allowed)}")


def algorithm_name(cfg: DictConfig) -> str:
    """The registered name of the algorithm ``cfg.algo`` names."""
    from dqnrun.algos import name_of

    target = OmegaConf.select(cfg, "algo._target_", default=None)
    if not isinstance(target, str):
        raise UsageError("algo is not set; pick an algorithm with algo=dqn")
    try:
        return name_of(target)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None


def algorithm_rules(cfg: DictConfig) -> Any:
    """The ``rules`` module of the algorithm ``cfg.algo`` names (its keys' rules, checks, FROZEN_ON_RESUME)."""
    from dqnrun.algos import rules_module

    return rules_module(algorithm_name(cfg))


def algorithm_module(cfg: DictConfig) -> Any:
    """The ``build`` module of the algorithm ``cfg.algo`` names (its parts, policy and preflight; imports torch)."""
    from dqnrun.algos import build_module

    return build_module(algorithm_name(cfg))


def int_rules(cfg: DictConfig) -> list[str]:
    """Every key whose rule wants an integer (for `dqnrun.config.compose.normalize`)."""
    rules = {**TRAIN_RULES, **getattr(algorithm_rules(cfg), "RULES", {})}
    return [k for k, r in rules.items() if r[0] == "int"]


def validate_train_config(cfg: DictConfig) -> None:
    """Raise UsageError for the first impossible value in a composed train config."""
    if OmegaConf.is_missing(cfg.env, "id"):
        raise UsageError("env.id is not set; pick a preset (env=cartpole) or set env.id=<Gymnasium id>")
    if not isinstance(cfg.env.id, str):
        raise UsageError(f"env.id={cfg.env.id!r} must be a string such as CartPole-v1")
    cross_check(cfg, TRAIN_RULES, BOOL_KEYS, CHOICES)
    _check_names(cfg)
    kwargs = get(cfg, "env.kwargs")
    if kwargs not in (_ABSENT, None) and not OmegaConf.is_dict(kwargs):
        raise UsageError(f"env.kwargs={kwargs!r} must be a mapping; set one keyword with env.kwargs.NAME=value")
    wrappers = get(cfg, "env.wrappers")
    if wrappers not in (_ABSENT, None) and not (OmegaConf.is_list(wrappers) and all(
            OmegaConf.is_dict(w) and "_target_" in w for w in wrappers)):
        raise UsageError("env.wrappers must be a list of {_target_: ..., <kwargs>} entries, e.g. "
                         "'env.wrappers=[{_target_:gymnasium.wrappers.TimeAwareObservation}]'")
    if cfg.env.get("action_mask") and cfg.env.get("atari") is not None:
        raise UsageError("env.action_mask=true: Atari games report no legal actions (every action is legal); "
                         "set env.action_mask=false")
    if cfg.get("init_from") and cfg.get("resume") not in (None, "", "auto"):
        raise UsageError("init_from and resume exclude each other: resume continues a run (its optimizer and "
                         "counters too); init_from starts a new run from trained weights. Pass one of them")
    if cfg.get("stop_when_solved") and cfg.env.get("solved_score") is None:
        raise UsageError("stop_when_solved=true needs env.solved_score (this env has none); set "
                         "env.solved_score=<return>")
    hidden = get(cfg, "network.hidden")
    if hidden not in (_ABSENT, None) and (
        not OmegaConf.is_list(hidden)
        or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden)
    ):
        raise UsageError(f"network.hidden={hidden} must be a list of positive integers, e.g. [64,64]")
    start, end = get(cfg, "schedule.start"), get(cfg, "schedule.end")
    if isinstance(start, int | float) and isinstance(end, int | float) and end > start:
        raise UsageError(f"schedule.end={end} is above schedule.start={start}: epsilon decays from start to end; "
                         f"swap them (schedule.start={end} schedule.end={start})")
    if get(cfg, "schedule._target_") == "dqnrun.schedules.ExponentialSchedule" and (
        cfg.schedule.start <= 0 or cfg.schedule.end <= 0
    ):
        raise UsageError("schedule=exponential needs schedule.start > 0 and schedule.end > 0; "
                         "use schedule=linear to decay to 0")
    module = algorithm_rules(cfg)
    if cfg.env.get("action_mask") and not getattr(module, "ACTION_MASKS", False):
        raise UsageError(f"env.action_mask=true: algo={cfg.algo._target_.split('.')[-2]} does not act through "
                         "action masks yet; use algo=dqn or algo=pqn, or env.action_mask=false")
    module.check(cfg)
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
    video = cfg.get("video")
    if video is not None and not isinstance(video, bool):
        raise UsageError(f"video={video!r} is not a boolean; pass video=true or video=false")
    if cfg.get("render") not in (None, "human"):
        raise UsageError(f"render={cfg.render!r} is not supported; use render=human (a window) or video=true")
