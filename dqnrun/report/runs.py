"""Finding run directories, reading them, telling live runs from dead ones, and grouping runs.

A run directory is recognised by what dqnrun writes into it (see `is_run_dir`), never by a file name alone, so a
tree holding other tools' results.json files, or `dqnrun eval` directories, yields no runs.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import dqnrun.run.artifacts as artifacts
from dqnrun.config.keys import canonical_key

# The states of a run in the report (results.json's status, read for the statistics).
FINISHED, FAILED, UNFINISHED = "finished", "failed", "unfinished"
# Keys --group-by reads from results.json first (run metadata, not only overrides).
RESULT_KEYS = ("name", "tags", "env_id")
# results.json fields besides overrides that a run can vary in (listed when --group-by names an unknown key).
VARYING_RESULT_KEYS = ("name", "tags", "env_id", "seed", "total_steps", "algo")
# Folders a run writes inside its own directory: never other runs, and checkpoints/tb can be large.
RUN_OWN_DIRS = frozenset({"checkpoints", "tb", ".hydra", "videos", "wandb"})
HYDRA_DIR, OVERRIDES, CONFIG = ".hydra", "overrides.yaml", "config.yaml"
EVAL_JSON = "eval.json"  # what a `dqnrun eval` directory holds instead of results.json
LOCK_NAME = ".lock"  # {"pid", "host", "started"} while a process owns the run
UNKNOWN_ENV = "(unknown env)"


@dataclass
class Run:
    """One run directory: its overrides, its results.json (None if missing/unreadable) and its state."""

    path: Path
    rel: str
    overrides: list[str] | None
    results: dict[str, Any] | None
    state: str
    reason: str = ""
    label: str = ""
    tokens: tuple[str, ...] = ()
    env: str = UNKNOWN_ENV
    # Where the env came from before `assign_envs`: results.json or the stored config (an id), else None.
    env_id: str | None = field(default=None, repr=False)


# ----------------------------------------------------------------------------------------------- discovery


def is_dqnrun_results(data: Any) -> bool:
    """Does this parsed results.json look like dqnrun's (a JSON object with a known status, or a version)?"""
    return isinstance(data, dict) and (data.get("status") in artifacts.STATUSES or "dqnrun_version" in data)


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None


def training_config(path: Path) -> dict[str, Any] | None:
    """The stored config of a `dqnrun train` run (``.hydra/config.yaml`` beside ``.hydra/overrides.yaml``), or
    None: missing, unreadable, or another command's (`dqnrun eval` stores a top-level ``ckpt`` and no env)."""
    hydra = path / HYDRA_DIR
    if not (hydra / OVERRIDES).is_file() or (path / EVAL_JSON).exists():
        return None
    cfg = _load_yaml(hydra / CONFIG)
    if not isinstance(cfg, dict) or "ckpt" in cfg or not isinstance(cfg.get("env"), dict):
        return None
    return cfg


def is_run_dir(path: Path) -> bool:
    """A run directory holds a results.json that dqnrun wrote, or Hydra's record of a training run."""
    f = artifacts.results_path(path)
    if f.is_file():
        try:
            if is_dqnrun_results(json.loads(f.read_text())):
                return True
        except (OSError, ValueError):
            pass  # maybe a run killed mid-write: its .hydra/ still tells
    return training_config(path) is not None


def find_run_dirs(root: Path) -> list[Path]:
    """Run directories under ``root`` (``root`` itself included), at any depth, in path order."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        inside_run = is_run_dir(here)
        if inside_run:
            found.append(here)
        # Hidden folders (.submitit, .git, .hydra) hold launcher/VCS state, not runs.
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and not (inside_run and d in RUN_OWN_DIRS)
        )
    return sorted(found, key=lambda p: _natural_key(p.relative_to(root).as_posix()))


def _natural_key(text: str) -> list[Any]:
    # Hydra job dirs are 0, 1, ..., 10: sort them as numbers, not as strings.
    parts: list[Any] = []
    for part in text.split("/"):
        parts.append((0, int(part), "") if part.isdigit() else (1, 0, part))
    return parts


def _read_overrides(path: Path) -> list[str] | None:
    f = path / HYDRA_DIR / OVERRIDES
    if not f.is_file():
        return None
    try:
        data = yaml.safe_load(f.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if data is None:
        return []
    return [str(x) for x in data] if isinstance(data, list) else None


# ---------------------------------------------------------------------------------------------- liveness


def pid_alive(pid: Any) -> bool | None:
    """Whether process ``pid`` exists on this machine: True, False, or None if ``pid`` is not a pid."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by another user
    except OSError:
        return None
    try:  # Linux: a killed process nobody has reaped yet (a zombie) still answers kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def process_liveness(run_dir: Path, results: dict[str, Any] | None, host: str | None = None,
                     ) -> tuple[bool | None, Any]:
    """Is the process that owns a run alive? (alive, pid): True if ``<run>/.lock`` or results.json names a live
    process on this host, False if results.json names a process of this host that is gone, None when this host
    cannot tell (another host, or no pid)."""
    host = socket.gethostname() if host is None else host
    try:
        lock = json.loads((run_dir / LOCK_NAME).read_text())
    except (OSError, ValueError):
        lock = None
    if isinstance(lock, dict) and lock.get("host") == host and pid_alive(lock.get("pid")):
        return True, lock.get("pid")
    res = results or {}
    pid = res.get("pid")
    if res.get("host") != host:
        return None, pid
    return pid_alive(pid), pid


