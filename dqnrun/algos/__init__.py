"""The algorithms dqnrun trains, each a package here, and the registry that finds them.

A registered algorithm is ``name -> package``. The package's ``__init__`` defines the `Algorithm` subclass that
``conf/algo/<name>.yaml`` names as its ``_target_``; its ``build`` module (the only part of it that sees a
config) provides ``parts(cfg, spec)`` (the built objects the class receives), ``build_policy(cfg, spec)`` (the
network a checkpoint's ``policy`` weights load into), ``preflight(cfg, spec)``, ``check(cfg)`` (validation) and
``FROZEN_ON_RESUME``, and ``ACTION_MASKS = True`` if it acts only through the legal actions an env reports
(``env.action_mask``; validation refuses the switch for an algorithm without it). Adding an algorithm: its
package, its conf file, one line below.
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
