"""Every option of every config group in conf/ composes, validates and builds (found by walking conf/, as
lightning-hydra-template's tests/test_configs.py does, so a new preset is tested the day it is added)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dqnrun import builders
from dqnrun.config.compose import Composer
from dqnrun.config.rules import algorithm_module, validate_train_config
from dqnrun.errors import UsageError

CONF = Path(__file__).resolve().parents[2] / "conf"
TRAIN_GROUPS = ("algo", "env", "network", "optimizer", "replay", "schedule", "logger", "experiment")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


# env=custom is any id without a preset: tested with one (CartPole-v0 has no preset of its own)
ENV_ARGS = {"custom": ["env=custom", "env.id=CartPole-v0"]}


def env_args(env: str) -> list[str]:
    return ENV_ARGS.get(env, [f"env={env}"])


def compose(overrides: list[str], hydra: bool = False):  # noqa: ANN201
    with Composer() as c:
        return c.full("train", overrides, hydra) if hydra else c.task("train", overrides)


@functools.cache
def env_spec(env: str):  # noqa: ANN201
    return builders.build_env_spec(compose(env_args(env)).env)


def builds_on(overrides: list[str], env: str) -> bool:
    """Composes, validates and passes the algorithm's preflight (network fits the env, memory) on ``env``."""
    try:
        cfg = compose([*env_args(env), *overrides, "device=cpu"])
        validate_train_config(cfg)
        algorithm_module(cfg).preflight(cfg, env_spec(env))
    except UsageError:
        return False
    return True


def test_every_group_has_options() -> None:
    for group in TRAIN_GROUPS:
        assert options(group), group


@pytest.mark.parametrize("env", options("env"))
def test_every_env_preset_composes_validates_and_fits_its_network(env: str) -> None:
    cfg = compose(env_args(env))
    validate_train_config(cfg)
    spec = env_spec(env)
    assert spec.env_id == cfg.env.id or cfg.env.get("atari") is not None
    algorithm_module(cfg).preflight(cfg, spec)


def algo_only(env: str) -> bool:
    """Whether the env preset picks an option of a group only some algorithm has (the tabular presets pick
    replay=latest), as its defaults list says."""
    return (CONF / "env" / f"{env}.yaml").read_text().count("override /replay") > 0


@pytest.mark.parametrize("algo", options("algo"))
def test_every_env_preset_has_settings_tuned_for_each_algorithm(algo: str) -> None:
    """An env preset without ``tuned/<algo>/<env>.yaml`` would silently run on the algorithm's defaults; a
    preset that picks another algorithm's group (tabular presets: replay) has none."""
    tuned = {p.stem for p in (CONF / "tuned" / algo).glob("*.yaml")}
    usable = {env for env in options("env") if algo == "dqn" or not algo_only(env)}
    assert tuned == usable, (usable - tuned, tuned - usable)


@pytest.mark.parametrize("algo", options("algo"))
@pytest.mark.parametrize("env", options("env"))
def test_every_algorithm_on_every_env_preset_builds_or_says_why_in_one_line(algo: str, env: str) -> None:
    if algo != "dqn" and algo_only(env):
        with pytest.raises(UsageError, match=f"env={env} picks a replay option, which only algo=dqn has"):
            compose([*env_args(env), f"algo={algo}"])
        return
    cfg = compose([*env_args(env), f"algo={algo}", "device=cpu"])
    validate_train_config(cfg)
    algorithm_module(cfg).preflight(cfg, env_spec(env))
    assert cfg.algo._target_.startswith(f"dqnrun.algos.{algo}.")


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in TRAIN_GROUPS if g != "env" for o in options(g)])
def test_every_option_composes_validates_and_builds_on_some_env_preset(group: str, option: str) -> None:
    """Each option builds with at least one env preset (a CNN with pixels, a Q-table with discrete
    observations): the envs are tried in order, none is named here."""
    fits = next((env for env in options("env") if builds_on([f"{group}={option}"], env)), None)
    assert fits is not None, f"{group}={option} builds with no env preset"


@pytest.mark.parametrize("option", options("hparams_search"))
def test_every_search_space_names_keys_the_config_has(option: str) -> None:
    cfg = compose([f"hparams_search={option}"], hydra=True)
    validate_train_config(compose([f"hparams_search={option}"]))
    params = cfg.hydra.sweeper.params
    assert params, option
    for key in params:
        assert OmegaConf.select(cfg, str(key), default="__absent__") != "__absent__", f"{option}: {key}"


@pytest.mark.parametrize("option", options("hydra/launcher"))
def test_every_launcher_preset_composes(option: str) -> None:
    try:
        cfg = compose([f"hydra/launcher={option}"], hydra=True)
    except UsageError as exc:
        if "ray" in option and "ray" in str(exc):
            pytest.skip("the Ray launcher lives in its own environment (make test-ray)")
        raise
    assert cfg.hydra.launcher._target_