# ---------------------------------------------------------------------------------------------- reading


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _progress(results: dict[str, Any]) -> str:
    steps, total = results.get("steps"), results.get("total_steps")
    if steps is None:
        return ""
    return f"step {steps}/{total}" if total is not None else f"step {steps}"


def _running_reason(path: Path, results: dict[str, Any]) -> str:
    alive, pid = process_liveness(path, results)
    if alive is False:
        return f"dead: process {pid} is gone (killed?); resume it with dqnrun train resume={path}"
    # Another host's run (or one without a pid) that was killed hard stays "running": its age tells.
    try:
        age = f", results.json updated {_age(time.time() - artifacts.results_path(path).stat().st_mtime)} ago"
    except OSError:
        age = ""
    progress = _progress(results)
    where = f" ({progress}{age})" if progress else (f" ({age[2:]})" if age else "")
    return f"running{where}"


def _classify(path: Path, results: dict[str, Any]) -> tuple[str, str]:
    status = results.get("status")
    if status == artifacts.COMPLETED:
        return FINISHED, ""
    if status == artifacts.FAILED:
        error = str(results.get("error") or "no error message").strip().splitlines()
        return FAILED, f"failed: {error[0] if error else 'no error message'}"
    if status == artifacts.INTERRUPTED:
        progress = _progress(results)
        return UNFINISHED, f"interrupted{f' at {progress}' if progress else ''} (resumable)"
    if status == artifacts.RUNNING:
        return UNFINISHED, _running_reason(path, results)
    what = "no status" if status is None else f"unknown status {status!r}"
    return UNFINISHED, f"{what} in results.json"


def _config_env_id(path: Path) -> str | None:
    cfg = training_config(path)
    env_id = (cfg or {}).get("env", {}).get("id")
    # An interpolation (Atari presets derive the id from the game) is not an id.
    return env_id if isinstance(env_id, str) and "${" not in env_id else None


