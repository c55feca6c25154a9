"""The population launcher's worker processes (dqnrun.population.workers): started at once and warm, thread caps
in their environment, killed at the end."""

from __future__ import annotations

import os
import sys
import time

from dqnrun.population.workers import THREAD_VARS, Workers


def test_workers_start_warm_run_in_order_and_are_killed(monkeypatch) -> None:
    for name in THREAD_VARS:
        monkeypatch.delenv(name, raising=False)
    workers = Workers(2, cores=4)
    try:
        out = workers.run([lambda i=i: (i, os.getpid(), "dqnrun.population.engine" in sys.modules,
                                        os.environ.get("OMP_NUM_THREADS"), "torch._dynamo" in sys.modules)
                           for i in range(3)])
    finally:
        workers.close()
    assert [o[0] for o in out] == [0, 1, 2]  # in the order of the calls
    pids = {o[1] for o in out}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert all(o[2] for o in out)  # what a population imports, imported before its first call (`warm`)
    assert not any(o[4] for o in out)  # but not torch's dynamo (1 s here), which a population never needs
    assert all(o[3] == "2" for o in out)  # 4 cores, 2 workers: 2 threads each
    deadline = time.time() + 10
    while time.time() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
        time.sleep(0.05)
    assert not any(os.path.exists(f"/proc/{p}") for p in pids)  # killed and reaped


def test_a_thread_cap_the_user_set_is_kept(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    workers = Workers(2, cores=2)
    try:
        assert workers.run([lambda: os.environ.get("OMP_NUM_THREADS")]) == ["3"]
    finally:
        workers.close()


def test_a_population_sweeps_workers_start_early_are_kept_between_launches_and_released(tmp_path) -> None:
    from dqnrun.population import workers as W

    W.start_early(["env=cartpole", "hydra/launcher=joblib"], 16, 2)  # another launcher: nothing started
    assert W._held is None
    W.start_early(["hydra/launcher=population", "hydra.launcher.n_jobs=1"], 16, 2)  # one worker: none
    assert W._held is None
    try:
        W.start_early(["env=cartpole", "hydra/launcher=population"], 16, 2)  # n_jobs=-1 on 2 cores: 2 workers
        early = W._held
        assert early is not None and early.n == 2
        # the launches take them, and keep them
        assert W.workers_for(2, 2, tmp_path) is early and W.workers_for(2, 2, tmp_path) is early
        pid = early.run([os.getpid])[0]
        other = W.workers_for(3, 2, tmp_path)  # another count: the held ones go, fresh ones come
        assert other is not early and other.n == 3
        deadline = time.time() + 10
        while time.time() < deadline and os.path.exists(f"/proc/{pid}"):
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{pid}")
    finally:
        W.release()
    assert W._held is None
    W.start_early(["hydra/launcher=population", "hydra.launcher.seeds_per_job=2"], 1, 2)  # 1 job x 2 seeds: 2
    try:
        assert W._held is not None and W._held.n == 2
    finally:
        W.release()


def test_a_failed_early_check_removes_what_the_sweeps_start_wrote_and_nothing_else(tmp_path, monkeypatch) -> None:
    """The preflight's checks that need torch run in the workers while the sweep starts (Hydra's sweeper makes its
    directory and multirun.yaml); when one fails, that goes, even where the default directory's second moved on
    between the preflight and the sweeper, and another sweep's directory beside it stays."""
    import pytest

    from dqnrun.config.preflight import preflight
    from dqnrun.errors import UsageError
    from dqnrun.population import workers as W

    monkeypatch.chdir(tmp_path)
    checked = preflight("train", ["env=cartpole", "seed=0,1", "hydra.sweep.dir=outputs/multirun/day/10-00-00"],
                        multirun=True, build=False)
    assert checked.sweep_root == tmp_path and len(checked.built) == 2
    made = tmp_path / "outputs" / "multirun" / "day" / "10-00-01"  # the sweeper's second
    made.mkdir(parents=True)
    (made / "multirun.yaml").write_text("{}")
    checked.undo_sweep_dir(made)
    assert not (tmp_path / "outputs").exists()

    other = tmp_path / "outputs" / "multirun" / "day" / "09-59-59"  # another sweep, started meanwhile
    (other / "0").mkdir(parents=True)
    made.mkdir(parents=True)
    (made / "multirun.yaml").write_text("{}")

    def bad() -> None:
        raise UsageError("network: cannot build")

    workers = W.Workers(1, cores=1)
    W._held = workers
    try:
        assert W.check_early(bad, checked.undo_sweep_dir)
        with pytest.raises(UsageError, match="cannot build"):
            W.settle_checks(made)
        W.settle_checks(made)  # settled: nothing waits any more
    finally:
        W.release()
    assert not made.exists() and (other / "0").is_dir()
    assert not W.check_early(bad, checked.undo_sweep_dir)  # no workers held: the caller checks itself
