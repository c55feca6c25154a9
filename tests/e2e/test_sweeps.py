"""Sweeps through Hydra's launchers and the Optuna sweeper, against real launchers and real databases.

- a failing job is recorded and the others finish; the sweep exits non-zero saying "N of M jobs failed";
- joblib and submitit_local run real 2-job multiruns (Ray has its own environment: tests/test_ray.py);
- each parallel job gets its share of the cores;
- the Optuna preset runs; a killed Optuna sweep continues without repeating a finished trial (SQLite);
- two sweepers share one PostgreSQL study without running a trial twice or losing one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dqnrun.sweep import available_cores
from tests.conftest import run_cli, tb_dir

QUICK = ["env=cartpole", "total_steps=1200", "algo.learning_starts=400", "eval.every=600", "eval.episodes=2",
         "log.every=200", "log.progress=false", "replay.capacity=2000", "checkpoint.every=0"]


def results(job_dir: Path) -> dict:
    return json.loads((job_dir / "results.json").read_text())


def test_a_failing_job_is_recorded_and_the_other_jobs_finish(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    # lr=1e15 overflows the Q-values within a few updates: a non-finite loss, which stops a single run with
    # exit 3. Job 0 fails first; job 1 must still run.
    proc = run_cli(["train", "-m", "optimizer.lr=1e15,1e-3", *QUICK, f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "1 of 2 jobs failed" in proc.stderr
    assert str(sweep / "0" / "train.log") in proc.stderr
    failed, ok = results(sweep / "0"), results(sweep / "1")
    assert failed["status"] == "failed" and failed["stop_reason"] == "failed"
    assert "non-finite loss" in failed["error"]
    assert "non-finite loss" in (sweep / "0" / "train.log").read_text()
    assert ok["status"] == "completed" and ok["steps"] == 1200 and ok["objective"]["value"] is not None

    # ... and dqnrun report over it: the failed job is counted and listed, the other one summarized.
    rep = run_cli(["report", str(sweep)], tmp_path)
    assert rep.returncode == 0, rep.stderr
    assert "1 failed" in rep.stdout and "non-finite loss" in rep.stdout
    assert (sweep / "report.md").exists() and (sweep / "curves.png").stat().st_size > 10_000


def test_joblib_runs_jobs_in_parallel_with_a_share_of_the_cores_each(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli(["train", "-m", "seed=0,1", *QUICK, "torch_threads=8", "hydra/launcher=joblib",
                    "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    share = max(1, available_cores() // 2)
    pids = set()
    for job in ("0", "1"):
        r = results(sweep / job)
        assert r["status"] == "completed" and r["cpu_share"] == share
        assert r["torch_threads"] == min(8, share)  # torch_threads=8 is capped to the job's share
        pids.add(r["pid"])
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes


def test_submitit_local_runs_a_two_job_multirun(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli(["train", "-m", "seed=0,1", *QUICK, "hydra/launcher=submitit_local",
                    "hydra.launcher.timeout_min=5", f"hydra.sweep.dir={sweep}"], tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(results(sweep / j)["seed"] for j in ("0", "1")) == [0, 1]
    assert list((sweep / ".submitit").rglob("*_log.out"))


def test_every_job_logs_its_hyperparameters_for_tensorboards_hparams_tab(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    sweep = tmp_path / "sweep"
    proc = run_cli(["train", "-m", "optimizer.lr=1e-3,3e-3", *QUICK, f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for job, lr in (("0", 1e-3), ("1", 3e-3)):
        label = tb_dir(sweep / job)
        assert f"optimizer.lr={lr}" in label.name and "seed=0" in label.name  # the TensorBoard run's name
        acc = EventAccumulator(str(label))
        acc.Reload()
        content = acc.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        hparams = {k: v.number_value or v.string_value for k, v in start.session_start_info.hparams.items()}
        assert hparams["optimizer.lr"] == pytest.approx(lr) and hparams["env.id"] == "CartPole-v1"
        assert hparams["env"] == "cartpole" and "learner.gamma" not in hparams  # a group: its option; only overrides
        best = acc.Scalars("hparams/best_eval_return")[-1].value
        assert best == pytest.approx(results(sweep / job)["best_eval_return"])


def _optuna_args(sweep: Path, n_trials: int, *extra: str) -> list[str]:
    return ["train", "-m", "hparams_search=cartpole_optuna", f"hydra.sweep.dir={sweep}",
            f"hydra.sweeper.n_trials={n_trials}", "total_steps=1500", "algo.learning_starts=500",
            "eval.every=500", "eval.episodes=3", "replay.capacity=3000", "checkpoint.every=0", *extra]


def _study(sweep: Path, name: str = "cartpole", storage: str | None = None):  # noqa: ANN202
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=storage or f"sqlite:///{sweep / 'optuna.db'}")


def _counted(study) -> list:  # noqa: ANN001
    """The trials that use up the budget: not skipped (duplicate, surplus) nor left running by a dead sweeper."""
    gone = set(study.user_attrs.get("dqnrun_interrupted", []))
    return [t for t in study.get_trials() if "dqnrun_skip" not in t.user_attrs and t.number not in gone]


@pytest.mark.thorough  # make test-thorough: the default tier stays under ~10 min on 2 cores
def test_optuna_preset_runs_trials_with_distinct_parameters_and_finite_objectives(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli(_optuna_args(sweep, 3), tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stderr
    study = _study(sweep)
    trials = _counted(study)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 3
    for t in trials:
        r = results(sweep / str(t.number))  # run directories numbered by trial number
        assert r["objective"]["name"] == "auc" and t.value == pytest.approx(r["objective"]["value"])
        assert f"optimizer.lr={t.params['optimizer.lr']}" in r["overrides"]
    assert (sweep / "optimization_results.yaml").exists()
    best = max(trials, key=lambda t: t.value)
    assert f"best of 3 trials: objective {best.value:.4g} in trial {best.number}" in proc.stdout  # printed


def test_a_killed_optuna_sweep_continues_without_repeating_a_finished_trial(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    # One trial at a time in the sweeper's own process (basic launcher), so that killing it kills the trial.
    args = _optuna_args(sweep, 4, "hydra/launcher=basic", "hydra.sweeper.n_jobs=1", "total_steps=4000")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "dqnrun", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill it while trial 2 runs, after trials 0 and 1 finished
        done = [j for j in ("0", "1") if (sweep / j / "results.json").exists()
                and results(sweep / j)["status"] == "completed"]
        if len(done) == 2 and (sweep / "2" / "train.log").exists():
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the sweep did not reach trial 2")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {j: (sweep / j / "results.json").stat().st_mtime_ns for j in ("0", "1")}
    first = {t.number: dict(t.params) for t in _study(sweep).get_trials()}
    assert _study(sweep).get_trials()[2].state.name == "RUNNING"

    resumed = run_cli([a for a in args if not a.startswith("hydra.sweep.dir")] + [f"resume={sweep}"], tmp_path,
                      timeout=400)
    assert resumed.returncode == 0, resumed.stderr
    study = _study(sweep)
    trials = study.get_trials()
    assert trials[2].state.name == "FAIL" and study.user_attrs["dqnrun_interrupted"] == [2]
    counted = _counted(study)
    assert len(counted) == 4 and all(t.state.name == "COMPLETE" for t in counted)  # n_trials counts the study
    assert [t.number for t in counted][:2] == [0, 1]
    assert {j: (sweep / j / "results.json").stat().st_mtime_ns for j in ("0", "1")} == finished  # not rerun
    retried = [t for t in counted if t.number > 2 and t.params == first[2]]
    assert len(retried) == 1  # the interrupted trial ran again, under a new number
    assert len({tuple(sorted(t.params.items())) for t in counted}) == 4  # a resumed study explores new points
    for t in counted:
        assert results(sweep / str(t.number))["status"] == "completed"


# --- PostgreSQL: a real server started by the test ----------------------------------------------------
def _pg_bin() -> Path:
    """Debian's PostgreSQL server programs (any version), or DQNRUN_PG_BIN."""
    if os.environ.get("DQNRUN_PG_BIN"):
        return Path(os.environ["DQNRUN_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A PostgreSQL server in a temporary directory, run as the `postgres` user (initdb refuses root)."""
    pytest.importorskip("psycopg2")
    if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
        pytest.skip(f"PostgreSQL server programs not found in {PG_BIN} (apt-get install postgresql; .ci/run does)")
    root = os.geteuid() == 0
    if root and shutil.which("su") is None:
        pytest.skip("running as root without `su`: cannot start PostgreSQL as an unprivileged user")
    import tempfile

    # Not under pytest's tmp dir: its parents are private to root, and the server runs as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="dqnrun-pg-"))
    base.chmod(0o777)
    data = base / "data"
    port = _free_port()

    def as_pg(cmd: str) -> subprocess.CompletedProcess[str]:
        full = ["su", "postgres", "-c", cmd] if root else ["bash", "-c", cmd]
        return subprocess.run(full, capture_output=True, text=True, timeout=120)

    init = as_pg(f"{PG_BIN / 'initdb'} -D {data} -A trust -U postgres")
    if init.returncode != 0:
        pytest.skip(f"initdb failed: {init.stderr.strip()[:200]}")
    start = as_pg(f"{PG_BIN / 'pg_ctl'} -D {data} -l {data}/log -w -o '-p {port} -k /tmp "
                  "-c listen_addresses=127.0.0.1' start")
    assert start.returncode == 0, start.stderr
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        as_pg(f"{PG_BIN / 'pg_ctl'} -D {data} -m immediate stop")
        shutil.rmtree(base, ignore_errors=True)


def test_two_sweepers_share_one_postgresql_study_without_repeating_or_losing_a_trial(
        postgres: str, tmp_path: Path) -> None:
    import psycopg2

    conn = psycopg2.connect(f"{postgres}/postgres")
    conn.autocommit = True
    conn.cursor().execute("CREATE DATABASE dqnrun_shared")  # fresh: the two sweepers race on the schema
    conn.close()
    url = f"{postgres}/dqnrun_shared"
    sweep = tmp_path / "sweep"
    args = _optuna_args(sweep, 6, "hydra/launcher=basic", "hydra.sweeper.n_jobs=1", f"hydra.sweeper.storage={url}",
                        "hydra.sweeper.study_name=shared")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    procs = [subprocess.Popen([sys.executable, "-m", "dqnrun", *args], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    study = _study(sweep, "shared", url)
    counted = _counted(study)
    assert len(counted) == 6 and all(t.state.name == "COMPLETE" for t in counted)
    numbers = [t.number for t in counted]
    assert len(set(numbers)) == 6
    workers = {t.user_attrs["dqnrun_worker"]["pid"] for t in counted}
    assert len(workers) == 2  # both sweepers ran trials
    for t in counted:  # each trial ran exactly once, in its own directory
        r = results(sweep / str(t.number))
        assert r["status"] == "completed" and t.value == pytest.approx(r["objective"]["value"])
    skipped = [t for t in study.get_trials() if "dqnrun_skip" in t.user_attrs]
    assert all(not (sweep / str(t.number) / "results.json").exists() for t in skipped)