def load_run(path: Path, root: Path | None = None) -> Run:
    """Read one run directory into a :class:`Run` and classify it as finished, failed or unfinished."""
    rel = path.relative_to(root).as_posix() if root is not None else str(path)
    overrides = _read_overrides(path)
    f = artifacts.results_path(path)
    results: dict[str, Any] | None = None
    if not f.is_file():
        state, reason = UNFINISHED, "no results.json yet"
    else:
        try:
            data = json.loads(f.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            # A run killed mid-write or a disk hiccup: the run may still be going, so it is not failed.
            state, reason = UNFINISHED, f"unreadable results.json ({type(e).__name__}: {e})"
        else:
            if is_dqnrun_results(data):
                results = data
                state, reason = _classify(path, data)
            else:
                state, reason = UNFINISHED, "results.json was not written by dqnrun"
    if overrides is None and results is not None and isinstance(results.get("overrides"), list):
        overrides = [str(x) for x in results["overrides"]]
    env_id = (results or {}).get("env_id")
    env_id = str(env_id) if env_id not in (None, "") else _config_env_id(path)
    if env_id is None:
        env_id = artifacts.override_value(overrides, "env.id")
    return Run(path, rel, overrides, results, state, reason, env_id=env_id)


def assign_envs(runs: Sequence[Run]) -> None:
    """Set each run's ``env``: its env id, else the id other runs with the same ``env=`` preset ran, else
    ``env=<preset>``, else :data:`UNKNOWN_ENV`."""
    by_preset: dict[str, set[str]] = {}
    for r in runs:
        preset = artifacts.override_value(r.overrides, "env")
        if r.env_id is not None and preset is not None:
            by_preset.setdefault(preset, set()).add(r.env_id)
    for r in runs:
        if r.env_id is not None:
            r.env = r.env_id
            continue
        preset = artifacts.override_value(r.overrides, "env")
        ids = by_preset.get(preset or "", set())
        r.env = ids.pop() if len(ids) == 1 else f"env={preset}" if preset is not None else UNKNOWN_ENV


def load_runs(root: Path) -> list[Run]:
    """All run directories under ``root``, read, classified, and with their env."""
    runs = [load_run(p, root) for p in find_run_dirs(root)]
    assign_envs(runs)
    return runs


# ------------------------------------------------------------------------------------------------ grouping


def _tags(run: Run) -> str:
    tags = (run.results or {}).get("tags")
    if tags is None:
        raw = artifacts.override_value(run.overrides, "tags")
        tags = [t.strip() for t in raw.strip("[]").split(",") if t.strip()] if raw else []
    if isinstance(tags, str):
        tags = [tags]
    return "+".join(sorted(str(t) for t in tags)) or "(none)"


def group_value(run: Run, key: str) -> str:
    """The value of ``key`` for ``run``: from results.json for name/tags/env_id, else its overrides (either
    spelling of a moved key), else the value results.json records (e.g. total_steps, seed), else (default)."""
    res = run.results or {}
    if key == "tags":
        return _tags(run)
    if key == "env_id":
        return run.env
    if key in RESULT_KEYS:
        value = res.get(key)
        if value is None:
            value = artifacts.override_value(run.overrides, key)
        if value is None:
            return "(none)" if key == "name" and run.results is not None else "(unknown)"
        return str(value)
    value = artifacts.override_value(run.overrides, key)
    if value is not None:
        return value
    # Not overridden: results.json may still record the value the run used (e.g. total_steps, seed).
    if key in res and isinstance(res[key], (str, int, float, bool)):
        return str(res[key])
    return "(default)"


def has_key(run: Run, key: str) -> bool:
    """Does ``run`` say anything about ``key`` (in its overrides, either spelling, or in results.json)?"""
    if key in RESULT_KEYS:
        return key == "env_id" or artifacts.override_value(run.overrides, key) is not None or \
            (run.results is not None and key in run.results)
    value = (run.results or {}).get(key)
    return artifacts.override_value(run.overrides, key) is not None or isinstance(value, (str, int, float, bool))


def _overridden(run: Run) -> dict[str, str]:
    # Every key a run's overrides set, in canonical spelling (not Hydra's own, not how it was run).
    out = {}
    for text in run.overrides or []:
        o = artifacts.parse_override(text)
        if not (o.is_hydra or o.delete or o.value is None or o.canonical in ("resume", "log.progress")):
            out[o.canonical] = o.value
    return out


def varying_keys(runs: Iterable[Run]) -> list[str]:
    """The keys whose value differs between runs: override keys (a run that does not set one has its default)
    and results.json's name, tags, env_id, seed, total_steps, algo (among the runs that wrote results.json)."""
    runs = list(runs)
    settings = [_overridden(r) for r in runs]
    keys = {k for s in settings for k in s if len({s.get(k) for s in settings}) > 1}
    with_results = [r for r in runs if r.results is not None]
    keys |= {k for k in VARYING_RESULT_KEYS if len({group_value(r, k) for r in with_results}) > 1}
    return sorted(keys)


def group_tokens(run: Run, by: Sequence[str] | None = None) -> tuple[str, ...]:
    """What defines the group of ``run``: its config overrides (`artifacts.config_tokens`: canonical spelling,
    without seed, Hydra's and bookkeeping keys), or with ``by`` the ``key=value`` of those keys only
    (``tags=a+b`` for tags)."""
    if by:
        return tuple(f"{canonical_key(k)}={group_value(run, k)}" for k in by)
    return tuple(artifacts.config_tokens(run.overrides))


def group_runs(runs: Sequence[Run], by: Sequence[str] | None = None) -> dict[str, list[Run]]:
    """Runs grouped by label (their :func:`group_tokens` joined by spaces, or ``(defaults)``), labels in sorted
    order, runs in discovery order. Sets each run's ``tokens`` and ``label``. Callers split runs by env first:
    runs of different envs are never one group."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        run.tokens = group_tokens(run, by)
        run.label = " ".join(run.tokens) or "(defaults)"
        groups.setdefault(run.label, []).append(run)
    return dict(sorted(groups.items()))


def split_by_env(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs by env (``run.env``), envs in sorted order, runs in discovery order."""
    out: dict[str, list[Run]] = {}
    for run in runs:
        out.setdefault(run.env, []).append(run)
    return dict(sorted(out.items()))
