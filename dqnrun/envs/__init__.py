"""Environment construction: vectorized training envs, a separate eval env, and env-id checks.

Gymnasium ids (``CartPole-v1``), ids of a user's package (``my_pkg.envs:MyEnv-v0`` imports ``my_pkg.envs``
first), ALE ids (``ALE/Pong-v5``) and MinAtar ids (``MinAtar/Breakout-v1``), whose packages register their envs
only when asked. Atari presets train on ale_py's C++ vector env (``dqnrun.envs.atari``).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from dqnrun.errors import UsageError

# Reset-seed ranges, disjoint by construction (config validation keeps seed < SEED_LIMIT):
#   training envs: seed + i          in-training eval: IN_TRAINING_EVAL_SEED_BASE + seed * SEED_STRIDE + i
#   `dqnrun eval`:  EVAL_SEED_BASE + seed * SEED_STRIDE + i
SEED_LIMIT = 10_000
SEED_STRIDE = 100_000
IN_TRAINING_EVAL_SEED_BASE = 1_000_000_000
EVAL_SEED_BASE = 2_000_000_000

# Step-info key of an (E,) bool mask: True where a whole game ended on this step, so the next step is an
# autoreset. Envs that end a learner's episode without ending the game (Atari life loss: `terminated` at every
# lost life) set it; without it, a game is an episode (terminated | truncated). See `dqnrun.loop.train_loop`.
GAME_OVER = "game_over"


def _register_ale() -> None:
    try:
        import ale_py
    except ImportError:
        raise UsageError("ALE/ ids need ale-py: pip install 'dqnrun[atari]' (make install does)") from None
    gym.register_envs(ale_py)


def _register_minatar() -> None:
    try:
        import minatar.gym
    except ImportError:
        raise UsageError("MinAtar/ ids need minatar: pip install 'dqnrun[minatar]' (make install does)") from None
    if not any(k.startswith("MinAtar/") for k in gym.registry):
        minatar.gym.register_envs()


# Id prefixes whose packages register their envs only when asked to.
REGISTRARS = {"ALE/": _register_ale, "MinAtar/": _register_minatar}


def resolve_env_id(env_id: str) -> str:
    """Import the module of a ``module:EnvId`` id (or register the ALE / MinAtar ids), check that the id is
    registered, return the bare id."""
    for prefix, register in REGISTRARS.items():
        if env_id.startswith(prefix) and env_id not in gym.registry:
            register()
    if ":" in env_id:
        module, env_id = env_id.split(":", 1)
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UsageError(
                f"env.id: cannot import module {module!r} ({exc}); install it or fix the module path"
            ) from None
    if env_id not in gym.registry:
        close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UsageError(
            f"env.id={env_id!r} is not a registered Gymnasium environment.{hint} "
            "Use a registered id, or `my_pkg.module:MyEnv-v0` to import the module that registers it."
        )
    return env_id


def check_spaces(obs_space: gym.Space, action_space: gym.Space, env_id: str) -> None:
    """DQN needs a Discrete action space and a Box or Discrete observation space."""
    if not isinstance(action_space, gym.spaces.Discrete):
        raise UsageError(
            f"env.id={env_id!r} has a {type(action_space).__name__} action space; DQN needs a Discrete "
            "one. Pick an env with discrete actions (or discretize it with a wrapper)."
        )
    if isinstance(obs_space, gym.spaces.Dict) and "action_mask" in obs_space.spaces:
        raise UsageError(
            f"env.id={env_id!r} reports its legal actions in a Dict observation; set env.action_mask=true to act "
            "only through them (the agent then sees its 'observation' entry)"
        )
    if not isinstance(obs_space, gym.spaces.Box | gym.spaces.Discrete):
        raise UsageError(
            f"env.id={env_id!r} has a {type(obs_space).__name__} observation space; dqnrun supports Box "
            "and Discrete observations."
        )


Wrapper = Callable[[gym.Env], gym.Env]


def make_env(env_id: str, kwargs: dict[str, Any], wrapper: Wrapper | None = None, **extra: Any) -> gym.Env:
    """One env: ``gym.make(env_id, **kwargs)``, then the ``env.wrappers`` chain. Bad kwargs -> UsageError."""
    try:
        env = gym.make(env_id, **kwargs, **extra)
    except TypeError as exc:
        raise UsageError(f"env.kwargs rejected by {env_id}: {exc}") from None
    return env if wrapper is None else wrapper(env)


def probe_spaces(env_id: str, kwargs: dict[str, Any], wrapper: Wrapper | None = None,
                 atari: dict[str, Any] | None = None) -> tuple[gym.Space, gym.Space]:
    """Make one env to read its spaces (and to surface bad kwargs or wrappers as a UsageError), then close it."""
    if atari is not None:
        from dqnrun.envs import atari as A

        return A.probe_spaces(atari, wrapper)
    env_id = resolve_env_id(env_id)
    env = make_env(env_id, kwargs, wrapper)
    try:
        check_spaces(env.observation_space, env.action_space, env_id)
        shape = getattr(env.observation_space, "shape", None)
        try:
            obs = np.asarray(env.reset(seed=0)[0])
        except UsageError:
            raise
        except Exception as exc:
            raise UsageError(f"env.id={env_id}: reset() raised {type(exc).__name__}: {exc}") from None
        if shape is not None and obs.shape != tuple(shape):
            raise UsageError(f"env.id={env_id}: reset() returned an observation of shape {obs.shape}, but its "
                             f"observation_space is {_space_desc(env.observation_space)}; fix the env")
        return env.observation_space, env.action_space
    finally:
        env.close()


# From this many copies on, an env's own numpy vector env (CartPole) beats SyncVectorEnv: it steps all copies
# in one call (~50 µs whatever n), while sync costs ~11 µs per copy (bench/floor.py; at n=4 sync wins).
NUMPY_VECTOR_MIN_ENVS = 8


def _mode(env_id: str, vectorization: str, num_envs: int) -> str:
    if vectorization == "auto":
        has_own = gym.spec(env_id).vector_entry_point is not None
        return "vector_entry_point" if has_own and num_envs >= NUMPY_VECTOR_MIN_ENVS else "sync"
    return {"sync": "sync", "async": "async", "vector": "vector_entry_point"}[vectorization]


class SingleVectorEnv(gym.vector.VectorEnv):
    """One env behind the VectorEnv API: what ``SyncVectorEnv`` does for ``num_envs=1`` (NEXT_STEP autoreset,
    reset seed ``seed``, ``copy=False``), without its per-step batching machinery (info merging, space-driven
    concatenation, three array copies). For CartPole the step costs about half of SyncVectorEnv's, and with
    1 env and few updates per step that is a tenth of the loop (bench/floor.py, docs/benchmarks.md).
    ``tests/test_transitions.py`` checks that it yields exactly SyncVectorEnv's steps.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}
    copy = False  # like SyncVectorEnv(copy=False): `step` and `reset` return one observation buffer

    def __init__(self, env: gym.Env) -> None:
        self.env = env
        self.num_envs = 1
        self.single_observation_space, self.single_action_space = env.observation_space, env.action_space
        self.observation_space = gym.vector.utils.batch_space(env.observation_space, 1)
        self.action_space = gym.vector.utils.batch_space(env.action_space, 1)
        self.render_mode = env.render_mode
        self.spec = env.spec
        self._obs = np.zeros(self.observation_space.shape, dtype=self.observation_space.dtype)
        self._autoreset = False

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None,
              ) -> tuple[np.ndarray, dict[str, Any]]:
        if isinstance(seed, list):
            (seed,) = seed
        self._obs[0], info = self.env.reset(seed=seed, options=options)
        self._autoreset = False
        return self._obs, _batched_mask(info)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._autoreset:  # NEXT_STEP: the step after an episode's end only resets (reward 0, not done)
            self._obs[0], info = self.env.reset()
            self._autoreset = False
            return self._obs, np.zeros(1), np.zeros(1, bool), np.zeros(1, bool), _batched_mask(info)
        self._obs[0], reward, terminated, truncated, info = self.env.step(actions[0])
        self._autoreset = terminated or truncated
        return (self._obs, np.array([reward], np.float64), np.array([terminated], bool), np.array([truncated], bool),
                _batched_mask(info))

    def render(self) -> Any:
        return (self.env.render(),)

    def close_extras(self, **kwargs: Any) -> None:
        self.env.close()


