"""Configs derived from a job of the same shape (dqnrun.config.derive) equal Hydra's own compositions."""

from __future__ import annotations

import pytest
from hydra import initialize_config_module
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf

from dqnrun.config.compose import CONFIG_MODULE, Composer
from dqnrun.config.derive import Deriver, deriving


@pytest.fixture
def loader():
    with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
        yield GlobalHydra.instance().hydra.config_loader


def fresh(loader, overrides):
    """Hydra's own composition, the class's method (never derived)."""
    return ConfigLoaderImpl.load_configuration(loader, "train", list(overrides), RunMode.RUN)


def same(a, b) -> None:
    assert OmegaConf.to_container(a, resolve=False) == OmegaConf.to_container(b, resolve=False)
    assert OmegaConf.is_struct(a) == OmegaConf.is_struct(b)
    assert OmegaConf.is_readonly(a.hydra) == OmegaConf.is_readonly(b.hydra)


# (first job, second job, whether the second is derived from the first)
CASES = [
    (["env=cartpole", "seed=0"], ["env=cartpole", "seed=5"], True),
    (["optimizer.lr=1e-3", "network.hidden=[64,64]"], ["optimizer.lr=2.5e-3", "network.hidden=[32,32,32]"], True),
    (["hydra.sweep.subdir=0/1", "seed=1", "env=acrobot"], ["hydra.sweep.subdir=0/2", "seed=2", "env=acrobot"], True),
    (["seed=1", "seed=2"], ["seed=3", "seed=2"], True),  # the same key twice: the last one wins either way
    (["++env.kwargs.sutton_barto_reward=true", "seed=1"], ["++env.kwargs.sutton_barto_reward=false", "seed=2"], True),
    (["+extra=1", "seed=1"], ["+extra=1", "seed=2"], True),  # an addition word for word, a value that differs
    (["env=cartpole", "seed=1"], ["env=acrobot", "seed=1"], False),  # another config group choice
    (["+extra=1"], ["+extra=2"], False),  # an addition that differs
    (["seed=1", "~eval"], ["seed=2", "~eval"], True),
    (["seed=1", "+seed_b=2", "seed_b=3"], ["seed=1", "+seed_b=2", "seed_b=4"], False),  # added and set: composed
    (["optimizer=sgd", "optimizer.lr=0.1"], ["optimizer=sgd", "optimizer.lr=0.5"], True),
    (["eval.every=100", "eval=null"], ["eval.every=200", "eval=null"], False),  # a key and a key inside it
    (["learner.gamma=0.9", "hydra.job.chdir=true"], ["learner.gamma=0.95", "hydra.job.chdir=false"], True),
]


@pytest.mark.parametrize(("first", "second", "derived"), CASES)
def test_a_derived_config_is_hydras_composition(loader, first, second, derived) -> None:
    d = Deriver(lambda **kw: ConfigLoaderImpl.load_configuration(loader, **kw), loader.repository.group_exists)
    same(d("train", first, RunMode.RUN), fresh(loader, first))
    out = d("train", second, RunMode.RUN)
    assert d.derived == int(derived)
    same(out, fresh(loader, second))
    assert list(out.hydra.overrides.task) == [o for o in second if not o.startswith("hydra.")]
    # the base is kept apart from what callers do with the configs they are given
    out.seed = 99
    same(d("train", first, RunMode.RUN), fresh(loader, first))


def test_bad_values_fail_as_hydra_fails(loader) -> None:
    d = Deriver(lambda **kw: ConfigLoaderImpl.load_configuration(loader, **kw), loader.repository.group_exists)
    d("train", ["hydra.job.chdir=true"], RunMode.RUN)  # Hydra's own node is typed
    with pytest.raises(ConfigCompositionException) as ours:
        d("train", ["hydra.job.chdir=maybe"], RunMode.RUN)
    with pytest.raises(ConfigCompositionException) as theirs:
        fresh(loader, ["hydra.job.chdir=maybe"])
    assert str(ours.value) == str(theirs.value)
    assert d.derived == 1


def test_the_preflight_composes_each_shape_once() -> None:
    with Composer() as c:
        loader = GlobalHydra.instance().hydra.config_loader
        assert deriving(loader) is loader and isinstance(loader.load_configuration, Deriver)
        for seed in range(4):
            cfg = c.task("train", ["env=cartpole", f"seed={seed}", "optimizer.lr=1e-3"])
            assert cfg.seed == seed and cfg.optimizer.lr == 1e-3 and "hydra" not in cfg
        assert loader.load_configuration.derived == 3


def test_a_request_made_again_gets_a_copy_of_its_config_once(loader) -> None:
    """Hydra's sweeper composes a batch's jobs to check them, then the launcher composes the same jobs: the second
    request gets a copy of the first's config (not composed or derived again); what a caller does to its copy
    reaches no later request; a third request composes again; only the last `Deriver.RECENT` requests are kept."""
    d = Deriver(lambda **kw: ConfigLoaderImpl.load_configuration(loader, **kw), loader.repository.group_exists)
    job = ["env=cartpole", "seed=1"]
    first = d("train", job, RunMode.RUN)
    first.seed = 99
    again = d("train", job, RunMode.RUN)
    assert (d.repeated, d.derived) == (1, 0) and again is not first
    same(again, fresh(loader, job))
    again.seed = 98
    same(d("train", job, RunMode.RUN), fresh(loader, job))
    assert (d.repeated, d.derived) == (1, 1)
    d.RECENT = 2
    for seed in (2, 3, 4):
        d("train", ["env=cartpole", f"seed={seed}"], RunMode.RUN)
    d("train", ["env=cartpole", "seed=2"], RunMode.RUN)  # pushed out by seeds 3 and 4: derived again
    assert (d.repeated, d.derived) == (1, 5)
    same(d("train", ["env=cartpole", "seed=4"], RunMode.RUN), fresh(loader, ["env=cartpole", "seed=4"]))
    assert d.repeated == 2


def test_a_config_that_does_not_pickle_is_kept_as_a_deepcopy() -> None:
    """`keep` pickles a config (the cheap copy) and falls back to a deepcopy where pickling fails: a structured node
    whose class is not importable as itself (a local class here; Hydra's plugin config classes imported under two
    names in CI's test workers). Each `thaw` is a fresh copy either way."""
    from dataclasses import dataclass

    from dqnrun.config.derive import copy_config, keep, thaw

    @dataclass
    class Local:
        x: int = 1

    plain = OmegaConf.create({"a": {"b": 1}})
    odd = OmegaConf.create({"a": OmegaConf.structured(Local)})
    assert isinstance(keep(plain), bytes) and not isinstance(keep(odd), bytes)
    for cfg in (plain, odd):
        held = keep(cfg)
        first, second = thaw(held), thaw(held)
        first.a = {"b": 5} if cfg is plain else Local(x=5)
        assert OmegaConf.to_container(second) == OmegaConf.to_container(cfg) != OmegaConf.to_container(first)
        copied = copy_config(cfg)
        assert copied is not cfg and OmegaConf.to_container(copied) == OmegaConf.to_container(cfg)
