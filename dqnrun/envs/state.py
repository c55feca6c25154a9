"""An env's state as arrays and plain values, so that a resume restores it without unpickling anything.

Gymnasium has no state API. dqnrun captures, for every object of a vector env (the vector env itself, each
single env's wrapper chain and the unwrapped env), the attributes that hold plain data: numpy arrays and scalars,
numbers, strings, bools, None, lists / tuples / dicts of those, and numpy random generators (as their
bit-generator state). Attributes that are structure, not state, are skipped: spaces, specs, callables, the
``env`` link of a wrapper, constructor kwargs. An attribute of any other kind (a Box2D world, a pygame surface,
a C++ handle) makes the env *not capturable*: such an env resumes with new episodes from its saved RNG state
(`capture_rngs`), or, where even that is out of reach (ale_py's C++ vector env), from seeds derived from the
run's seed and step. Classic control, toy text and MinAtar envs (and the numpy CartPole vector env) are
captured exactly; `tests/e2e/test_resume.py` checks each against an uninterrupted run.

The encoding (`encode`/`decode`) is what ``torch.load(weights_only=True)`` reads: dicts, lists, tuples, bytes,
numbers, strings; an ndarray is ``{"__ndarray__": dtype, "shape": [...], "data": bytes}``. Restoring sets only
attributes that the live env has and that were captured, with values of the kinds captured: a crafted state
file can change numbers, never run code.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np

FORMAT = 1
_PLAIN = (bool, int, float, str, bytes, type(None))
# Attributes that are structure (fixed by how the env was made), not state: never captured or restored.
_STRUCTURE = {"envs", "env_fns", "spec", "_cached_spec", "metadata", "_metadata", "_saved_kwargs",
              "_previous_data", "render_mode", "observation_space", "action_space", "single_observation_space",
              "single_action_space", "_observation_space", "_action_space", "autoreset_mode", "copy"}
# Packages whose objects hold plain game state in their attributes (walked recursively).
_WALKED_PACKAGES = ("minatar",)


class NotCapturable(Exception):
    """An attribute holds something that is not plain data (its path and type are the message)."""


def encode(value: Any, path: str = "") -> Any:
    """A value as plain data ``torch.load(weights_only=True)`` reads; raises NotCapturable otherwise."""
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise NotCapturable(f"{path}: an object array")
        return {"__ndarray__": value.dtype.str, "shape": list(value.shape),
                "data": np.ascontiguousarray(value).tobytes()}
    if isinstance(value, np.generic):
        return {"__npscalar__": value.dtype.str, "data": value.tobytes()}
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, np.random.Generator):
        return {"__generator__": type(value.bit_generator).__name__, "state": value.bit_generator.state}
    if isinstance(value, np.random.RandomState):
        name, key, pos, has_gauss, cached = value.get_state(legacy=True)  # type: ignore[misc]
        return {"__randomstate__": [name, encode(key), int(pos), int(has_gauss), float(cached)]}
    if isinstance(value, list | tuple):
        items = [encode(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else {"__tuple__": items}
    if isinstance(value, dict) and all(isinstance(k, int | str) for k in value):
        return {"__dict__": [[k, encode(v, f"{path}.{k}")] for k, v in value.items()]}
    if type(value).__module__.split(".")[0] in _WALKED_PACKAGES:
        return {"__object__": type(value).__qualname__, "attrs": _attrs(value, path)}
    raise NotCapturable(f"{path}: {type(value).__module__}.{type(value).__qualname__}")


def decode(value: Any, live: Any = None) -> Any:
    """The inverse of `encode`. ``live`` is the value being replaced: generators and walked objects are
    restored in place (other objects may hold references to them)."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__ndarray__" in value:
        return np.frombuffer(value["data"], dtype=np.dtype(value["__ndarray__"])).reshape(value["shape"]).copy()
    if "__npscalar__" in value:
        return np.frombuffer(value["data"], dtype=np.dtype(value["__npscalar__"]))[0]
    if "__tuple__" in value:
        return tuple(decode(v) for v in value["__tuple__"])
    if "__dict__" in value:
        return {k: decode(v) for k, v in value["__dict__"]}
    if "__generator__" in value:
        gen = live if isinstance(live, np.random.Generator) else np.random.Generator(
            getattr(np.random, value["__generator__"])())
        gen.bit_generator.state = value["state"]
        return gen
    if "__randomstate__" in value:
        name, key, pos, has_gauss, cached = value["__randomstate__"]
        rs = live if isinstance(live, np.random.RandomState) else np.random.RandomState()
        rs.set_state((name, decode(key).astype(np.uint32), pos, has_gauss, cached))
        return rs
    if "__object__" in value:
        if live is None or type(live).__qualname__ != value["__object__"]:
            raise ValueError(f"env state holds a {value['__object__']} where the env has {type(live).__name__}")
        _restore_attrs(live, value["attrs"])
        return live
    raise ValueError(f"unknown encoded value with keys {sorted(value)}")