def _batched_mask(info: dict[str, Any]) -> dict[str, Any]:
    """A single env's info as SingleVectorEnv reports it: only the action mask, batched (1, A); {} without one."""
    mask = info.get("action_mask")
    return {} if mask is None else {"action_mask": np.asarray(mask)[None]}


def make_vector_env(
    env_id: str, num_envs: int, kwargs: dict[str, Any] | None = None, vectorization: str = "auto",
    wrapper: Wrapper | None = None, atari: dict[str, Any] | None = None, threads: int | None = None,
    evaluation: bool = False,
) -> gym.vector.VectorEnv:
    """A vector env with NEXT_STEP autoreset (Gymnasium's default, which the training loop relies on).

    ``wrapper`` (the ``env.wrappers`` chain) wraps every single env, so an env's own numpy vector env (which
    has no single envs) is not used then. ``atari`` builds ale_py's C++ vector env instead
    (``dqnrun.envs.atari``); ``evaluation`` asks it for raw game scores of whole games.
    """
    if atari is not None:
        from dqnrun.envs import atari as A

        return A.make_vector_env(atari, num_envs, wrapper=wrapper, threads=threads, evaluation=evaluation)
    env_id = resolve_env_id(env_id)
    kwargs = dict(kwargs or {})
    mode = _mode(env_id, vectorization, num_envs)
    if wrapper is not None and mode == "vector_entry_point":
        mode = "sync"
    if mode == "sync" and num_envs == 1:
        return SingleVectorEnv(make_env(env_id, kwargs, wrapper))
    if mode == "vector_entry_point":
        envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=mode, **kwargs)
        if envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP) != AutoresetMode.NEXT_STEP:
            envs.close()
            mode = "sync"
        else:
            return envs
    # copy=False: the env returns its own observation buffer instead of a deepcopy (~3-10 µs a step); the
    # training loop copies the few rows it keeps (see `shares_obs_buffer`).
    return gym.make_vec(
        env_id, num_envs=num_envs, vectorization_mode=mode, wrappers=[wrapper] if wrapper is not None else None,
        vector_kwargs={"autoreset_mode": AutoresetMode.NEXT_STEP, "copy": False}, **kwargs,
    )


