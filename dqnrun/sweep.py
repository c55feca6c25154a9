"""Sweeps: each job's share of the cores, and the summary a multirun ends with.

Launching stays Hydra's (basic, joblib, submitit, Ray launchers; the Optuna sweeper): nothing here schedules.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from dqnrun.run.artifacts import COMPLETED, FAILED, RUNNING, read_results, results_path, runnable

log = logging.getLogger(__name__)

# What the last multirun of this process ended with: {"failed": n, "total": m, "dir": sweep_dir}. The CLI reads
# it after Hydra returns to exit non-zero when a job failed (Hydra itself returns normally).
LAST_SWEEP: dict[str, Any] = {}
# Set by the sweep's process before it launches jobs, inherited by them (in-process, joblib's and submitit's
# workers, a local Ray cluster) and written into each job's results.json: the summary counts this sweep's jobs
# only, even when several sweepers share one sweep directory (a shared Optuna study).
SWEEP_ID_ENV = "DQNRUN_SWEEP_ID"


def ensure_plugins() -> None:
    """Register dqnrun's Hydra sweeper (``hydra/sweeper=dqnrun_optuna``). Hydra finds plugins by scanning the
    ``hydra_plugins`` namespace package, which misses packages installed in editable mode (their path is an
    import hook, not a folder), so register it explicitly; a wheel install is found either way."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.dqnrun_population import PopulationLauncher

    Plugins.instance().register(PopulationLauncher)  # hydra/launcher=population
    try:
        from hydra_plugins.dqnrun_sweeper import DqnrunOptunaSweeper
    except ImportError:  # the sweeps extra (optuna, its Hydra sweeper) is not installed
        return
    Plugins.instance().register(DqnrunOptunaSweeper)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_share(launcher: Any) -> int | None:
    """Cores one job may use when the launcher runs jobs side by side on this machine, so that N jobs on N
    cores do not oversubscribe: torch threads, BLAS threads and an env's own threads are capped to it.

    joblib: cores // n_jobs (``n_jobs=-1``, its default, means one job per core). submitit: ``cpus_per_task``.
    Ray: the CPUs each task reserves. Other launchers (basic: one job at a time): None, no cap.
    """
    target = str(launcher.get("_target_", "")) if launcher is not None else ""
    cores = available_cores()
    if "joblib" in target:
        n = int(launcher.get("n_jobs") or -1)
        n = cores + 1 + n if n < 0 else n  # joblib's convention: -1 = all cores, -2 = all but one
        return max(1, cores // max(1, n))
    if "submitit" in target:
        cpus = launcher.get("cpus_per_task")
        return int(cpus) if cpus else None
    if "ray" in target:
        remote = (launcher.get("ray") or {}).get("remote") or {}
        cpus = remote.get("num_cpus")
        return max(1, int(cpus)) if cpus else None
    return None


def limit_threads(share: int | None) -> None:
    """Cap BLAS/OpenMP thread pools of this process (torch's own pool is set by the lifecycle)."""
    if share is None:
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(share)


def job_dirs(sweep_dir: Path, sweep_id: str | None = None) -> list[Path]:
    """The job directories of a sweep (each has Hydra's .hydra/); with ``sweep_id``, only those whose
    results.json says they were launched by that sweep (a job writes it as soon as it starts)."""
    found = []  # a population's seeds of one job (hydra.launcher.seeds_per_job) sit one level deeper: <job>/<k>/
    for hydra_dir in [*sweep_dir.glob("*/.hydra"), *sweep_dir.glob("*/*/.hydra")]:
        job = hydra_dir.parent
        if sweep_id is not None and (read_results(job) or {}).get("sweep_id") != sweep_id:
            continue
        found.append(job)
    return sorted(found, key=lambda p: [(len(x), x) for x in p.relative_to(sweep_dir).parts])


def job_outcome(job_dir: Path) -> tuple[str, str]:
    """(status, reason) of one job from its results.json: status completed | interrupted | failed."""
    if not results_path(job_dir).exists():
        return FAILED, "it ended without writing results.json (killed?)"
    r = read_results(job_dir)
    if r is None:
        return FAILED, "its results.json is unreadable"
    status = r.get("status")
    if status == RUNNING:
        return FAILED, "it stopped while running (killed?)"
    return status or COMPLETED, r.get("error") or ""


class SweepSummary(Callback):
    """Ends a multirun with a line per failed job and ``N of M jobs failed`` (or that all M finished)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_id = f"{os.getpid()}-{time.time_ns()}"
        os.environ[SWEEP_ID_ENV] = self.sweep_id
        LAST_SWEEP.clear()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = job_dirs(sweep_dir, getattr(self, "sweep_id", None))
        failed = []
        for d in jobs:
            status, reason = job_outcome(d)
            if status == "failed":
                failed.append((d, reason))
        LAST_SWEEP.update(failed=len(failed), total=len(jobs), dir=str(sweep_dir))
        out = sys.stderr if failed else sys.stdout
        for d, reason in failed:
            print(f"dqnrun train: job {d.relative_to(sweep_dir)} failed: {reason} (log: {d / 'train.log'})", file=out)
        if failed:
            noun = "jobs" if len(jobs) != 1 else "job"
            print(f"dqnrun train: {len(failed)} of {len(jobs)} {noun} failed; their logs are listed above; "
                  f"the other jobs' results are in {sweep_dir}", file=out)
        else:
            done = f"all {len(jobs)} jobs" if len(jobs) != 1 else "its 1 job"
            print(f"dqnrun train: {done} finished in {sweep_dir}", file=out)
        print(f"summarize them with: {runnable('dqnrun')} report {sweep_dir}", file=out)
