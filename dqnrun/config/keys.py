"""Config keys that moved, and how an override or a stored config is brought to the canonical spelling.

Each key has one canonical spelling (the one ``dqnrun train --cfg job`` and ``--help`` show). Keys that moved
keep working under their old spelling everywhere a user can type one: the command line (single runs and ``-m``
sweeps), the Python API, Optuna search spaces, the configs stored in old checkpoints, and the run directories
``dqnrun report`` reads. This module is the one table of those moves; it imports nothing beyond the standard
library, so the report (which must read run directories of any dqnrun version) can use it.

Why keys moved (dqnrun 0.3): each key lives where the code that reads it lives. The DQN loop reads the update
and sync cadences and reward clipping (``algo.*``); the network reads C51's support (``network.*``); the learner
keeps what it reads (``learner.gamma``, ``learner.loss``, ...).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# old spelling -> canonical spelling
RENAMED: dict[str, str] = {
    "learner.train_freq": "algo.train_freq",
    "learner.gradient_steps": "algo.gradient_steps",
    "learner.learning_starts": "algo.learning_starts",
    "learner.target_update_interval": "algo.target_update_interval",
    "learner.reward_clip": "algo.reward_clip",
    "learner.atoms": "network.atoms",
    "learner.v_min": "network.v_min",
    "learner.v_max": "network.v_max",
}
_PREFIXES = ("++", "+", "~")


def canonical_key(key: str) -> str:
    """``learner.train_freq`` -> ``algo.train_freq``; a key that did not move is returned as it is. Keys below
    a moved key move with it (none of today's moved keys has children, but the rule is general)."""
    if key in RENAMED:
        return RENAMED[key]
    for old, new in RENAMED.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    return key


def split_prefix(override: str) -> tuple[str, str, str]:
    """``"+a.b=1"`` -> ``("+", "a.b", "=1")``: the prefix (``+``, ``++``, ``~`` or ``""``), the key and the rest
    (``=value``, or ``""`` for a deletion without a value)."""
    prefix = next((p for p in _PREFIXES if override.startswith(p)), "")
    body = override[len(prefix):]
    key, sep, value = body.partition("=")
    return prefix, key, (sep + value)


def canonical_override(override: str) -> str:
    """An override with its key in the canonical spelling (``learner.train_freq=8`` -> ``algo.train_freq=8``).
    Hydra's own keys, group choices (``network=mlp``) and flags are returned unchanged."""
    if override.startswith("-") and not override.startswith("~"):
        return override
    prefix, key, rest = split_prefix(override)
    new = canonical_key(key)
    return override if new == key else f"{prefix}{new}{rest}"


def canonical_overrides(overrides: Iterable[str]) -> tuple[list[str], dict[str, str]]:
    """(the overrides in canonical spelling, {canonical key: the key as typed} for each key typed in an old
    spelling), so that a run can record its overrides as the user typed them."""
    out, typed = [], {}
    for o in overrides:
        c = canonical_override(o)
        if c != o:
            typed[split_prefix(c)[1]] = split_prefix(o)[1]
        out.append(c)
    return out, typed


def as_typed(overrides: Iterable[str], typed: dict[str, str]) -> list[str]:
    """Canonical overrides back in the spelling the user typed (``typed`` as from `canonical_overrides`)."""
    out = []
    for o in overrides:
        prefix, key, rest = split_prefix(o)
        out.append(f"{prefix}{typed[key]}{rest}" if key in typed else o)
    return out


def migrate_config(stored: dict[str, Any]) -> dict[str, Any]:
    """A config stored by an older dqnrun (a checkpoint's ``config``), in today's layout: moved keys at their
    canonical place, and ``algo`` set to DQN (the only algorithm before 0.3). A config already in today's layout
    is returned unchanged (as a new dict). C51's support moves into the network only where the network has one
    (a Q-table has no atoms)."""
    cfg = _copy(stored)
    if "algo" not in cfg:
        cfg["algo"] = {"_target_": "dqnrun.algos.dqn.DQN"}
    network = cfg.get("network") or {}
    has_support = "QTable" not in str(network.get("_target_", ""))
    for old, new in RENAMED.items():
        old_parent, old_leaf = _parent(cfg, old)
        if old_parent is None or old_leaf not in old_parent:
            continue
        value = old_parent.pop(old_leaf)
        if new.startswith("network.") and not has_support:
            continue
        new_parent, new_leaf = _parent(cfg, new, create=True)
        new_parent.setdefault(new_leaf, value)
    return cfg


def _copy(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _copy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_copy(v) for v in x]
    return x


def _parent(cfg: dict[str, Any], key: str, create: bool = False) -> tuple[Any, str]:
    *path, leaf = key.split(".")
    node: Any = cfg
    for part in path:
        if not isinstance(node, dict):
            return None, leaf
        if part not in node and create:
            node[part] = {}
        node = node.get(part)
    return (node if isinstance(node, dict) else None), leaf