def steps_in_two_halves(envs: gym.vector.VectorEnv) -> bool:
    """True if ``envs.step(a)`` is exactly ``envs.send(a)`` then ``envs.recv()``, and the games run in the env's own
    threads in between: ale_py's C++ vector env, bare or under `dqnrun.envs.atari.GameOverInfo`."""
    if getattr(type(envs), "STEPS_IN_TWO_HALVES", False):
        return True
    return type(envs).__name__ == "AtariVectorEnv" and type(envs).__module__.startswith("ale_py")


def shares_obs_buffer(envs: gym.vector.VectorEnv) -> bool:
    """True if ``step``/``reset`` return an observation buffer that the next call overwrites."""
    return getattr(envs, "copy", True) is False


def obs_dtype_and_shape(space: gym.Space) -> tuple[np.dtype, tuple[int, ...], int | None]:
    """(storage dtype, per-observation shape, number of categories for Discrete observations)."""
    if isinstance(space, gym.spaces.Discrete):
        return np.dtype(np.int64), (), int(space.n)
    return np.dtype(space.dtype), tuple(space.shape), None


def run_episodes(
    envs: gym.vector.VectorEnv,
    act: Any,
    n_episodes: int,
    seed: int,
    max_steps_per_round: int = 1_000_000,
    masked: bool = False,
) -> np.ndarray:
    """Run exactly ``n_episodes`` episodes on a vector env and return their returns, (n_episodes,).

    Each round resets all E envs with seeds ``seed + offset`` and keeps the first episode of each of the
    first ``min(E, remaining)`` envs, in env order, so the result is deterministic for a given seed.
    ``act(obs (E, *obs_shape)) -> actions (E,)`` chooses the actions; ``masked``: ``act(obs, mask)`` with the
    (E, A) legal actions of each observation (``env.action_mask``), for every env, finished ones included.
    """
    return drive(episode_rounds(envs, n_episodes, seed, max_steps_per_round, masked), act, masked)


