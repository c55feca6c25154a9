"""A thin subclass of hydra-optuna-sweeper 1.3 (it runs the same sampler, search-space syntax and launcher).

What the upstream sweeper does not do, and a tuning study needs:

- **The study outlives its sweepers.** By default it lives in ``<sweep dir>/optuna.db`` (SQLite). Run the same
  command again into the same sweep directory (``resume=<sweep dir>`` or ``hydra.sweep.dir=<sweep dir>``) and it
  continues: finished trials are not run again, and ``n_trials`` counts the study's trials in all (upstream
  counts this invocation's only).
- **Interrupted trials are retried.** A trial left RUNNING by a sweeper that died (same host, its pid gone) is
  marked failed (user attr ``dqnrun_skip=interrupted``, not counted) and its parameters are enqueued again.
- **A resumed study explores new points.** A seeded sampler would propose its first points again after a restart;
  its random state is re-derived from the seed and the number of trials already in the study.
- **No two trials share a parameter set**: a proposal equal to an existing trial's is dropped (marked
  ``dqnrun_skip=duplicate``) and a new one is asked for.
- **Run directories are numbered by trial number** (``<sweep dir>/<trial number>/``), so a rerun continues the
  numbering and two sweepers sharing a study never write into the same directory.
- **Several sweepers, one study.** ``hydra.sweeper.storage=postgresql://...`` shares a study between sweepers on
  several machines (Optuna's own way to distribute). Two that first touch a fresh database at once race on
  Optuna's schema creation (a UniqueViolation on ``CREATE TYPE``): creating the storage is retried. Trial numbers
  come from the database, so trials are never run twice; a sweeper that finds the budget used up by the others
  marks its extra trial ``dqnrun_skip=surplus`` instead of running it.
- **Failed jobs are failed trials** (the task returns NaN), and the sweep goes on; ``max_failure_rate`` is not
  used to abort it. The sweep's end summary counts them (`dqnrun.sweep.SweepSummary`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")  # optuna 2.10 uses SQLAlchemy 1.4's legacy API

import numpy as np  # noqa: E402
import optuna  # noqa: E402
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from dqnrun.config.keys import canonical_key, canonical_overrides  # noqa: E402

log = logging.getLogger(__name__)

SKIP = "dqnrun_skip"  # user attr of trials that do not count: duplicate | surplus
# Study user attr listing the numbers of trials a dead sweeper left running (failed, not counted, rerun). A
# study-level attr: a trial's own attrs can be set only through the Trial object of the process that asked it.
INTERRUPTED = "dqnrun_interrupted"
WORKER = "dqnrun_worker"  # user attr: {"host": ..., "pid": ...} of the sweeper that runs the trial


def counts(trial: optuna.trial.FrozenTrial, interrupted: frozenset[int] = frozenset()) -> bool:
    """Whether a trial uses up the budget: every trial but the interrupted, duplicate and surplus ones."""
    return SKIP not in trial.user_attrs and trial.number not in interrupted


def interrupted_trials(study: optuna.Study) -> frozenset[int]:
    return frozenset(int(n) for n in study.user_attrs.get(INTERRUPTED, []))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def params_key(params: dict[str, Any]) -> tuple:
    """A trial's parameters as a comparable key; a study begun before a key moved names it the old way."""
    return tuple(sorted((canonical_key(k), repr(v)) for k, v in params.items()))


def canonical_params(overrides: list[str]) -> list[str]:
    """Search-space overrides with their keys in today's spelling (``learner.target_update_interval:
    choice(...)`` works as ``algo.target_update_interval``); jobs record them as written in the search space."""
    from dqnrun.config.compose import TYPED_KEYS_ENV

    out, typed = canonical_overrides(overrides)
    if typed:
        known = json.loads(os.environ.get(TYPED_KEYS_ENV) or "{}")
        os.environ[TYPED_KEYS_ENV] = json.dumps({**known, **typed})
    return out


def open_storage(url: Any, attempts: int = 8) -> Any:
    """An RDBStorage for ``url``, retrying the schema creation race between sweepers starting together."""
    if not isinstance(url, str):
        return url
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    from sqlalchemy.exc import SQLAlchemyError

    for _ in range(attempts - 1):
        try:
            return optuna.storages.RDBStorage(url)
        except SQLAlchemyError as exc:
            log.info("storage not ready (%s); retrying", type(exc).__name__)
            time.sleep(0.2 + random.random())
    return optuna.storages.RDBStorage(url)


def reseed(sampler: Any, salt: int) -> None:
    """Re-derive a sampler's random states from their current (seeded) state and ``salt``: deterministic for a
    seeded sampler, different for every study size, so a resumed study does not replay its first proposals."""
    seen: set[int] = set()

    def walk(obj: Any) -> None:
        if id(obj) in seen or not hasattr(obj, "__dict__"):
            return
        seen.add(id(obj))
        for name, value in list(vars(obj).items()):
            if isinstance(value, np.random.RandomState):
                setattr(obj, name, np.random.RandomState((int(value.randint(2**31 - 1)) + 7919 * salt) % 2**32))
            elif isinstance(value, optuna.samplers.BaseSampler):
                walk(value)

    walk(sampler)


