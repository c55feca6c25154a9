"""The algorithms dqnrun trains, each a package here, and the registry that finds them.

A registered algorithm is ``name -> package``. The package defines the `Algorithm` subclass that
``conf/algo/<name>.yaml`` names as its ``_target_`` (imported on first use: the package itself loads no torch).
Two of its modules see a config: ``rules``, read before any run starts and free of torch (``RULES``, ``check(cfg)``
for validation, ``FROZEN_ON_RESUME``, and ``ACTION_MASKS = True`` if it acts only through the legal actions an env
reports: ``env.action_mask``, which validation refuses for an algorithm without it), and ``build``: ``parts(cfg,
spec)`` (the built objects the class receives), ``build_policy(cfg, spec)`` (the network a checkpoint's ``policy``
weights load into) and ``preflight(cfg, spec)`` (what must hold of the built parts: the network fits the env).
Adding an algorithm: its package, its conf file, one line below.
"""

from __future__ import annotations

import importlib
from types import ModuleType

ALGORITHMS: dict[str, str] = {
    "dqn": "dqnrun.algos.dqn",
    "pqn": "dqnrun.algos.pqn",
}


def name_of(target: str) -> str:
    """The registered name of the algorithm a ``algo._target_`` names (``dqnrun.algos.dqn.DQN`` -> ``dqn``)."""
    module = target.rsplit(".", 1)[0]
    for name, package in ALGORITHMS.items():
        if module == package:
            return name
    known = ", ".join(f"{p}.<Class> ({n})" for n, p in ALGORITHMS.items())
    raise KeyError(f"algo._target_={target!r} is not a registered algorithm; registered: {known}")


def build_module(name: str) -> ModuleType:
    """The ``build`` module of a registered algorithm."""
    return importlib.import_module(ALGORITHMS[name] + ".build")


def rules_module(name: str) -> ModuleType:
    """The ``rules`` module of a registered algorithm (no torch)."""
    return importlib.import_module(ALGORITHMS[name] + ".rules")
