"""Composing a config from ``conf/`` and the user's overrides, the same way for every entry point.

The command line (`dqnrun.cli`), the Python API (`dqnrun.api.train`) and the preflight compose through here:
overrides are first rewritten (`rewrite`: an old key spelling becomes the canonical one, and
``env.kwargs.NAME=v`` an add-or-set, since env.kwargs is an open mapping), then Hydra composes, then integer
settings given as ``1e5`` become ints (`normalize`). Hydra's own ``@hydra.main`` apps compose the rewritten
overrides too: the CLI rewrites ``sys.argv`` before handing it to them.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from dqnrun.config.keys import as_typed, canonical_overrides
from dqnrun.errors import UsageError

CONFIG_MODULE = "dqnrun.conf"
# {canonical key: key as typed} for the keys of this invocation typed in an old spelling. Set by the entry point
# that rewrote them, inherited by a sweep's job processes, read by a run to record its overrides as typed.
TYPED_KEYS_ENV = "DQNRUN_TYPED_KEYS"


def open_dict_overrides(args: Iterable[str]) -> list[str]:
    """``env.kwargs.NAME=v`` -> ``++env.kwargs.NAME=v``: env.kwargs is an open mapping of gymnasium.make
    arguments, so a key works whether or not the preset already sets it (Hydra would refuse a new key)."""
    return [f"++{a}" if a.startswith("env.kwargs.") and "=" in a else a for a in args]


def rewrite(args: Iterable[str]) -> tuple[list[str], dict[str, str]]:
    """Overrides as Hydra must see them (canonical keys, open env.kwargs, the env preset an ``env.id`` implies),
    and {canonical key: typed key}."""
    canonical, typed = canonical_overrides(args)
    return choose_env_preset(open_dict_overrides(canonical)), typed


def preset_ids() -> dict[str, str]:
    """{env id: env preset} for the shipped presets (a game's own preset before its family's)."""
    from importlib.resources import files

    import yaml

    from dqnrun.config.resolvers import ale_id

    out: dict[str, str] = {}
    for path in sorted(files(CONFIG_MODULE).joinpath("env").iterdir(), key=lambda p: p.name):
        name = path.name.removesuffix(".yaml")
        if not path.name.endswith(".yaml") or name in ("atari", "minatar", "custom"):  # families, not one env
            continue
        env = (yaml.safe_load(path.read_text()) or {}).get("env") or {}
        env_id, game = env.get("id"), (env.get("atari") or {}).get("game")
        if game:
            out[ale_id(game)] = name
        elif isinstance(env_id, str) and "${" not in env_id:
            out[env_id] = name
    return out


def choose_env_preset(overrides: list[str]) -> list[str]:
    """``env.id=X`` without ``env=...``: X's own preset if one ships (``env.id=CartPole-v1`` -> ``env=cartpole``;
    any ALE id -> ``env=atari`` with its game; a MinAtar id -> ``env=minatar``), else ``env=custom``, dqnrun's
    neutral defaults (an id never inherits another env's tuning, solved score included)."""
    keys = [o.lstrip("+~").split("=", 1)[0] for o in overrides]
    if "env" in keys or "env.id" not in keys:
        return overrides
    value = next(o.split("=", 1)[1] for o in overrides if o.lstrip("+").split("=", 1)[0] == "env.id")
    if "," in value:  # a sweep over ids: each job takes the neutral defaults
        return [*overrides, "env=custom"]
    env_id = value.strip("'\"")
    preset = preset_ids().get(env_id)
    if preset is not None:
        return [*[o for o in overrides if o.lstrip("+").split("=", 1)[0] != "env.id"], f"env={preset}"]
    if env_id.startswith("ALE/"):
        import re as _re

        game = _re.sub(r"(?<!^)(?=[A-Z])", "_", env_id[4:].rsplit("-", 1)[0]).lower()
        return [*[o for o in overrides if o.lstrip("+").split("=", 1)[0] != "env.id"], "env=atari",
                f"env.atari.game={game}"]
    if env_id.startswith("MinAtar/"):
        return [*overrides, "env=minatar"]
    return [*overrides, "env=custom"]


def remember_typed(typed: dict[str, str]) -> None:
    """Keep the typed spellings for this process and the sweep jobs it starts (see `TYPED_KEYS_ENV`)."""
    if typed:
        os.environ[TYPED_KEYS_ENV] = json.dumps(typed)
    else:
        os.environ.pop(TYPED_KEYS_ENV, None)


def as_typed_overrides(overrides: Iterable[str]) -> list[str]:
    """A run's (canonical) overrides in the spelling the user typed them."""
    try:
        typed = json.loads(os.environ.get(TYPED_KEYS_ENV, "{}"))
    except ValueError:
        typed = {}
    plain = [o[2:] if o.startswith("++env.kwargs.") else o for o in overrides]
    return as_typed(plain, typed if isinstance(typed, dict) else {})


# The config groups of conf/ a user picks options of (group=option).
GROUPS = frozenset({"algo", "env", "network", "optimizer", "schedule", "replay", "logger", "experiment",
                    "hparams_search"})


def one_line(message: str, known_keys: list[str] | None = None, choices: list[str] | None = None,
             default_keys: list[str] | None = None) -> str:
    """Turn a multi-line Hydra/OmegaConf message into one line that says what to do. ``known_keys``: the keys
    of the config composed with ``choices`` (the command's group choices, e.g. ``algo=pqn``); ``default_keys``:
    those of the default config."""
    text = str(message)
    m = re.search(r"Could not override '([^']+)'", text)
    if m and "To append to your config" in text:
        key = m.group(1)
        groups = " ".join(c for c in (choices or []) if c.split("=", 1)[0] in GROUPS)
        listing = f"`dqnrun train {groups + ' ' if groups else ''}--cfg job`"
        if groups and key in (default_keys or []):
            # a key of another algorithm's or another option's config (learner.double with algo=pqn)
            return (f"'{key}' is not a key of the config with {groups}; run {listing} to list its keys, or add "
                    f"a new key with +{key}=...")
        close = difflib.get_close_matches(key, known_keys or [], n=1, cutoff=0.7)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        return (f"unknown config key '{key}'{hint}; run {listing} to list the keys, "
                f"or add a new key with +{key}=...")
    m = re.search(r"In 'env/(\w+)': Could not override '(\w+)'\. No match in the defaults list", text)
    if m:  # a preset that picks a group only one algorithm has (the tabular presets pick replay=latest)
        return (f"env={m.group(1)} picks a {m.group(2)} option, which only algo=dqn has; use algo=dqn, or train "
                f"the env without its preset: env=custom env.id=<its Gymnasium id>")
    m = re.search(r"Multiple values for ([\w/]+)\. To override a value use 'override [\w/]+: ([^']+)'", text)
    if m:
        return f"{m.group(1)} is already in the config; say {m.group(1)}={m.group(2)} (without +)"
    m = re.search(r"Could not find '([^/']+)/([^']+)'", text)
    if m:
        options = re.findall(r"^\t(\S+)$", text.split("Config search path")[0], flags=re.M)
        listed = f"; choose one of: {', '.join(options)}" if options else ""
        return f"unknown {m.group(1)} preset '{m.group(2)}'{listed}"
    keep = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("full_key:", "object_type", "reference_type", "Set the environment")):
            continue
        keep.append(line.rstrip("."))
    return "; ".join(keep)


