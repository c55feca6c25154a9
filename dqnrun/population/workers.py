"""The worker processes that train populations side by side: started while the sweep is still composing its jobs
(by the command line, before its preflight, where it can tell: `start_early`), kept from one launch to the next
(an Optuna study launches a batch of trials at a time) and killed when the command ends.

A fresh worker takes ~1.3 s on this machine to import what a population needs (torch alone is 1.1 s); joblib's
``Parallel`` starts its workers only when the first population is handed over, after the sweep composed every job
and wrote every member's directory, so the two waits came one after the other. Here the workers start first and
import in an initializer, on the other core, while this process composes (`dqnrun.population.launch.launch`). And
at the end, joblib's executor lets its idle workers exit at their own pace, which the sweep's own exit waited
for (0.9 s measured: loky's exit handler joins them); the workers hold nothing by then (every member closed its
files and released its lock before its population returned), so they are killed.

They are loky's reusable workers, as joblib's (the ``hydra/launcher=joblib`` sweeps use the same), with joblib's
thread caps in their environment (cores / workers for OpenMP, MKL, OpenBLAS..., where the user has not set them).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from dqnrun.errors import UsageError

# the thread-pool variables joblib's loky backend caps in its workers (joblib._parallel_backends)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def warm() -> None:
    """In a fresh worker: import what a population imports (torch, the engine, the DQN family, the networks; not
    torch's dynamo, which a population never needs: `dqnrun.population.engine.optimizers_without_dynamo`). And
    give tqdm a thread lock: its default lock holds a multiprocessing semaphore (a process's bars share it with
    the processes it forks), which a killed worker would leave behind for the resource tracker to report."""
    import threading

    import torch  # noqa: F401
    from tqdm import tqdm

    import dqnrun.algos.dqn.loop  # noqa: F401
    import dqnrun.networks  # noqa: F401
    import dqnrun.population.engine  # noqa: F401

    tqdm.set_lock(threading.RLock())


class Workers:
    """``n`` worker processes, started now (each imports in `warm`).

    Args:
        n: how many.
        cores: the machine's cores (each worker's thread cap is cores // n).
    """

    def __init__(self, n: int, cores: int) -> None:
        from joblib.externals.loky import get_reusable_executor

        self.n = int(n)
        share = str(max(1, cores // self.n))
        env = {name: os.environ.get(name, share) for name in THREAD_VARS}
        self.executor = get_reusable_executor(max_workers=self.n, initializer=warm, env=env, reuse=False)
        self.executor.submit(int)  # the executor starts its processes on its first task

    def run(self, calls: Sequence[Callable[[], Any]]) -> list[Any]:
        """``[c() for c in calls]``, in the workers (at most ``n`` at a time, in order of submission)."""
        futures = [self.executor.submit(c) for c in calls]
        return [f.result() for f in futures]

    def close(self) -> None:
        """Kill the workers (whatever they hold is closed by then: see the module's docstring)."""
        self.executor.shutdown(wait=True, kill_workers=True)


def resolve_n_jobs(n_jobs: int, cores: int) -> int:
    """``hydra.launcher.n_jobs`` as a count: joblib's convention, -1 = one per core, -2 = all cores but one."""
    return max(1, cores + 1 + n_jobs) if n_jobs < 0 else n_jobs


def worker_count(n_jobs: int, jobs: int, seeds: int) -> int:
    """The workers a sweep of ``jobs`` jobs x ``seeds`` seeds wants with ``n_jobs`` (resolved): no more than runs."""
    return min(n_jobs, max(1, jobs) * max(1, seeds))


_held: Workers | None = None  # this process's workers, kept from one launch to the next (an Optuna study's batches)


def start_early(overrides: list[str], n_jobs_count: int, cores: int) -> None:
    """``dqnrun train -m ... hydra/launcher=population``: start the workers the launcher will want now, so that they
    import while this process checks and composes the jobs. ``n_jobs_count``: the sweep's jobs (1 where only the
    sweeper knows them: an Optuna study's); ``cores``: the machine's. Nothing for a launcher on submitit or with one
    worker."""
    global _held
    values = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in overrides if "=" in o}
    if values.get("hydra/launcher") != "population" or "hydra.launcher.submitit" in values:
        return
    try:
        n_jobs = int(values.get("hydra.launcher.n_jobs", -1))
        seeds = int(values.get("hydra.launcher.seeds_per_job", 1))
    except ValueError:  # the launcher says what is wrong with them
        return
    n = worker_count(resolve_n_jobs(n_jobs, cores), n_jobs_count, seeds)  # what the launcher will ask for
    if n > 1 and _held is None:
        _held = Workers(n, cores)


def workers_for(n: int, cores: int, sweep_dir: Path) -> Workers:
    """``n`` workers: this process's, where it holds as many (started early, or by the last launch), else fresh
    ones, held for the next launch (once the early checks of the sweep in ``sweep_dir`` are in: `settle_checks`)."""
    global _held
    if _held is not None and _held.n != n:
        settle_checks(sweep_dir)  # the early checks run in those workers: their verdict first
        release()
    if _held is None:
        _held = Workers(n, cores)
    return _held


_checks: tuple[Future, Callable[[Path], None]] | None = None  # the preflight's checks handed to the workers, and undo


def check_early(check: Callable[[], None], undo: Callable[[Path], None]) -> bool:
    """Hand ``check`` (the preflight's checks that need torch: `dqnrun.config.preflight.check_built`) to the workers
    started early, which run it once torch is in: this process composes the sweep meanwhile, and torch never
    loads here. ``undo`` removes what the sweep's start wrote before a failure was known (`settle_checks`). False,
    and nothing handed over, where no workers are held."""
    global _checks
    if _held is None:
        return False
    _checks = (_held.executor.submit(check), undo)
    return True


def settle_checks(sweep_dir: Path) -> None:
    """Wait for the early checks, if any: the launcher does before it writes a member's directory. Their
    UsageError is raised here, after ``undo(sweep_dir)`` (the sweep's directory as the sweeper made it)."""
    global _checks
    pending, _checks = _checks, None
    if pending is None:
        return
    future, undo = pending
    try:
        future.result()
    except UsageError:
        undo(sweep_dir)
        raise


def release() -> None:
    """Kill this process's workers: at the end of the command, or after a launch that failed."""
    global _held, _checks
    held, _held, _checks = _held, None, None
    if held is not None:
        held.close()
