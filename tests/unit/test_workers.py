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
        out = workers.run([lambda i=i: (i, os.getpid(), "torch._dynamo" in sys.modules,
                                        os.environ.get("OMP_NUM_THREADS")) for i in range(3)])
    finally:
        workers.close()
    assert [o[0] for o in out] == [0, 1, 2]  # in the order of the calls
    pids = {o[1] for o in out}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert all(o[2] for o in out)  # what a population imports, imported before its first call (`warm`)
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