def drive(rounds: Generator[ActQuery, np.ndarray, np.ndarray], act: Any, masked: bool = False) -> np.ndarray:
    """Run an `episode_rounds` generator to its end with ``act`` choosing the actions; the episodes' returns."""
    try:
        query = next(rounds)
        while True:
            actions = act(query.obs, query.mask) if masked else act(query.obs)
            query = rounds.send(actions)
    except StopIteration as done:
        return done.value


@dataclass
class ActQuery:
    """What `episode_rounds` asks of its driver: actions for ``obs`` (E, *obs_shape); ``mask`` (E, A) the legal
    actions (with ``masked``); ``active`` (E,) bool the envs whose episode still counts: the others' actions
    change nothing that is returned, so a driver may act for them in any way that spends no random draws."""

    obs: np.ndarray
    mask: np.ndarray | None
    active: np.ndarray


@dataclass(frozen=True)
class Stepped:
    """What a driver may send `episode_rounds` in place of the actions where it stepped the envs itself (a
    population steps its members' eval envs together, `dqnrun.envs.together`): what ``envs.step(actions)``
    returned."""

    result: tuple


def episode_rounds(
    envs: gym.vector.VectorEnv,
    n_episodes: int,
    seed: int,
    max_steps_per_round: int = 1_000_000,
    masked: bool = False,
) -> Generator[ActQuery, np.ndarray, np.ndarray]:
    """`run_episodes` as a generator: it yields an `ActQuery` per env step, is sent the actions (E,), and
    returns the episodes' returns. Several runs' evaluations step side by side this way, with one batched
    forward choosing the actions of all of them (a population's members, `dqnrun.population.engine`); a driver
    that steps the envs itself sends `Stepped` in place of the actions."""
    from dqnrun.envs.masks import vector_mask

    n_envs = envs.num_envs
    returns: list[np.ndarray] = []
    done_so_far = 0
    while done_so_far < n_episodes:
        need = min(n_envs, n_episodes - done_so_far)
        obs, info = envs.reset(seed=seed + done_so_far)
        ep_ret = np.zeros(n_envs, dtype=np.float64)
        active = np.zeros(n_envs, dtype=bool)
        active[:need] = True
        for _ in range(max_steps_per_round):
            reply = yield ActQuery(obs, vector_mask(info, n_envs) if masked else None, active)
            if isinstance(reply, Stepped):
                obs, reward, terminated, truncated, info = reply.result
            else:
                obs, reward, terminated, truncated, info = envs.step(reply)
            ep_ret[active] += reward[active]
            active &= ~(terminated | truncated)
            if not active.any():
                break
        returns.append(ep_ret[:need])
        done_so_far += need
    return np.concatenate(returns)


def _space_desc(space: gym.Space) -> str:
    shape = getattr(space, "shape", None)
    return f"{type(space).__name__}{tuple(shape) if shape else ''}"


def diagnose(env_id: str, kwargs: dict[str, Any], wrapper: Wrapper | None = None) -> str | None:
    """What a misbehaving env returns, against what its spaces promise: one env reset and stepped a few times,
    its observations checked for shape and finiteness. A sentence naming the first problem, or None."""
    from dqnrun.envs.masks import legal_sample

    env = make_env(resolve_env_id(env_id), kwargs, wrapper)
    try:
        space = env.observation_space
        want = getattr(space, "shape", None)
        call = "reset()"
        obs, info = env.reset(seed=0)
        rng = np.random.default_rng(0)
        for call in ["reset()"] + ["step()"] * 200:
            if call == "step()":  # legal actions only, where the env says which are (env.action_mask)
                mask = info.get("action_mask")
                action = env.action_space.sample() if mask is None else legal_sample(mask, rng)
                obs, reward, terminated, truncated, info = env.step(action)
                if np.ndim(reward) != 0:
                    return f"step() returned a reward of shape {np.shape(reward)}; a reward is one number"
                if not np.isfinite(reward):
                    return "step() returned a reward that is NaN or inf"
            arr = np.asarray(obs)
            if want is not None and arr.shape != tuple(want):
                return (f"{call} returned an observation of shape {arr.shape}, but its observation_space is "
                        f"{_space_desc(space)}")
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                return f"{call} returned an observation holding NaN or inf"
            if call == "step()" and (terminated or truncated):
                obs, info = env.reset()
    except Exception as exc:
        return f"{call} raised {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    finally:
        env.close()
    return None
