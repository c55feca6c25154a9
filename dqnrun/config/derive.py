"""A sweep's job configs: each distinct shape of overrides composed once by Hydra, the others derived from it.

A `dqnrun train -m` composes every job's config three times (the preflight, Hydra's sweeper checking the batch,
the launcher), and Hydra composes each from scratch: its defaults tree, some fifteen YAML files parsed and merged,
~90 ms a job here, so 16 seeds cost 4-5 s before the first step. Most sweeps vary values (``seed=0..15``,
``optimizer.lr=...``), and Hydra applies value overrides to the composed config only after the defaults list, which
a value override cannot change (`hydra._internal.config_loader_impl.ConfigLoaderImpl._load_configuration_impl`).
So two jobs whose overrides choose the same config groups, in the same words, and set the same keys to values, in
the same order, compose to configs that differ only in those values and in Hydra's record of the overrides
(``hydra.overrides``, ``hydra.job.override_dirname``). The second is then a copy of the first (~4 ms) with its
values set by Hydra's own function and its record rewritten as Hydra writes it.

A request made again (the launcher composing the jobs Hydra's sweeper just composed to check the batch) gets a
copy of the config it got the first time, once.

What is composed afresh, never derived: a job with a config-group choice, ``+key``/``~key``, a dict value or a
package (``group@pkg``) that the first job of its shape does not have word for word. `deriving` installs this on
one config loader (the preflight's, the population launcher's); tests/unit/test_derive.py compares derived configs
with Hydra's own compositions.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

Shape = tuple[Any, ...]
Held = bytes | DictConfig  # a config kept apart from its callers: pickled, or a deepcopy (`keep`)


def keep(cfg: DictConfig) -> Held:
    """``cfg`` kept apart from what its callers do to it: pickled (a copy unpickles in ~1.5 ms, against ~4 for a
    deepcopy), or a deepcopy where it does not pickle (a structured node whose class is not importable as itself,
    as with a Hydra plugin's config classes imported under two names)."""
    try:
        return pickle.dumps(cfg)
    except (pickle.PicklingError, TypeError, AttributeError):
        return copy.deepcopy(cfg)


def thaw(held: Held) -> DictConfig:
    """A fresh copy of a config `keep` kept."""
    return pickle.loads(held) if isinstance(held, bytes) else copy.deepcopy(held)


def copy_config(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg``: by pickling where it pickles (`keep`, `thaw`)."""
    return thaw(keep(cfg))


def deriving(loader: Any) -> Any:
    """Make ``loader`` (a Hydra ``ConfigLoaderImpl``) derive configs where it can (`Deriver`); returns it. Idempotent:
    an instance attribute shadows the class's method, for this loader alone."""
    if not isinstance(getattr(loader, "load_configuration", None), Deriver):
        loader.load_configuration = Deriver(loader.load_configuration, loader.repository.group_exists)
    return loader


class Deriver:
    """``load_configuration(config_name, overrides, run_mode, ...)`` that composes each shape of overrides once.

    Args:
        compose: Hydra's ``load_configuration`` (bound to its loader).
        group_exists: whether a key names a config group (the loader's repository's answer, as Hydra asks it).
    """

    def __init__(self, compose: Callable[..., DictConfig], group_exists: Callable[[str], bool]) -> None:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self.compose, self.group_exists = compose, group_exists
        self.parser = OverridesParser.create()
        self.bases: dict[Shape, tuple[list[Any], Held]] = {}  # each shape's first config, kept (`keep`)
        self.derived = 0  # configs derived rather than composed (for tests and measurements)
        # the configs of the last requests (`keep`), each given again once: Hydra's sweeper composes a batch's
        # jobs to check them, then the launcher composes the same jobs (a copy: 1.5 ms against ~14 to derive)
        self.recent: dict[tuple[Any, ...], Held] = {}
        self.repeated = 0

    RECENT = 256  # requests kept

    def __call__(self, config_name: str | None, overrides: list[str], run_mode: Any, from_shell: bool = True,
                 validate_sweep_overrides: bool = True) -> DictConfig:
        key = (config_name, str(run_mode), from_shell, validate_sweep_overrides, tuple(overrides))
        held = self.recent.pop(key, None)
        if held is not None:
            self.repeated += 1
            return thaw(held)
        cfg = self._load(config_name, overrides, run_mode, from_shell, validate_sweep_overrides)
        self.recent[key] = keep(cfg)
        if len(self.recent) > self.RECENT:
            del self.recent[next(iter(self.recent))]
        return cfg

    def _load(self, config_name: str | None, overrides: list[str], run_mode: Any, from_shell: bool,
              validate_sweep_overrides: bool) -> DictConfig:
        def fresh() -> DictConfig:
            return self.compose(config_name=config_name, overrides=overrides, run_mode=run_mode, from_shell=from_shell,
                                validate_sweep_overrides=validate_sweep_overrides)

        try:
            parsed = self.parser.parse_overrides(overrides=list(overrides))
        except Exception:  # Hydra's own composition says what is wrong, in its words
            return fresh()
        shape = self.shape(parsed)
        if shape is None:
            return fresh()
        key = (config_name, str(run_mode), from_shell, validate_sweep_overrides, shape)
        held = self.bases.get(key)
        if held is None:
            cfg = fresh()
            if recorded(cfg, parsed):
                self.bases[key] = (parsed, keep(cfg))
            return cfg
        self.derived += 1
        return derive(held[1], held[0], parsed, [kind[0] == "value" for kind in shape])

    def shape(self, parsed: Sequence[Any]) -> Shape | None:
        """What two jobs must share to derive one from the other: every override but a plain value's word for word,
        a plain value (``key=v``, ``++key=v``) by its kind and key. None: compose it (a sweep)."""
        if any(o.is_sweep_override() for o in parsed):
            return None
        plain = [is_value(o, self.group_exists) for o in parsed]
        values = {o.key_or_group for o, v in zip(parsed, plain, strict=True) if v}
        if any(o.key_or_group in values for o, v in zip(parsed, plain, strict=True) if not v):
            return None  # a key both set and added or deleted: what the base did to it decides, compose it
        if any(a.startswith(b + ".") for a in values for b in values):
            return None  # a key and a key inside it (eval.every=1 eval=null): the same, compose it
        return tuple(("value", o.is_force_add(), o.key_or_group) if v else ("exact", o.input_line)
                     for o, v in zip(parsed, plain, strict=True))


def is_value(o: Any, group_exists: Callable[[str], bool]) -> bool:
    """Whether override ``o`` sets a value (``key=v``, ``++key=v``), which Hydra applies after the defaults list,
    rather than choosing a config group, adding (``+``) or deleting (``~``)."""
    return ((o.is_force_add() or not (o.is_add() or o.is_delete())) and o.package is None
            and not isinstance(o.value(), dict) and not group_exists(o.key_or_group))


def recorded(cfg: DictConfig, parsed: Sequence[Any]) -> bool:
    """Whether ``cfg``'s record of its overrides ends with ``parsed`` as Hydra appends them (else it is not derived
    from: the record could not be rewritten)."""
    hydra_node = cfg.get("hydra") if isinstance(cfg, DictConfig) else None
    if hydra_node is None:
        return False
    task = [o.input_line for o in parsed if not o.is_hydra_override()]
    own = [o.input_line for o in parsed if o.is_hydra_override()]
    lists = (list(hydra_node.overrides.task), list(hydra_node.overrides.hydra))
    return all(len(have) >= len(want) and have[len(have) - len(want):] == want
               for have, want in zip(lists, (task, own), strict=True))


def derive(base: Held, base_parsed: Sequence[Any], parsed: Sequence[Any], values: Sequence[bool]) -> DictConfig:
    """``base`` (composed from ``base_parsed``, kept by `keep`) with ``parsed``'s values (where ``values``) set again,
    in order, and its record rewritten: what Hydra composes from ``parsed`` when the two share a shape
    (`Deriver.shape`)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname

    cfg = thaw(base)
    ConfigLoaderImpl._apply_overrides_to_config([o for o, v in zip(parsed, values, strict=True) if v], cfg)
    record = cfg.hydra.overrides
    for name, is_own in (("task", False), ("hydra", True)):
        have = list(record[name])
        old = [o.input_line for o in base_parsed if o.is_hydra_override() == is_own]
        record[name] = have[:len(have) - len(old)] + [o.input_line for o in parsed if o.is_hydra_override() == is_own]
    dirname = cfg.hydra.job.config.override_dirname
    cfg.hydra.job.override_dirname = get_overrides_dirname(
        overrides=[o for o in parsed if not o.is_hydra_override()], kv_sep=dirname.kv_sep,
        item_sep=dirname.item_sep, exclude_keys=list(OmegaConf.to_container(dirname.exclude_keys)))  # type: ignore[arg-type]
    return cfg
