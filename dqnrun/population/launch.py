"""The Hydra side of populations: a multirun's jobs -> member run directories -> populations -> JobReturns.

`launch` is what ``hydra/launcher=population`` calls (`hydra_plugins.dqnrun_population` is a thin shell):

1. Every job of the batch (a grid's, an Optuna batch's) is composed as Hydra composes it. With
   ``seeds_per_job=S`` a job becomes S members, seeds ``seed .. seed+S-1``, in ``<job dir>/<k>/``.
2. Each member's directory gets what Hydra's ``run_job`` writes (``.hydra/config.yaml``, ``hydra.yaml``,
   ``overrides.yaml``), so it is an ordinary sweep job's directory.
3. `dqnrun.population.grouping.plan` groups the members; the first lines say how, and why a job stands alone.
4. Each population trains (`dqnrun.population.engine.Population`), one after another in this process, side by
   side in ``n_jobs`` worker processes, or each as one job through submitit (``submitit.cluster=local|slurm``);
   a job that stands alone runs as an ordinary run (Hydra's ``run_job``).
5. Each job returns its objective (with seeds: the IQM of its seeds' objectives; NaN when it or one seed failed),
   which the Optuna sweeper reads as any launcher's.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, run_job, setup_globals
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from dqnrun.errors import Interrupted, UsageError
from dqnrun.population import grouping
from dqnrun.population.logs import FORMAT, MemberLogs, routed
from dqnrun.population.spec import MemberSpec
from dqnrun.population.stats import iqm
from dqnrun.population.workers import Workers, release, resolve_n_jobs, settle_checks, worker_count, workers_for
from dqnrun.run.artifacts import Job
from dqnrun.sweep import SWEEP_ID_ENV, available_cores, limit_threads

if TYPE_CHECKING:  # the engine (torch) is imported where a population trains: in a worker, where there are workers
    from dqnrun.population.engine import Population

log = logging.getLogger("dqnrun.population")


@dataclass
class Options:
    """``hydra.launcher.*`` of ``hydra/launcher=population`` (conf/hydra/launcher/population.yaml)."""

    max_members: int = 64
    n_jobs: int = -1
    seeds_per_job: int = 1
    torch_threads: int | None = None
    submitit: dict[str, Any] | None = None
    autograd: Any = "auto"  # the batched autograd path: auto (where a GPU is) | true | false

    @classmethod
    def of(cls, params: dict[str, Any]) -> Options:
        known = {k: v for k, v in params.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(params) - set(known) - {"_target_"})
        if unknown:
            raise ValueError(f"hydra.launcher: unknown option(s) {', '.join(unknown)} of hydra/launcher=population; "
                             f"it takes {', '.join(cls.__dataclass_fields__)}")
        out = cls(**known)
        out.n_jobs = resolve_n_jobs(int(out.n_jobs), available_cores())  # -1: one population per core
        flag = str(out.autograd).lower()
        if flag not in ("auto", "true", "false"):
            raise ValueError(f"hydra.launcher.autograd={out.autograd} must be auto, true or false")
        out.autograd = flag if flag == "auto" else flag == "true"
        for name in ("max_members", "n_jobs", "seeds_per_job"):
            if int(getattr(out, name)) < 1:
                raise ValueError(f"hydra.launcher.{name}={getattr(out, name)} must be at least 1")
        return out


@dataclass
class JobSlot:
    """One job of the batch: its number, overrides, composed config and the members it became."""

    num: int
    overrides: list[str]
    config: DictConfig
    members: list[int] = field(default_factory=list)  # indices into the member list


@dataclass
class MemberRecord:
    """A member's spec and Hydra's record of it (for its JobReturn)."""

    spec: MemberSpec
    sweep_config: DictConfig
    job: int  # index of its JobSlot
    files: dict[Path, str] = field(default_factory=dict)  # Hydra's record in its run directory (`write_record`)


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    setup_globals()
    config, opts = launcher.config, launcher.options
    console()
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    n_workers = worker_count(opts.n_jobs, len(job_overrides), opts.seeds_per_job)
    try:  # the workers import while the jobs compose
        workers = workers_for(n_workers, available_cores(), sweep_dir) if n_workers > 1 and not opts.submitit else None
        return _launch(launcher, job_overrides, initial_job_idx, sweep_dir, workers)
    except UsageError as exc:  # the preflight's checks that build a network, run in the workers (`settle_checks`)
        release()
        print(f"dqnrun train: error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except BaseException:  # a worker may have died with it: the next launch starts fresh ones
        release()
        raise


def _launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int, sweep_dir: Path,
            workers: Workers | None) -> list[JobReturn]:
    config, ctx, opts = launcher.config, launcher.hydra_context, launcher.options
    jobs, members = compose(ctx, config, job_overrides, initial_job_idx, opts.seeds_per_job, 1)
    settle_checks(sweep_dir)  # what the preflight left to the workers holds, before any member's directory exists
    for r in members:
        write_record(r.spec.job.run_dir, r.files)
    alone_jobs = {j.num: grouping.eligibility(members[j.members[0]].spec.cfg, opts.autograd) for j in jobs}
    eligible = [i for i, r in enumerate(members) if alone_jobs[jobs[r.job].num] is None]
    the_plan = grouping.plan([members[i].spec.cfg for i in eligible], opts.max_members, opts.n_jobs,
                             jobs=[jobs[members[i].job].num for i in eligible], others=len(members) - len(eligible),
                             autograd=opts.autograd)
    if the_plan.alone:  # `eligibility` said yes above: the plan must not drop a job it refuses
        raise RuntimeError(f"population plan refused jobs the launcher accepted: {the_plan.alone}")
    populations = [[eligible[i] for i in pop] for pop in the_plan.populations]
    say_plan(jobs, members, populations, alone_jobs, the_plan, opts)
    units: list[tuple[str, Any]] = [("population", [members[i].spec for i in pop]) for pop in populations]
    units += [("alone", (members[i].sweep_config, jobs[members[i].job].num))
              for j in jobs if alone_jobs[j.num] is not None for i in j.members]
    share = max(1, available_cores() // max(1, min(opts.n_jobs, len(units))))  # each unit's cores
    for r in members:
        r.spec.job = replace(r.spec.job, cpu_share=share)
    outcomes = run_units(launcher, units, opts, share, sweep_dir, workers)
    results: dict[int, dict[str, Any]] = {}
    alone_returns: dict[int, JobReturn] = {}
    for (kind, _payload), outcome, members_of in zip(units, outcomes, _member_indices(units, populations, jobs,
                                                                                    alone_jobs), strict=True):
        if kind == "population":
            results.update(zip(members_of, outcome, strict=True))
        else:
            alone_returns[members_of[0]] = outcome
            results[members_of[0]] = {"objective": {"value": _value_of(outcome)}}
    interrupted = [r["exit_code"] for r in results.values() if r.get("exit_code")]
    if interrupted:
        print(f"dqnrun train: stopped by signal; every member saved its last.pt. Continue the sweep with the same "
              f"command and resume={sweep_dir}", file=sys.stderr)
        raise Interrupted(interrupted[0] - 128)
    return [job_return(j, members, results, alone_returns, opts.seeds_per_job) for j in jobs]


def _member_indices(units: list[tuple[str, Any]], populations: list[list[int]], jobs: list[JobSlot],
                    alone: dict[int, str | None]) -> list[list[int]]:
    out = [list(pop) for pop in populations]
    out += [[i] for j in jobs if alone[j.num] is not None for i in j.members]
    return out


def _value_of(ret: JobReturn) -> float:
    try:
        value = ret.return_value
        return float(value) if value is not None else math.nan
    except BaseException:
        return math.nan


# --- composing the members ------------------------------------------------------------------------------
def compose(ctx: Any, config: DictConfig, job_overrides: Sequence[Sequence[str]], first: int, seeds: int,
            share: int) -> tuple[list[JobSlot], list[MemberRecord]]:
    """Every job's config, and its members with the files of their run directories (Hydra's record, written by
    `write_record`)."""
    jobs: list[JobSlot] = []
    members: list[MemberRecord] = []
    varying = varying_keys(job_overrides)
    for offset, overrides in enumerate(job_overrides):
        num = first + offset
        base = _sweep_config(ctx, config, list(overrides), num)
        job = JobSlot(num, list(overrides), base)
        if seeds == 1:
            variants = [(list(overrides), None)]
        else:
            subdir = str(base.hydra.sweep.subdir)
            seed = int(base.seed)
            kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("seed", "hydra.sweep.subdir")]
            variants = [([*kept, f"seed={seed + k}", f"hydra.sweep.subdir={subdir}/{k}"], k) for k in range(seeds)]
        for member_overrides, k in variants:
            sweep_config = base if k is None else _sweep_config(ctx, config, member_overrides, num)
            spec, files = member_dir(sweep_config, share, label=f"job {num}" if k is None else f"job {num} seed {k}",
                                     setting=_setting(overrides, varying))
            job.members.append(len(members))
            members.append(MemberRecord(spec, sweep_config, len(jobs), files))
        jobs.append(job)
    return jobs, members


def _sweep_config(ctx: Any, config: DictConfig, overrides: list[str], num: int) -> DictConfig:
    sweep_config = ctx.config_loader.load_sweep_config(config, overrides)
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{num}"
        sweep_config.hydra.job.num = num
    return sweep_config


def _setting(overrides: Sequence[str], varying: set[str]) -> str:
    """What a job's members share beyond their seeds, as a TensorBoard run name: its values of the keys that vary
    between the batch's jobs (the seed aside); ``all`` when only seeds vary."""
    from dqnrun.run.artifacts import defining_overrides, safe_name

    kept = [o for o in defining_overrides(list(overrides)) if _key(o) in varying]
    return safe_name(",".join(kept)) if kept else "all"


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def varying_keys(job_overrides: Sequence[Sequence[str]]) -> set[str]:
    """The keys whose values differ between jobs (or that only some jobs set), but the seed and Hydra's own."""
    values: dict[str, set[str]] = {}
    for overrides in job_overrides:
        for o in overrides:
            values.setdefault(_key(o), set()).add(o)
    n = len(job_overrides)
    return {k for k, v in values.items() if k != "seed" and not k.startswith("hydra.")
            and (len(v) > 1 or sum(any(_key(o) == k for o in ov) for ov in job_overrides) < n)}