def _state_attrs(obj: Any) -> Iterator[tuple[str, Any]]:
    for name, value in vars(obj).items():
        if name in _STRUCTURE or callable(value) or isinstance(value, gym.Space | gym.Env | gym.vector.VectorEnv):
            continue  # a wrapper's `env` is the next link of its chain, captured on its own
        yield name, value


def _attrs(obj: Any, path: str) -> dict[str, Any]:
    return {name: encode(value, f"{path}.{name}") for name, value in _state_attrs(obj)}


def _restore_attrs(obj: Any, attrs: dict[str, Any]) -> None:
    live = dict(_state_attrs(obj))
    unknown = set(attrs) - set(live)
    if unknown:
        raise ValueError(f"env state names attributes {sorted(unknown)} that {type(obj).__name__} does not have")
    for name, value in attrs.items():
        setattr(obj, name, decode(value, live[name]))


def _chain(env: gym.Env) -> list[Any]:
    """A single env's wrappers, outermost first, then the unwrapped env."""
    out = [env]
    while isinstance(out[-1], gym.Wrapper):
        out.append(out[-1].env)
    return out


def _singles(envs: gym.vector.VectorEnv) -> list[gym.Env]:
    if hasattr(envs, "envs"):  # SyncVectorEnv
        return list(envs.envs)
    inner = getattr(envs, "env", None)
    return [inner] if isinstance(inner, gym.Env) else []  # SingleVectorEnv; none for numpy vector envs


def capture(envs: gym.vector.VectorEnv) -> dict[str, Any]:
    """The whole state of a vector env (its own attributes, then each single env's chain). Raises NotCapturable
    for an env that holds anything but plain data (processes, C++ handles, physics engines)."""
    inner = envs
    while isinstance(inner, gym.vector.VectorWrapper):
        inner = inner.env
    if type(inner).__module__.startswith("ale_py"):
        raise NotCapturable("ale_py's C++ vector env exposes no game state")
    if isinstance(inner, gym.vector.AsyncVectorEnv):
        raise NotCapturable("its envs run in subprocesses (env.vectorization=async)")
    if inner is not envs:
        raise NotCapturable(f"a vector wrapper ({type(envs).__name__})")
    return {"format": FORMAT, "type": type(envs).__qualname__, "vector": _attrs(envs, type(envs).__name__),
            "singles": [[_attrs(obj, f"env{i}.{type(obj).__name__}") for obj in _chain(e)]
                        for i, e in enumerate(_singles(envs))]}


def restore(envs: gym.vector.VectorEnv, state: dict[str, Any]) -> None:
    """Put a `capture` back into a vector env built from the same config; ValueError if it does not fit."""
    if state.get("format") != FORMAT or state.get("type") != type(envs).__qualname__:
        raise ValueError(f"env state of a {state.get('type')} does not fit a {type(envs).__qualname__}")
    singles = _singles(envs)
    if len(state["singles"]) != len(singles):
        raise ValueError(f"env state holds {len(state['singles'])} envs, the run has {len(singles)}")
    _restore_attrs(envs, state["vector"])
    for env, saved in zip(singles, state["singles"], strict=True):
        chain = _chain(env)
        if len(chain) != len(saved):
            raise ValueError("env state does not fit the env's wrappers")
        for obj, attrs in zip(chain, saved, strict=True):
            _restore_attrs(obj, attrs)


def capture_rngs(envs: gym.vector.VectorEnv) -> list[Any] | None:
    """Each single env's numpy generator (encoded), for a resume that starts new episodes from the saved RNG
    state; None where the envs expose none (ale_py's C++ vector env, subprocesses)."""
    singles = _singles(envs)
    gens = [getattr(e.unwrapped, "_np_random", None) for e in singles]
    if not singles or any(not isinstance(g, np.random.Generator) for g in gens):
        return None
    return [encode(g) for g in gens]


def restore_rngs(envs: gym.vector.VectorEnv, rngs: list[Any]) -> bool:
    singles = _singles(envs)
    if len(rngs) != len(singles):
        return False
    for env, saved in zip(singles, rngs, strict=True):
        env.unwrapped._np_random = decode(saved, getattr(env.unwrapped, "_np_random", None))
    return True
