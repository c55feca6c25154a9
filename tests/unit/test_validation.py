"""validate_train_config on composed configs, and the shipped presets composing, validating and building."""

from __future__ import annotations

import itertools

import pytest
import torch
from omegaconf import DictConfig

from dqnrun import builders
from dqnrun.config.rules import validate_train_config
from dqnrun.errors import UsageError
from dqnrun.schedules import ExponentialSchedule, LinearSchedule


def compose_train(overrides: list[str]) -> DictConfig:
    """The config a run gets (as `dqnrun train` composes it: spellings rewritten, integers normalized)."""
    from dqnrun.config.compose import compose, rewrite

    return compose("train", rewrite(overrides)[0])[0]


# (overrides, key the message must name)
IMPOSSIBLE = [
    (["optimizer.lr=0"], "optimizer.lr"),
    (["optimizer.lr=-1"], "optimizer.lr"),
    (["optimizer.lr=abc"], "optimizer.lr"),
    (["learner.gamma=1.5"], "learner.gamma"),
    (["learner.gamma=-0.1"], "learner.gamma"),
    (["replay.batch_size=256", "replay.capacity=100"], "replay.batch_size"),
    (["env.num_envs=0"], "env.num_envs"),
    (["total_steps=500", "algo.learning_starts=1000"], "total_steps"),
    (["schedule.start=1.5"], "schedule.start"),
    (["eval.epsilon=2"], "eval.epsilon"),
    (["learner.tau=0"], "learner.tau"),
    (["learner.loss=foo"], "learner.loss"),
    # a few more of the same kind
    (["learner.tau=1.5"], "learner.tau"),
    (["learner.gamma=true"], "learner.gamma"),  # a bool is not a number
    (["replay.batch_size=32.5"], "replay.batch_size"),  # not an integer
    (["schedule.end=-0.1"], "schedule.end"),
    (["schedule=exponential", "schedule.end=0"], "schedule.end"),  # a geometric path cannot reach 0
    (["learner.max_grad_norm=0"], "learner.max_grad_norm"),
    (["algo.train_freq=0"], "algo.train_freq"),
    (["seed=-1"], "seed"),
    (["env.vectorization=threads"], "env.vectorization"),
    (["network.hidden=[64,0]"], "network.hidden"),
    (["env.id=5"], "env.id"),
]


@pytest.mark.parametrize(("overrides", "key"), IMPOSSIBLE, ids=[" ".join(o) for o, _ in IMPOSSIBLE])
def test_impossible_value_raises_usage_error_naming_the_key(overrides: list[str], key: str) -> None:
    cfg = compose_train(overrides)
    with pytest.raises(UsageError) as info:
        validate_train_config(cfg)
    assert key in str(info.value)
    assert "\n" not in str(info.value)  # one line for the user


def test_usage_error_message_names_the_bad_value_and_the_allowed_range() -> None:
    with pytest.raises(UsageError) as info:
        validate_train_config(compose_train(["learner.gamma=1.5"]))
    msg = str(info.value)
    assert "learner.gamma=1.5" in msg and "[0, 1]" in msg


def test_batch_size_message_names_both_keys() -> None:
    with pytest.raises(UsageError) as info:
        validate_train_config(compose_train(["replay.batch_size=256", "replay.capacity=100"]))
    assert "replay.batch_size=256" in str(info.value) and "replay.capacity=100" in str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["learner.gamma=0"],
        ["learner.gamma=1"],
        ["learner.tau=1"],
        ["learner.tau=0.005"],
        ["learner.max_grad_norm=null"],
        ["optimizer.lr=1e-9"],
        ["replay.batch_size=100", "replay.capacity=100"],
        ["schedule.start=0", "schedule.end=0"],
        ["eval.every=0"],
        ["algo.learning_starts=0", "total_steps=1"],
        ["learner.loss=mse"],
        ["env.vectorization=sync"],
    ],
    ids=lambda o: " ".join(o) or "defaults",
)
def test_boundary_values_are_accepted(overrides: list[str]) -> None:
    validate_train_config(compose_train(overrides))


def test_total_steps_equal_to_learning_starts_is_rejected() -> None:
    cfg = compose_train(["total_steps=1000", "algo.learning_starts=1000"])
    with pytest.raises(UsageError, match="total_steps"):
        validate_train_config(cfg)


def test_integral_float_for_an_integer_key_is_rejected_or_builds() -> None:
    cfg = compose_train(["env.num_envs=2.0"])
    try:
        validate_train_config(cfg)
    except UsageError as exc:  # rejecting it, naming the key, is one acceptable outcome
        assert "env.num_envs" in str(exc)
        return
    envs = builders.build_vector_env(cfg.env)  # accepting it must then also work
    try:
        assert envs.num_envs == 2
    finally:
        envs.close()