def member_dir(sweep_config: DictConfig, share: int, label: str, setting: str) -> tuple[MemberSpec, dict[Path, str]]:
    """What Hydra's ``run_job`` and the `dqnrun train` task do before training, for one member: its task config
    (normalized, resolved while its Hydra config is current), its `Job` (overrides as typed), and the files of its
    output directory (``.hydra/``; `write_record` writes them)."""
    from dqnrun.config.compose import as_typed_overrides, normalize
    from dqnrun.config.derive import copy_config

    HydraConfig.instance().set_config(sweep_config)
    output_dir = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
    with read_write(sweep_config.hydra.runtime), open_dict(sweep_config.hydra.runtime):
        sweep_config.hydra.runtime.output_dir = str(output_dir.resolve())
    HydraConfig.instance().set_config(sweep_config)
    task_cfg = copy_config(sweep_config)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    OmegaConf.resolve(task_cfg)
    task_overrides = list(OmegaConf.to_container(sweep_config.hydra.overrides.task))  # type: ignore[arg-type]
    typed = as_typed_overrides(task_overrides)
    files: dict[Path, str] = {}
    subdir = sweep_config.hydra.output_subdir
    if subdir is not None:
        record = output_dir / str(subdir)
        files[record / "config.yaml"] = OmegaConf.to_yaml(task_cfg)
        files[record / "hydra.yaml"] = OmegaConf.to_yaml(HydraConfig.instance().cfg)  # type: ignore[arg-type]
        files[record / "overrides.yaml"] = OmegaConf.to_yaml(OmegaConf.create(typed))
    job = Job(output_dir.resolve(), typed, multirun=True, cpu_share=share)
    return MemberSpec(normalize(task_cfg), job, label, setting), files


