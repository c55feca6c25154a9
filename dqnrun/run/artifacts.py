"""What a run directory holds, with one definition of each thing that several parts read or write.

The run lifecycle writes these files, the sweep summary and `dqnrun report` read them, and the API resolves
paths through them. Standard library only: the report reads run directories written by any dqnrun version and
must not depend on the training code.

    <run dir>/
      .hydra/                 the composed config and the overrides (Hydra's record)
      results.json            the record of the run: RESULT_FIELDS, status in STATUSES
      train.log               the log
      checkpoints/last.pt     resume point (written last in a save: the commit point)
      checkpoints/best.pt     the best evaluation so far
      checkpoints/step_*.pt   periodic checkpoints
      tb/<label>/             TensorBoard scalars
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from dqnrun.config.keys import canonical_key

# --- results.json ---------------------------------------------------------------------------------------
RESULTS_NAME = "results.json"
RUNNING, COMPLETED, INTERRUPTED, FAILED = "running", "completed", "interrupted", "failed"
STATUSES = (RUNNING, COMPLETED, INTERRUPTED, FAILED)
# Why a run stopped; `solved` is a completed run that stopped early (stop_when_solved).
STOP_REASONS = ("completed", "solved", "interrupted", "failed")
STATUS_OF_REASON = {"completed": COMPLETED, "solved": COMPLETED, "interrupted": INTERRUPTED, "failed": FAILED}
# The fields of results.json, in the order they are written. `dqnrun report` reads results.json files written
# by older versions too, where some of these are missing.
RESULT_FIELDS = (
    "status", "stop_reason", "error", "algo", "env_id", "seed", "name", "tags", "overrides", "steps", "total_steps",
    "updates", "episodes", "train_seconds", "sps", "final_eval_return", "best_eval_return", "solved_score",
    "solved_at_step", "solved_at_seconds", "recent_train_return", "resumed_from_step", "init_from",
    "eval_history", "run_dir", "device", "torch_threads", "cpu_share", "population_members", "dqnrun_version", "pid",
    "sweep_id",
    "updated_at", "objective",
)


def results_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / RESULTS_NAME


def read_results(run_dir: str | Path) -> dict[str, Any] | None:
    """A run's results.json as a dict; None if it is missing, unreadable or not a JSON object."""
    try:
        data = json.loads(results_path(run_dir).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_results(run_dir: str | Path, results: dict[str, Any]) -> None:
    """Write results.json atomically (a reader never sees half a file)."""
    atomic_write(results_path(run_dir), lambda f: f.write((json.dumps(results, indent=2) + "\n").encode()))


def now_stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write through ``write(file)`` to a temp file in the same directory, fsync it, ``os.replace`` it over
    ``path`` and fsync the directory: a crash at any moment leaves the old file or the new one, never a torn one."""
    from dqnrun.run.faults import point

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            point(f"{path.name}:writing")
            f.flush()
            os.fsync(f.fileno())
        if os.environ.get("DQNRUN_TEST_SLOW_SAVE"):  # test hook: widen the window for a kill mid-save
            time.sleep(float(os.environ["DQNRUN_TEST_SLOW_SAVE"]))
        point(f"{path.name}:written")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    point(f"{path.name}:replaced")
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# --- overrides --------------------------------------------------------------------------------------------
# Overrides that say how a job is run, not what it is: left out of run labels, the HParams record and the
# report's grouping. The seed says what is run, but runs that differ only in it are seeds of one configuration:
# the report groups them (see `config_tokens`).
BOOKKEEPING_KEYS = frozenset({"resume", "log.progress", "log.every", "name", "tags", "torch_threads",
                              "checkpoint.every", "checkpoint.keep_last", "checkpoint.save_replay",
                              "checkpoint.replay_max_gb"})
SEED_KEY = "seed"


@dataclass(frozen=True)
class Job:
    """Where a run sits: its directory, the overrides it was started with, and its place in a sweep."""

    run_dir: Path
    overrides: list[str] = field(default_factory=list)
    multirun: bool = False
    cpu_share: int | None = None  # cores this job may use when jobs run side by side; None: no limit


@dataclass(frozen=True)
class Override:
    """One Hydra override as typed: ``key=value``, ``+key=value`` (add), ``++key=value`` (add or set),
    ``~key`` or ``~key=value`` (delete), ``group=option``."""

    text: str
    key: str  # without its prefix, as typed (`canonical` gives today's spelling)
    value: str | None
    delete: bool

    @property
    def canonical(self) -> str:
        return canonical_key(self.key)

    @property
    def is_hydra(self) -> bool:
        return self.key.replace("/", ".").split(".")[0] == "hydra"


def parse_override(text: str) -> Override:
    text = text.strip()
    delete = text.startswith("~")
    body = text.lstrip("+~")
    key, sep, value = body.partition("=")
    return Override(text, key, value if sep else None, delete)


def defining_overrides(overrides: Iterable[str]) -> list[str]:
    """The overrides that say what a run is: not Hydra's own keys and not bookkeeping (the seed stays)."""
    out = []
    for text in overrides:
        o = parse_override(text)
        if not o.is_hydra and o.canonical not in BOOKKEEPING_KEYS:
            out.append(text)
    return out


def config_tokens(overrides: Iterable[str] | None) -> list[str]:
    """What defines a configuration, for grouping seeds: the defining overrides without the seed, in canonical
    spelling, normalised (``+k=v`` and ``++k=v`` are ``k=v``: adding a key and setting it configure the same
    run; ``~k`` stays, a deletion is another config), deduplicated and sorted."""
    keep = set()
    for text in defining_overrides(overrides or []):
        o = parse_override(text)
        key = o.canonical
        if key == SEED_KEY:
            continue
        keep.add(f"~{key}" if o.delete and o.value is None else
                 f"~{key}={o.value}" if o.delete else f"{key}={o.value}" if o.value is not None else key)
    return sorted(keep)


def override_value(overrides: Iterable[str] | None, key: str) -> str | None:
    """The value the overrides give ``key`` (either spelling), or None."""
    want = canonical_key(key)
    for text in overrides or []:
        o = parse_override(text)
        if o.canonical == want and o.value is not None and not o.delete:
            return o.value
    return None


# --- checkpoints --------------------------------------------------------------------------------------------
CHECKPOINTS = "checkpoints"
LAST, BEST = "last.pt", "best.pt"


def resolve_checkpoint(arg: str | Path, prefer: Sequence[str] = (BEST, LAST)) -> Path:
    """The checkpoint a path names: a file is itself; a run directory (or its checkpoints/ folder) gives the
    first of ``prefer`` that exists there (the first name if none does, so the caller can say what is missing)."""
    path = Path(arg).expanduser()
    if not path.is_dir():
        return path
    folder = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
    return next((folder / name for name in prefer if (folder / name).exists()), folder / prefer[0])


def run_dir_of(ckpt: str | Path) -> Path:
    """The run directory a checkpoint file belongs to (``<run>/checkpoints/x.pt`` -> ``<run>``)."""
    parent = Path(ckpt).parent
    return parent.parent if parent.name == CHECKPOINTS else parent


def runnable(tool: str) -> str:
    """How to type ``tool`` (``dqnrun``, ``tensorboard``) so that it runs as printed: its name when the shell
    finds this installation's copy, else that copy's path (``.venv/bin/dqnrun`` after ``make train``, whose venv
    is not active), else ``python -m dqnrun``."""
    import shutil
    import sys

    mine = Path(sys.executable).parent / tool
    found = shutil.which(tool)
    if found and (not mine.exists() or Path(found).resolve() == mine.resolve()):
        return tool
    if mine.exists():
        return shown_path(mine)
    return f"{shown_path(Path(sys.executable))} -m dqnrun" if tool == "dqnrun" else tool


def shown_path(path: Path) -> str:
    """A path as the user would type it from the current directory."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def describe_run(env_id: str, name: Any, seed: Any, overrides: Iterable[str], tags: Iterable[Any] = (),
                 with_seed: bool = True) -> str:
    """What a run is, in one string: env, name, tags, seed and the overrides that make it differ (``env=`` and
    ``env.id`` are said by the env). The label of its TensorBoard run and (without the seed) the folder its run
    directory sits in, so that both lead with what the run is."""
    parts = [str(env_id).replace("/", "-")]
    parts += [str(x) for x in (name, *tags) if x not in (None, "")]
    if with_seed:
        parts.append(f"{SEED_KEY}={seed}")
    parts += sorted(o.lstrip("+~") for o in defining_overrides(overrides)
                    if parse_override(o).canonical not in (SEED_KEY, "env", "env.id"))
    return ",".join(parts)


def safe_name(text: str, limit: int = 120) -> str:
    """A `describe_run` string as one path component that Hydra's override grammar takes unquoted (so a printed
    ``ckpt=<path>`` or ``resume=<path>`` works as printed): ``key=value`` becomes ``key:value``, items are joined
    by ``+``, list brackets go, anything else outside letters, digits and ``._:+-`` becomes ``-``."""
    items = []
    depth = 0
    item = ""
    for ch in text:  # split on the commas between items, not on those inside a list value
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            items.append(item)
            item = ""
        else:
            item += ch
    items.append(item)
    joined = "+".join(i.replace("=", ":", 1).replace("[", "").replace("]", "").replace(",", "-") for i in items)
    return "".join(ch if ch.isalnum() or ch in "._:+-" else "-" for ch in joined)[:limit].strip("-") or "run"