class DqnrunOptunaSweeperImpl(OptunaSweeperImpl):
    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None
        self._process_searchspace_config()
        params_conf = canonical_params([*self._parse_sweeper_params_config(), *arguments])
        space, fixed = create_params_from_overrides(params_conf)
        distributions = dict(self.search_space_distributions or {})
        distributions.update(space)
        for name in fixed:
            distributions.pop(name, None)
        directions = self._get_directions()
        storage = open_storage(self.storage)
        study = optuna.create_study(study_name=self.study_name, storage=storage, sampler=self.sampler,
                                    directions=directions, load_if_exists=True)
        existing = len(study.trials)
        log.info("Study %s in %s: %d trials so far, %d wanted", study.study_name, self.storage, existing,
                 self.n_trials)
        if existing:
            reseed(self.sampler, existing)
        self._retry_interrupted(study)
        me = {"host": socket.gethostname(), "pid": os.getpid()}
        while asked := self._ask(study, distributions, fixed, me):
            trials, overrides = zip(*asked, strict=True)
            returns = self.launcher.launch(overrides, initial_job_idx=trials[0].number)
            for trial, ret in zip(trials, returns, strict=True):
                self._tell(study, trial, ret, directions)
        self._write_results(study, directions)

    def _ask(self, study: optuna.Study, distributions: dict, fixed: dict,
             me: dict) -> list[tuple[optuna.Trial, Sequence[str]]]:
        """Up to n_jobs new trials, within the study-wide budget, each with a parameter set of its own, and the
        overrides that run each in its trial-numbered directory."""
        gone = interrupted_trials(study)
        counted = [t for t in study.get_trials(deepcopy=False) if counts(t, gone)]
        taken = {params_key(t.params) for t in counted if t.state != TrialState.WAITING}
        remaining = self.n_trials - len(counted)
        trials: list[tuple[optuna.Trial, Sequence[str]]] = []
        attempts = 0
        while len(trials) < min(self.n_jobs, remaining) and attempts < 20 * self.n_jobs:
            attempts += 1
            trial = study.ask()
            (params,) = self._configure_trials([trial], distributions, fixed)
            trial.set_user_attr(WORKER, me)
            before = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number and counts(t, gone)]
            if len(before) >= self.n_trials:  # other sweepers used up the budget meanwhile
                self._skip(study, trial, "surplus")
                break
            key = params_key(trial.params)
            if distributions and key in taken:
                self._skip(study, trial, "duplicate")
                continue
            taken.add(key)
            trials.append((trial, (*params, f"hydra.sweep.subdir={trial.number}")))
        return trials

    @staticmethod
    def _skip(study: optuna.Study, trial: optuna.Trial, why: str) -> None:
        trial.set_user_attr(SKIP, why)
        study.tell(trial, state=TrialState.FAIL)
        log.info("trial %d not run (%s)", trial.number, why)

    @staticmethod
    def _retry_interrupted(study: optuna.Study) -> None:
        """Trials left RUNNING by a dead sweeper on this host: mark them failed (not counted), enqueue again."""
        host = socket.gethostname()
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker = t.user_attrs.get(WORKER) or {}
            if worker.get("host") != host or pid_alive(int(worker.get("pid", -1))):
                continue
            try:
                study.tell(t.number, state=TrialState.FAIL)
            except (RuntimeError, ValueError):  # another sweeper recovered it first
                continue
            study.set_user_attr(INTERRUPTED, sorted(interrupted_trials(study) | {t.number}))
            study.enqueue_trial({canonical_key(k): v for k, v in t.params.items()})
            log.info("trial %d was interrupted; its parameters are queued again", t.number)

    @staticmethod
    def _tell(study: optuna.Study, trial: optuna.Trial, ret: Any, directions: list[str]) -> None:
        try:
            value = ret.return_value
            values = [float(v) for v in value] if len(directions) > 1 else [float(value)]
            ok = all(math.isfinite(v) for v in values)
        except Exception as exc:  # the job raised (Hydra keeps the exception in the JobReturn)
            log.warning("trial %d failed: %s", trial.number, exc)
            values, ok = None, False
        if ok:
            study.tell(trial, values=values)
        else:
            study.tell(trial, state=TrialState.FAIL)

    def _write_results(self, study: optuna.Study, directions: list[str]) -> None:
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not done:
            log.warning("no trial of study %s completed", study.study_name)
            return
        if len(directions) == 1:
            best = study.best_trial
            out: dict[str, Any] = {"name": "optuna", "best_params": best.params, "best_value": best.value,
                                   "best_trial": best.number, "trials": len(done)}
            log.info("Best parameters: %s (trial %d, value %s)", best.params, best.number, best.value)
            params = " ".join(f"{k}={v}" for k, v in sorted(best.params.items()))
            print(f"dqnrun train: best of {len(done)} trials: objective {best.value:.4g} in trial {best.number} "
                  f"({Path(self.config.hydra.sweep.dir) / str(best.number)}): {params}")
        else:
            out = {"name": "optuna", "solutions": [{"params": t.params, "values": t.values}
                                                   for t in study.best_trials]}
            print(f"dqnrun train: {len(study.best_trials)} Pareto-optimal trials of {len(done)}: "
                  f"{', '.join(str(t.number) for t in study.best_trials)}")
        OmegaConf.save(OmegaConf.create(out), Path(self.config.hydra.sweep.dir) / "optimization_results.yaml")