def flat_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Every key of a config, dotted (``learner.gamma``), for "did you mean" hints."""
    keys: list[str] = []
    if isinstance(cfg, DictConfig):
        for k, v in cfg.items_ex(resolve=False):
            full = f"{prefix}{k}"
            keys.append(full)
            keys += flat_keys(v, full + ".")
    return keys


class Composer:
    """Composes configs from the package's conf/ (one Hydra initialization for many compositions)::

        with Composer() as c:
            cfg = c.task("train", overrides)
    """

    def __enter__(self) -> Composer:
        from hydra import initialize_config_module

        from dqnrun.sweep import ensure_plugins

        ensure_plugins()  # hydra/sweeper=dqnrun_optuna must be known before anything composes

        from hydra.core.global_hydra import GlobalHydra

        from dqnrun.config.derive import deriving

        self._init = initialize_config_module(config_module=CONFIG_MODULE, version_base=None)
        self._init.__enter__()
        deriving(GlobalHydra.instance().hydra.config_loader)  # a sweep's jobs: each shape composed once
        return self

    def __exit__(self, *exc: Any) -> None:
        self._init.__exit__(*exc)

    def full(self, command: str, overrides: list[str], hydra: bool = False) -> DictConfig:
        """The composed config (with Hydra's own node if ``hydra``); bad overrides raise UsageError, one line."""
        from hydra import compose as hydra_compose
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        try:
            return hydra_compose(config_name=command, overrides=overrides, return_hydra_config=hydra)
        except (HydraException, OmegaConfBaseException) as exc:
            known: list[str] = []
            default: list[str] = []
            choices = [o for o in overrides if "=" in o and not o.startswith(("+", "~"))
                       and "." not in o.split("=", 1)[0]]  # group choices (algo=pqn) and top-level values
            if command == "train":
                default = flat_keys(hydra_compose(config_name=command))
                try:
                    known = flat_keys(hydra_compose(config_name=command, overrides=choices))
                except (HydraException, OmegaConfBaseException):
                    choices, known = [], default
            raise UsageError(one_line(str(exc), known, choices, default)) from None

    def task(self, command: str, overrides: list[str]) -> DictConfig:
        """The task's config, integer settings normalized."""
        cfg = self.full(command, overrides)
        return normalize(cfg) if command == "train" else cfg


def compose(command: str, overrides: list[str], hydra: bool = False) -> tuple[DictConfig, DictConfig | None]:
    """(task config, Hydra's config if ``hydra``) composed from the package's conf/ with these (already
    rewritten) overrides, as ``dqnrun <command>`` would; bad overrides raise UsageError with one line."""
    with Composer() as c:
        full = c.full(command, overrides, hydra)
    hydra_cfg = None
    if hydra:
        hydra_cfg = full.hydra
        with open_dict(full):
            del full["hydra"]
    return (normalize(full) if command == "train" else full), hydra_cfg


def normalize(cfg: DictConfig) -> DictConfig:
    """Integer settings typed as floats (``total_steps=1e5``) become the ints they denote, in place; returns
    ``cfg``. Values that are not integral are left for validation to refuse."""
    from dqnrun.config.rules import int_rules

    try:
        keys = int_rules(cfg)
    except UsageError:
        return cfg  # no algorithm: validation says so
    for key in keys:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if isinstance(value, float) and value.is_integer():
            OmegaConf.update(cfg, key, int(value))
    return cfg