def write_record(run_dir: Path, files: dict[Path, str]) -> None:
    """A member's run directory and Hydra's record in it (`member_dir`'s files; none with hydra.output_subdir=null)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


# --- what the sweep's first lines say ---------------------------------------------------------------------
def say_plan(jobs: list[JobSlot], members: list[MemberRecord], populations: list[list[int]],
             alone: dict[int, str | None], the_plan: grouping.Plan, opts: Options) -> None:
    n_members = len(members)
    what = f"{len(jobs)} {grouping.jobs_word(jobs)}"
    if opts.seeds_per_job > 1:
        what += f" x {opts.seeds_per_job} seeds = {n_members} runs"
    where = f"{len(populations)} population{'s' if len(populations) != 1 else ''}"
    n_alone = sum(1 for j in jobs if alone[j.num] is not None)
    alone_part = f" and {n_alone} job{'s' if n_alone != 1 else ''} on {'their' if n_alone != 1 else 'its'} own"
    side = f", {opts.n_jobs} at a time" if opts.n_jobs > 1 and len(populations) > 1 else ""
    if opts.submitit:
        side = f", each a submitit job ({opts.submitit.get('cluster', 'local')})"
    if not populations:  # every job stands alone: no population to speak of
        print(f"dqnrun train: {what}, no population: {'each' if n_alone != 1 else 'it'} runs on its own", flush=True)
    else:
        print(f"dqnrun train: {what} in {where}{alone_part if n_alone else ''}{side}", flush=True)
    for i, pop in enumerate(populations):
        nums = sorted({jobs[members[m].job].num for m in pop})
        print(f"  population {i + 1}: {len(pop)} member{'s' if len(pop) != 1 else ''} ({grouping.jobs_word(nums)} "
              f"{grouping.span(nums)})", flush=True)
    for line in the_plan.splits:
        print(f"  separate populations: {line}", flush=True)
    for j in jobs:
        if alone[j.num] is not None:
            print(f"  job {j.num} runs on its own: {alone[j.num]}", flush=True)


# --- running ----------------------------------------------------------------------------------------------
def run_units(launcher: Any, units: list[tuple[str, Any]], opts: Options, share: int, sweep_dir: Path,
              workers: Workers | None = None) -> list[Any]:
    """Each unit's outcome: a population's member results, or an ordinary job's JobReturn; side by side in
    ``workers`` where there are more units than one."""
    sweep_id = os.environ.get(SWEEP_ID_ENV)
    threads = opts.torch_threads  # None: each population takes its members' torch_threads, capped to its share
    calls = [Unit(kind, payload, launcher.hydra_context, launcher.config, launcher.task_function, threads, share,
                  sweep_id, sweep_dir, f"population {i + 1}" if kind == "population" else "")
             for i, (kind, payload) in enumerate(units)]
    if opts.submitit:
        return _via_submitit(calls, opts.submitit, sweep_dir)
    if workers is not None and len(calls) > 1:
        state = Singleton.get_state()
        with forwarded_signals():  # the workers save their members and return, then this process leaves
            return workers.run([partial(c.remote, state) for c in calls])
    out = []
    for c in calls:
        outcome = c()
        out.append(outcome)
        if c.kind == "population" and any(r.get("exit_code") for r in outcome):
            out += [[{"status": "interrupted", "exit_code": r["exit_code"]} for r in outcome]
                    if k == "population" else JobReturn(status=JobStatus.FAILED, _return_value=Interrupted(2))
                    for k, _ in units[len(out):]]
            break
    return out


def worker_pids() -> list[int]:
    """This process's joblib (loky) worker processes (Linux: /proc), not its resource trackers."""
    pids = []
    for task in Path("/proc/self/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in children:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"popen_loky" in cmdline:
                pids.append(int(pid))
    return pids


@contextmanager
def forwarded_signals() -> Iterator[None]:
    """While populations run in worker processes: a SIGTERM, SIGINT or SIGUSR2 to this process is handed to the
    workers (as SIGTERM for SIGINT: a terminal's Ctrl-C reaches them already, and a second SIGINT would abort
    them), which stop every member at a step boundary and save it; this process waits for them. A second Ctrl-C
    here aborts at once."""
    got: list[int] = []

    def handle(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and signal.SIGINT in got:
            raise KeyboardInterrupt
        got.append(signum)
        for pid in worker_pids():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if signum == signal.SIGINT else signum)

    previous = {}
    try:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
            previous[s] = signal.signal(s, handle)
    except ValueError:  # not the main thread: signals stay as they are
        pass
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class Unit:
    """One population, or one job that stands alone, as a picklable callable (worker processes, submitit).
    A submitit job preempted on SLURM is requeued with the same callable (`checkpoint`): its members resume
    from their last.pt when the sweep runs with ``resume=auto``."""

    def __init__(self, kind: str, payload: Any, hydra_context: Any, config: DictConfig, task_function: Any,
                 threads: int | None, share: int, sweep_id: str | None, sweep_dir: Path, name: str) -> None:
        self.kind, self.payload, self.hydra_context, self.config = kind, payload, hydra_context, config
        self.task_function, self.threads, self.share, self.sweep_id = task_function, threads, share, sweep_id
        self.sweep_dir, self.name = sweep_dir, name

    def remote(self, singleton_state: dict[Any, Any]) -> Any:
        """In another process: Hydra's singletons (config store, plugins) first, as the joblib launcher does."""
        setup_globals()
        Singleton.set_state(singleton_state)
        console()
        return self()

    def __call__(self) -> Any:
        if self.sweep_id is not None:
            os.environ[SWEEP_ID_ENV] = self.sweep_id
        if self.kind == "population":
            return run_population(self.payload, self.sweep_dir, self.threads, self.share, self.name)
        sweep_config, num = self.payload
        return run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=sweep_config,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def population_class(specs: list[MemberSpec]) -> type[Population]:
    """The engine for these members' algorithm (a population holds one algorithm: `grouping.group_key`)."""
    if str(OmegaConf.select(specs[0].cfg, "algo._target_", default="")) == "dqnrun.algos.pqn.PQN":
        from dqnrun.population.pqn import PQNPopulation

        return PQNPopulation
    from dqnrun.population.engine import Population

    return Population


def run_population(specs: list[MemberSpec], sweep_dir: Path, threads: int | None, share: int,
                   name: str = "population") -> list[dict[str, Any]]:
    """Train one population in this process: signals stop every member at one step boundary (each saves its
    last.pt); SLURM's preemption signal is handed on to submitit once all have saved."""
    from dqnrun.run.session import StopFlag

    limit_threads(share)
    if threads is None:  # as a solo run: torch_threads (1 by default: measured fastest here), within the share
        threads = max(1, min(share, max(int(s.cfg.get("torch_threads", 1)) for s in specs)))
    progress = any(bool(s.cfg.log.get("progress", True)) for s in specs)
    stop = StopFlag().install()
    try:
        with routed(MemberLogs()) as router:
            results = population_class(specs)(specs, stop, router, aggregate_root=sweep_dir, progress=progress,
                                 threads=threads, name=name).run()
    finally:
        stop.uninstall()
    if stop.signum == signal.SIGUSR2:
        stop.chain()
    return results


def _via_submitit(calls: list[Unit], params: dict[str, Any], sweep_dir: Path) -> list[Any]:
    """Each unit as one submitit job (``cluster``: local | slurm | auto); its logs in ``<sweep dir>/.submitit``."""
    import submitit

    params = dict(params)
    cluster = params.pop("cluster", "local")
    folder = params.pop("folder", str(sweep_dir / ".submitit" / "%j"))
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    if params:
        executor.update_parameters(**params)
    state = Singleton.get_state()
    jobs = [executor.submit(c.remote, state) for c in calls]
    return [j.result() for j in jobs]


# --- what each job returns ----------------------------------------------------------------------------------
def job_return(job: JobSlot, members: list[MemberRecord], results: dict[int, dict[str, Any]],
               alone: dict[int, JobReturn], seeds: int) -> JobReturn:
    """A job's JobReturn: its objective; with seeds, the IQM of its seeds' objectives (NaN if one failed)."""
    if seeds == 1 and job.members[0] in alone:
        return alone[job.members[0]]
    values = []
    for i in job.members:
        value = (results.get(i) or {}).get("objective", {}) or {}
        v = value.get("value") if isinstance(value, dict) else None
        values.append(math.nan if v is None else float(v))
    value = math.nan if any(math.isnan(v) for v in values) else (values[0] if seeds == 1 else iqm(values))
    ret = JobReturn(overrides=list(job.overrides), cfg=members[job.members[0]].spec.cfg,
                    hydra_cfg=job.config, working_dir=os.getcwd(), task_name="train", status=JobStatus.COMPLETED)
    ret.return_value = value
    return ret


def console() -> None:
    """A console handler on the root logger (Hydra's job-logging format) where none is: the population's own lines
    and its members' warnings go there; each member's INFO lines go to its train.log."""
    root = logging.getLogger()
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in root.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