ENVS = {"cartpole": "CartPole-v1", "acrobot": "Acrobot-v1", "mountaincar": "MountainCar-v0"}
OPTIMIZERS = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD}
SCHEDULES = {"linear": LinearSchedule, "exponential": ExponentialSchedule}


@pytest.mark.parametrize(
    ("env", "optimizer", "schedule"), list(itertools.product(ENVS, OPTIMIZERS, SCHEDULES))
)
def test_shipped_preset_composes_validates_and_builds(env: str, optimizer: str, schedule: str) -> None:
    cfg = compose_train([f"env={env}", f"optimizer={optimizer}", f"schedule={schedule}", "device=cpu"])
    validate_train_config(cfg)
    assert cfg.env.id == ENVS[env]

    spec = builders.build_env_spec(cfg.env)
    assert spec.env_id == ENVS[env]
    n_obs = spec.observation_space.shape[0]

    algo = builders.build_algorithm(cfg, spec)
    learner, device = algo.learner, algo.device
    assert device == torch.device("cpu")
    assert isinstance(learner.optimizer, OPTIMIZERS[optimizer])
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(cfg.optimizer.lr)
    assert learner.gamma == pytest.approx(cfg.learner.gamma)
    q = learner.online(torch.zeros(3, n_obs))
    assert q.shape == (3, spec.n_actions)
    # online and target start from the same weights, and are distinct tensors
    for po, pt in zip(learner.online.parameters(), learner.target.parameters(), strict=True):
        assert torch.equal(po, pt) and po.data_ptr() != pt.data_ptr()

    replay = builders.build_replay(cfg.replay, spec, device, seed=cfg.seed)
    assert replay.capacity == cfg.replay.capacity and replay.batch_size == cfg.replay.batch_size
    assert replay.obs.shape == (cfg.replay.capacity, n_obs) and replay.obs.dtype == torch.float32

    sched = builders.build_schedule(cfg.schedule)
    assert isinstance(sched, SCHEDULES[schedule])
    assert sched(0) == pytest.approx(cfg.schedule.start)
    assert sched(cfg.schedule.decay_steps) == pytest.approx(cfg.schedule.end)


def test_the_validator_never_writes_to_the_config() -> None:
    from omegaconf import OmegaConf

    from dqnrun.config.compose import Composer

    with Composer() as c:
        raw = c.full("train", ["total_steps=1e5", "env.num_envs=2.0"])  # as Hydra composed it: floats
    before = OmegaConf.to_container(raw)
    validate_train_config(raw)
    assert OmegaConf.to_container(raw) == before
    normalized = compose_train(["total_steps=1e5"])  # composing for a run normalizes, before validation
    assert normalized.total_steps == 100000 and isinstance(normalized.total_steps, int)


@pytest.mark.parametrize("env", ["cartpole", "lunarlander"])
def test_network_tabular_on_a_box_env_names_the_observation_space_not_a_preset_key(env: str) -> None:
    """CartPole's preset sets network.v_min for C51 (and quantiles for QR); on network=tabular those keys are
    ignored, and what is wrong (no Discrete observations) is what the user reads."""
    cfg = compose_train([f"env={env}", "network=tabular"])
    with pytest.raises(UsageError, match="network=tabular needs a Discrete observation space") as err:
        builders.build_network(cfg.network, builders.build_env_spec(cfg.env))
    assert "v_min" not in str(err.value) and "\n" not in str(err.value)


def test_the_network_options_validation_offers_are_the_ones_the_networks_build() -> None:
    from dqnrun import networks
    from dqnrun.config import rules

    assert tuple(networks.ACTIVATIONS) == rules.ACTIVATIONS
    assert tuple(networks.NORMS) == rules.NORMS
    assert tuple(networks.TORSOS) == rules.TORSOS


def test_checking_a_config_and_probing_its_env_load_no_torch() -> None:
    """What the command line of a population sweep does before its workers take over (dqnrun.config.preflight):
    compose, validate (every algorithm's rules), probe the env, compose the members; torch stays out."""
    import subprocess
    import sys

    code = """
import sys
from dqnrun import builders
from dqnrun.config.compose import compose, rewrite
from dqnrun.config.preflight import preflight
from dqnrun.config.rules import validate_train_config
import dqnrun.population.launch, hydra_plugins.dqnrun_population
for overrides in (["env=cartpole"], ["algo=pqn", "env=cartpole"], ["env=minatar_breakout"], ["env=frozenlake"]):
    cfg = compose("train", rewrite(overrides)[0])[0]
    validate_train_config(cfg)
    builders.build_env_spec(cfg.env)
checked = preflight("train", ["env=cartpole", "seed=0,1"], multirun=True, build=False)
assert len(checked.built) == 2, checked.built
print("torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
