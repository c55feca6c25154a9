"""hydra/launcher=population end to end: members are real runs, a member is its solo twin, failures stay inside
their member, seeds per job, exact resume, the aggregate TensorBoard runs, submitit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TINY, run_cli

POP = ["hydra/launcher=population", "env=cartpole"]
SHORT = [*(a for a in TINY if a.split("=")[0] not in ("total_steps", "eval.every", "checkpoint.every")),
         "total_steps=800", "eval.every=400", "checkpoint.every=400"]  # learning starts at 400


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def replay_rows(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.replay.pt", weights_only=False)["replay"]


def test_a_population_sweep_trains_real_runs_that_equal_their_solo_twins(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    # C51 members: the batched autograd path (`dqnrun.population.functional`); an RMSprop job stands alone
    proc = run_cli(["train", "-m", "seed=0,1", "optimizer=adam,rmsprop", "learner.distributional=c51", *POP, *SHORT,
                    "hydra.launcher.autograd=true", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "dqnrun train: 4 jobs in 1 population and 2 jobs on their own", lines[:4]
    assert lines[1] == "  population 1: 2 members (jobs 0, 2)"
    assert "job 1 runs on its own: optimizer RMSprop: a population steps Adam" in lines[2], lines[2]
    assert "all 4 jobs finished" in proc.stdout
    assert "leaked" not in proc.stderr  # the workers it killed at the end held no semaphore (dqnrun.population.workers)
    for job in ("0", "1", "2", "3"):  # members and ordinary jobs alike: a solo sweep job's directory
        d = sweep / job
        for f in (".hydra/config.yaml", ".hydra/overrides.yaml", "checkpoints/last.pt", "checkpoints/best.pt",
                  "train.log"):
            assert (d / f).exists(), d / f
        assert list((d / "tb").iterdir())
        assert results(d)["status"] == "completed" and results(d)["steps"] == 800
    assert sorted(p.parent.name for p in sweep.rglob("results.json")) == ["0", "1", "2", "3"]
    assert "one of 2 members of population 1" in (sweep / "2" / "train.log").read_text()

    # the member of seed 1 (job 2) against its solo twin: the same env seeds, exploration and replay indices,
    # so the same actions and observations, stored row for row; the first rows are before learning starts
    solo = tmp_path / "solo"
    proc = run_cli(["train", "seed=1", "env=cartpole", "learner.distributional=c51", *SHORT,
                    f"hydra.run.dir={solo}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    member, twin = replay_rows(sweep / "2"), replay_rows(solo)
    n = 400 // 4 * 4 - 8  # rows stored before learning starts (4 envs; the 3-step window holds some back)
    assert torch.equal(member["action"][:n], twin["action"][:n])
    assert torch.equal(member["obs"][:n], twin["obs"][:n])
    assert results(sweep / "2")["episodes"] > 0

    # eval, export, load and report take a member as they take any run
    ev = run_cli(["eval", f"ckpt={sweep / '2'}", "episodes=2"], tmp_path)
    assert ev.returncode == 0 and "mean return" in ev.stdout, ev.stderr
    ex = run_cli(["export", f"ckpt={sweep / '2'}", f"out={tmp_path / 'm.pt'}"], tmp_path)
    assert ex.returncode == 0 and (tmp_path / "m.pt").exists(), ex.stderr
    import numpy as np

    import dqnrun

    agent = dqnrun.load(sweep / "2")
    assert agent.act(np.zeros((3, 4), np.float32)).shape == (3,)
    rep = run_cli(["report", str(sweep)], tmp_path)
    assert rep.returncode == 0, rep.stderr
    assert "rmsprop" in rep.stdout and (sweep / "report.md").exists()
    # a member's SPS is its steps over the population's wall clock: the record and the report say so
    assert results(sweep / "2")["population_members"] == 2 and results(sweep / "1")["population_members"] is None
    assert "trained as population members (up to 2 per population)" in " ".join(rep.stdout.split())


def test_a_member_whose_loss_goes_non_finite_fails_alone(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli(["train", "-m", "optimizer.lr=1e15,1e-3,3e-4", *POP, *TINY, "checkpoint.every=0",
                    "hydra.launcher.n_jobs=1", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "dqnrun train: 3 jobs in 1 population" in proc.stdout  # one population: lr differs per member
    assert "1 of 3 jobs failed" in proc.stderr
    failed = results(sweep / "0")
    assert failed["status"] == "failed" and failed["error"].startswith("non-finite loss or Q-value")
    assert "non-finite loss" in (sweep / "0" / "train.log").read_text()
    for job in ("1", "2"):
        r = results(sweep / job)
        assert r["status"] == "completed" and r["steps"] == 1200 and r["objective"]["value"] is not None


def _ckpt_tensors(path: Path) -> dict:
    ckpt = torch.load(path, weights_only=False)

    def flat(x, prefix=""):  # noqa: ANN001, ANN202
        if isinstance(x, dict):
            for k, v in x.items():
                yield from flat(v, f"{prefix}.{k}")
        elif isinstance(x, list | tuple):
            for i, v in enumerate(x):
                yield from flat(v, f"{prefix}[{i}]")
        else:
            yield prefix, x

    return dict(flat({k: ckpt[k] for k in ("policy", "algo_state", "step")}))


def _same_bits(a: dict, b: dict) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not (torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k])]


QUICK = [*POP, "algo.learning_starts=400", "eval.every=600", "eval.episodes=2", "log.every=200",
         "log.progress=false", "replay.capacity=2000", "checkpoint.every=0"]


def test_seeds_per_job_and_an_interrupted_population_resumes_bit_for_bit(tmp_path: Path) -> None:
    grid = ["seed=3", "optimizer.lr=1e-3,3e-3", "hydra.launcher.seeds_per_job=2", "hydra.launcher.n_jobs=1",
            "total_steps=1600", "eval.every=400",
            *(a for a in QUICK if not a.startswith("eval.every="))]
    cut, whole = tmp_path / "cut", tmp_path / "whole"
    # SIGTERM at env step 800: every member saves its last.pt at the same step boundary; the sweep says how to go on
    proc = run_cli(["train", "-m", *grid, f"hydra.sweep.dir={cut}"], tmp_path,
                   env={"DQNRUN_TEST_SIGNAL_AT_STEP": "800"})
    assert proc.returncode == 128 + 15, proc.stderr
    assert proc.stdout.splitlines()[0] == "dqnrun train: 2 jobs x 2 seeds = 4 runs in 1 population"
    assert f"resume={cut}" in proc.stderr
    members = [cut / j / k for j in ("0", "1") for k in ("0", "1")]  # <sweep dir>/<job>/<k>/
    assert [results(d)["seed"] for d in members] == [3, 4, 3, 4]
    assert all(results(d)["status"] == "interrupted" and results(d)["steps"] == 800 for d in members)
    proc = run_cli(["train", "-m", *grid, f"resume={cut}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "all 4 jobs finished" in proc.stdout  # the closing summary counts the seed runs
    proc = run_cli(["train", "-m", *grid, f"hydra.sweep.dir={whole}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for d in members:
        r = results(d)
        assert r["status"] == "completed" and r["resumed_from_step"] == 800
        ours, theirs = _ckpt_tensors(d / "checkpoints" / "last.pt"), _ckpt_tensors(whole / d.relative_to(cut) /
                                                                                   "checkpoints" / "last.pt")
        assert ours[".step"] == 1600 and not _same_bits(ours, theirs), d

    # the aggregate TensorBoard run of each setting: IQM (of 2 seeds: their mean) and a CI of the eval returns at
    # every evaluation, each step once (the resumed population purged what followed its checkpoint)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    boards = sorted(p.name for p in (cut / "aggregate" / "tb").iterdir())
    assert boards == ["optimizer.lr:0.001", "optimizer.lr:0.003"]
    for job, board in zip(("0", "1"), boards, strict=True):
        acc = EventAccumulator(str(cut / "aggregate" / "tb" / board))
        acc.Reload()
        evals = [dict(results(cut / job / k)["eval_history"]) for k in ("0", "1")]
        mid = acc.Scalars("aggregate/eval_return_iqm")
        assert [e.step for e in mid] == [400, 800, 1200, 1600]
        low, high = acc.Scalars("aggregate/eval_return_ci_low"), acc.Scalars("aggregate/eval_return_ci_high")
        for e, lo, hi in zip(mid, low, high, strict=True):
            seeds = [ev[e.step] for ev in evals]
            assert e.value == pytest.approx(sum(seeds) / 2) and lo.value <= e.value <= hi.value
            assert lo.value >= min(seeds) - 1e-6 and hi.value <= max(seeds) + 1e-6
        assert {s.value for s in acc.Scalars("aggregate/members")} == {2.0}
        assert acc.Scalars("aggregate/episodic_return_iqm")


@pytest.mark.slow
def test_each_optuna_trial_is_scored_on_its_seeds_iqm(tmp_path: Path) -> None:
    import sqlite3

    sweep = tmp_path / "sweep"
    proc = run_cli(["train", "-m", "hparams_search=cartpole_optuna", *QUICK, "hydra.launcher.seeds_per_job=4",
                    "hydra.sweeper.n_trials=2", "total_steps=1200", f"hydra.sweep.dir={sweep}"], tmp_path,
                   timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "2 jobs x 4 seeds = 8 runs" in proc.stdout
    with sqlite3.connect(sweep / "optuna.db") as db:
        told = dict(db.execute("select t.number, v.value from trials t join trial_values v on v.trial_id = "
                               "t.trial_id").fetchall())
    assert sorted(told) == [0, 1]
    for trial, value in told.items():
        seeds = sorted(results(sweep / str(trial) / str(k))["objective"]["value"] for k in range(4))
        assert value == pytest.approx((seeds[1] + seeds[2]) / 2)  # 4 seeds: drop the lowest and the highest


@pytest.mark.slow
def test_a_grid_population_run_3000_plus_3000_steps_equals_one_of_6000(tmp_path: Path) -> None:
    grid = ["seed=0,1", "optimizer.lr=1e-3,3e-3", "eval.every=2000", "log.every=1000", "log.progress=false",
            "checkpoint.every=0", *POP]
    cut, whole = tmp_path / "cut", tmp_path / "whole"
    assert run_cli(["train", "-m", *grid, "total_steps=3000", f"hydra.sweep.dir={cut}"], tmp_path,
                   timeout=600).returncode == 0
    assert run_cli(["train", "-m", *grid, "total_steps=6000", f"resume={cut}"], tmp_path,
                   timeout=600).returncode == 0
    assert run_cli(["train", "-m", *grid, "total_steps=6000", f"hydra.sweep.dir={whole}"], tmp_path,
                   timeout=600).returncode == 0
    for job in ("0", "1", "2", "3"):
        ours = _ckpt_tensors(cut / job / "checkpoints" / "last.pt")
        assert ours[".step"] == 6000 and not _same_bits(ours, _ckpt_tensors(whole / job / "checkpoints" / "last.pt"))


@pytest.mark.slow  # ~17 s: submitit starts a process per population
def test_two_populations_run_as_two_submitit_local_jobs(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli(["train", "-m", "seed=0,1,2,3", *QUICK, "total_steps=800", "hydra.launcher.max_members=2",
                    "hydra.launcher.submitit={cluster:local,timeout_min:5}", f"hydra.sweep.dir={sweep}"], tmp_path,
                   timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:3] == ["dqnrun train: 4 jobs in 2 populations, each a submitit job (local)",
                                            "  population 1: 2 members (jobs 0-1)",
                                            "  population 2: 2 members (jobs 2-3)"]
    pids = [results(sweep / j)["pid"] for j in ("0", "1", "2", "3")]
    assert pids[0] == pids[1] != pids[2] == pids[3]  # one process per population, each a submitit job
    assert len(list((sweep / ".submitit").rglob("*_log.out"))) == 2
    assert all(results(sweep / j)["status"] == "completed" for j in ("0", "1", "2", "3"))


@pytest.mark.slow
def test_a_sigterm_to_the_sweep_reaches_populations_in_worker_processes(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    sweep = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "dqnrun", "train", "-m", "seed=range(8)", *QUICK,
                             "total_steps=50000", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"],
                            cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not all((sweep / str(j) / "results.json").exists() for j in range(8)):
        time.sleep(0.5)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert out.splitlines()[0] == "dqnrun train: 8 jobs in 2 populations, 2 at a time"
    for j in range(8):  # every member of both populations saved where it stopped
        r = results(sweep / str(j))
        assert r["status"] == "interrupted" and 0 < r["steps"] < 50000
        assert (sweep / str(j) / "checkpoints" / "last.pt").exists()


@pytest.mark.thorough
def test_a_minatar_population_member_trains_as_its_solo_twin(tmp_path: Path) -> None:
    """MinAtar's network on the stacked update (its convolution batched over members): a member's whole run, 1,250
    updates, lands where its solo twin's does."""
    short = ["env=minatar_breakout", "total_steps=6000", "algo.learning_starts=1000", "eval.every=3000",
             "eval.episodes=4", "log.progress=false"]
    sweep = tmp_path / "sweep"
    proc = run_cli(["train", "-m", "seed=0,1,2", *short, "hydra/launcher=population", "hydra.launcher.n_jobs=1",
                    f"hydra.sweep.dir={sweep}"], tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "dqnrun train: 3 jobs in 1 population", proc.stdout
    solo = tmp_path / "solo"
    proc = run_cli(["train", "seed=1", *short, f"hydra.run.dir={solo}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    member, twin = results(sweep / "1"), results(solo)
    for key in ("steps", "updates", "episodes", "eval_history"):
        assert member[key] == twin[key], key
    a, b = (torch.load(d / "checkpoints" / "last.pt", weights_only=True)["policy"] for d in (sweep / "1", solo))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


@pytest.mark.thorough
def test_a_pong_population_member_trains_as_its_solo_twin(tmp_path: Path) -> None:
    """Nature's CNN over a replay of frames, on the batched autograd path (`hydra.launcher.autograd=true`): a
    member's 150 updates land where its solo twin's do."""
    short = ["env=pong", "total_steps=1200", "algo.learning_starts=600", "replay.capacity=2000", "eval.every=1200",
             "eval.episodes=1", "eval.max_envs=1", "env.kwargs.max_num_frames_per_episode=400", "log.progress=false"]
    sweep = tmp_path / "sweep"
    proc = run_cli(["train", "-m", "seed=0,1", *short, "hydra/launcher=population", "hydra.launcher.n_jobs=1",
                    "hydra.launcher.autograd=true", f"hydra.sweep.dir={sweep}"], tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "dqnrun train: 2 jobs in 1 population", proc.stdout
    solo = tmp_path / "solo"
    proc = run_cli(["train", "seed=1", *short, f"hydra.run.dir={solo}"], tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    member, twin = results(sweep / "1"), results(solo)
    for key in ("steps", "updates", "eval_history"):
        assert member[key] == twin[key], key
    assert member["updates"] == 150
    a = torch.load(sweep / "1" / "checkpoints" / "last.pt", weights_only=False)["policy"]
    b = torch.load(solo / "checkpoints" / "last.pt", weights_only=False)["policy"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=0)


@pytest.mark.thorough
def test_a_pong_population_cut_by_sigterm_keeps_every_members_frames_through_its_resume(tmp_path: Path) -> None:
    """Atari members share one frame tensor (`StackedFrames`). A population stopped by SIGTERM after learning
    started saves each member's own rows and frames with its checkpoint; resumed (Atari resumes with new episodes,
    docs/reliability.md), each member's buffer still holds exactly those rows and frames under the ones it added
    since, and the members learn on."""
    short = ["env=pong", "seed=0,1", "total_steps=1000", "algo.learning_starts=400", "replay.capacity=2000",
             "eval.every=1000", "eval.episodes=1", "eval.max_envs=1", "env.kwargs.max_num_frames_per_episode=300",
             "log.progress=false", "checkpoint.every=0", "hydra/launcher=population", "hydra.launcher.n_jobs=1",
             "hydra.launcher.autograd=true"]
    cut = tmp_path / "cut"
    proc = run_cli(["train", "-m", *short, f"hydra.sweep.dir={cut}"], tmp_path, timeout=300,
                   env={"DQNRUN_TEST_SIGNAL_AT_STEP": "700"})
    assert proc.returncode == 128 + 15, proc.stderr
    saved = {job: replay_rows(cut / job) for job in ("0", "1")}
    assert run_cli(["train", "-m", *short, f"resume={cut}"], tmp_path, timeout=300).returncode == 0
    for job in ("0", "1"):
        before, after = saved[job], replay_rows(cut / job)
        n, m = int(before["size"]), int(before["frame_head"])
        assert 700 <= n < int(after["size"]) <= 1000 and m < int(after["frame_head"])
        assert torch.equal(after["frames"][:m], before["frames"])  # nothing wrapped: every frame in its slot
        for name in ("obs_refs", "next_refs", "action", "reward", "terminated"):
            assert torch.equal(after[name][:n], before[name]), (job, name)
        r = results(cut / job)
        assert r["status"] == "completed" and r["updates"] == 150 and 700 <= r["resumed_from_step"] < 1000
    a, b = (torch.load(cut / job / "checkpoints" / "last.pt", weights_only=True)["policy"] for job in ("0", "1"))
    assert not torch.equal(a["net.2.weight"], b["net.2.weight"])  # each member its own network


@pytest.mark.parametrize("algo", [pytest.param("dqn", marks=pytest.mark.slow), "pqn"])  # pqn: the more sensitive
def test_a_member_failing_as_it_acts_leaves_the_others_acting_on_their_own_rows(tmp_path: Path, algo: str) -> None:
    """A member that fails before its actions go out (an injected I/O error at its `act`, after learning started)
    leaves the batch mid-step; the members after it still act on their own Q-values: each ends bit for bit where
    it ends in a population where nobody failed."""
    if algo == "dqn":  # 8 members x 4 envs per loop step: act #1202 is member 1 at env step 600
        args = ["env=cartpole", *TINY, "schedule.decay_steps=600", "checkpoint.every=0"]
        fault = "act#1202@enospc"
    else:  # PQN: 4 envs x 128 steps a rollout; act #602 is member 1 at env step 300, in the first rollout
        args = ["algo=pqn", "env=cartpole", "total_steps=1024", "eval.every=512", "eval.episodes=2",
                "log.progress=false", "checkpoint.every=0"]
        fault = "act#602@enospc"
    grid = ["train", "-m", "seed=range(8)", *args, "hydra/launcher=population", "hydra.launcher.n_jobs=1"]
    broken, clean = tmp_path / "broken", tmp_path / "clean"
    proc = run_cli([*grid, f"hydra.sweep.dir={broken}"], tmp_path, env={"DQNRUN_TEST_FAULT": fault})
    assert proc.returncode == 1 and "1 of 8 jobs failed" in proc.stderr, proc.stderr
    assert results(broken / "1")["status"] == "failed"
    assert run_cli([*grid, f"hydra.sweep.dir={clean}"], tmp_path).returncode == 0
    for job in ("0", "2", "3", "4", "5", "6", "7"):
        assert results(broken / job)["eval_history"] == results(clean / job)["eval_history"], job
        ours, theirs = (_ckpt_tensors(d / job / "checkpoints" / "last.pt") for d in (broken, clean))
        if algo == "dqn":  # the stacked update rounds alike over 7 members and over 8
            assert not _same_bits(ours, theirs), job
            continue
        worst = max(float((ours[k] - theirs[k]).abs().max()) for k in ours if isinstance(ours[k], torch.Tensor)
                    and ours[k].is_floating_point())
        assert worst < 1e-4, (job, worst)  # PQN's vmapped products over 7 members round differently from over 8


@pytest.mark.parametrize("algo", [pytest.param("dqn", marks=pytest.mark.slow), "pqn"])
def test_a_failing_batched_update_records_every_member_in_it_as_failed(tmp_path: Path, algo: str) -> None:
    """What no one member owns (the batched update raising: CUDA out of memory, say) fails every member in it, each
    recorded as a failed solo run is, with the error; none is left reading "running"."""
    args = ["env=cartpole", *TINY] if algo == "dqn" else ["algo=pqn", "env=cartpole", "total_steps=1024",
                                                          "eval.every=512", "log.progress=false"]
    sweep = tmp_path / "sweep"
    proc = run_cli(["train", "-m", "seed=0,1", *args, "hydra/launcher=population", "hydra.launcher.n_jobs=1",
                    f"hydra.sweep.dir={sweep}"], tmp_path, env={"DQNRUN_TEST_FAULT": "learn@enospc"})
    assert proc.returncode == 1 and "2 of 2 jobs failed" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    for job in ("0", "1"):
        r = results(sweep / job)
        assert r["status"] == "failed" and "No space left on device" in r["error"], r


def test_a_q_table_population_equals_its_solo_twins_and_resumes_bit_for_bit(tmp_path: Path) -> None:
    """``network=tabular`` (FrozenLake's preset: SGD, ``replay=latest``, batches of different widths per member):
    each member's last.pt equals its solo run's bit for bit, and a population cut by SIGTERM and resumed equals one
    run straight through."""
    grid = ["env=frozenlake", "seed=0,1", "optimizer.lr=0.05,0.2", "total_steps=2400", "eval.every=1200",
            "eval.episodes=20", "log.every=600", "log.progress=false", "checkpoint.every=0"]
    pop = [*grid, "hydra/launcher=population", "hydra.launcher.n_jobs=1"]
    whole, cut, solo = tmp_path / "whole", tmp_path / "cut", tmp_path / "solo"
    proc = run_cli(["train", "-m", *pop, f"hydra.sweep.dir={whole}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:2] == ["dqnrun train: 4 jobs in 1 population",
                                            "  population 1: 4 members (jobs 0-3)"]
    assert run_cli(["train", "-m", *grid, f"hydra.sweep.dir={solo}"], tmp_path).returncode == 0
    proc = run_cli(["train", "-m", *pop, f"hydra.sweep.dir={cut}"], tmp_path,
                   env={"DQNRUN_TEST_SIGNAL_AT_STEP": "1000"})
    assert proc.returncode == 128 + 15, proc.stderr
    assert run_cli(["train", "-m", *pop, f"resume={cut}"], tmp_path).returncode == 0
    for job in ("0", "1", "2", "3"):
        ours = _ckpt_tensors(whole / job / "checkpoints" / "last.pt")
        assert ours[".step"] == 2400 and ours[".algo_state.updates"] == 300
        assert not _same_bits(ours, _ckpt_tensors(solo / job / "checkpoints" / "last.pt")), job
        assert not _same_bits(ours, _ckpt_tensors(cut / job / "checkpoints" / "last.pt")), job
        assert results(whole / job)["eval_history"] == results(solo / job)["eval_history"]
        assert results(cut / job)["resumed_from_step"] == 1000
    ev = run_cli(["eval", f"ckpt={whole / '3'}", "episodes=5"], tmp_path)
    assert ev.returncode == 0 and "mean return" in ev.stdout, ev.stderr
    import dqnrun

    assert dqnrun.load(whole / "3").q_values(np.arange(16)).shape == (16, 4)


def test_noisy_members_draw_their_solo_noise_and_resume_bit_for_bit(tmp_path: Path) -> None:
    """NoisyNet members (``network=noisy_mlp``, the batched autograd path): each draws its noise from its own
    torch stream, so it ends where its solo run ends (its stream in last.pt bit for bit, its weights to rounding),
    and a population cut by SIGTERM and resumed ends bit for bit where one run straight through does."""
    grid = ["seed=0,1", "network=noisy_mlp", "schedule.start=0", "schedule.end=0", *SHORT]
    pop = [*grid, *POP, "hydra.launcher.autograd=true", "hydra.launcher.n_jobs=1"]
    whole, cut, solo = tmp_path / "whole", tmp_path / "cut", tmp_path / "solo"
    proc = run_cli(["train", "-m", *pop, f"hydra.sweep.dir={whole}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1] == "  population 1: 2 members (jobs 0-1)", proc.stdout
    assert run_cli(["train", "-m", *grid, "env=cartpole", f"hydra.sweep.dir={solo}"], tmp_path).returncode == 0
    proc = run_cli(["train", "-m", *pop, f"hydra.sweep.dir={cut}"], tmp_path, env={"DQNRUN_TEST_SIGNAL_AT_STEP": "600"})
    assert proc.returncode == 128 + 15, proc.stderr
    assert run_cli(["train", "-m", *pop, f"resume={cut}"], tmp_path).returncode == 0
    for job in ("0", "1"):
        ours = torch.load(whole / job / "checkpoints" / "last.pt", weights_only=False)
        theirs = torch.load(solo / job / "checkpoints" / "last.pt", weights_only=False)
        assert ours["step"] == 800 and ours["algo_state"]["updates"] == theirs["algo_state"]["updates"] > 50
        assert torch.equal(ours["rng"]["torch"], theirs["rng"]["torch"])  # as many draws, from its own stream
        for name, value in theirs["policy"].items():
            torch.testing.assert_close(ours["policy"][name], value, atol=1e-4, rtol=0, msg=name)
        assert results(whole / job)["eval_history"] == results(solo / job)["eval_history"]
        tensors = _ckpt_tensors(whole / job / "checkpoints" / "last.pt")
        assert not _same_bits(tensors, _ckpt_tensors(cut / job / "checkpoints" / "last.pt")), job
        assert torch.equal(ours["rng"]["torch"], torch.load(cut / job / "checkpoints" / "last.pt",
                                                            weights_only=False)["rng"]["torch"])


def test_a_kill_between_two_members_saves_resumes_each_member_bit_for_bit(tmp_path: Path) -> None:
    """SIGKILL after the first member's step-1000 last.pt and before the second member's: one member resumes from
    step 1000, the other from 500, side by side (one finishes first and leaves the batch), and each ends bit for bit
    where it ends in a population never interrupted."""
    grid = ["seed=4,5", "total_steps=2000", "algo.learning_starts=300", "eval.every=500", "eval.episodes=3",
            "checkpoint.every=500", "log.every=100", "log.progress=false", "replay.capacity=3000", *POP,
            "hydra.launcher.n_jobs=1"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert run_cli(["train", "-m", *grid, f"hydra.sweep.dir={whole}"], tmp_path).returncode == 0
    killed = run_cli(["train", "-m", *grid, f"hydra.sweep.dir={cut}"], tmp_path,
                     env={"DQNRUN_TEST_FAULT": "last.pt:replaced#3"})  # members save in slot order: 0, 1, 0
    assert killed.returncode == -9, killed.stderr
    assert [results(cut / j)["steps"] for j in ("0", "1")] == [1000, 500]
    proc = run_cli(["train", "-m", *grid, f"resume={cut}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for job, start in (("0", 1000), ("1", 500)):
        r = results(cut / job)
        assert r["status"] == "completed" and r["resumed_from_step"] == start
        ours = _ckpt_tensors(cut / job / "checkpoints" / "last.pt")
        assert ours[".step"] == 2000 and not _same_bits(ours, _ckpt_tensors(whole / job / "checkpoints" / "last.pt"))


def test_bad_input_to_a_population_sweep_is_one_line_after_its_early_workers_are_gone(tmp_path: Path) -> None:
    """The command line starts a population sweep's workers before its preflight (dqnrun.population.workers); bad
    input still gets its one line, no directory, and nothing else on stderr (no worker left to report)."""
    sweep = tmp_path / "sweep"
    proc = run_cli(["train", "-m", "seed=0,1,2,3", "network.hiden=[8]", *POP, f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "did you mean network.hidden" in proc.stderr, proc.stderr
    assert not sweep.exists()


PROBE = '''import atexit, os, sys
_command = "train" in sys.argv  # the command line (its workers, killed at the end, write nothing)
def _probe():
    with open(os.environ["DQNRUN_TEST_PROBE"], "a") as f:
        f.write(f"{_command} {'torch' in sys.modules}\\n")
atexit.register(_probe)
'''


def test_a_population_sweeps_command_line_never_loads_torch_and_its_workers_check_the_network(
        tmp_path: Path) -> None:
    """Side by side, torch loads only in the workers: they check what needs it (the network fits the env) while
    the command line composes (dqnrun.config.preflight.check_built); a network that does not fit is still one line,
    exit 2, and no directory, the sweep's and its parents' included."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(PROBE)
    probe = tmp_path / "probe.txt"
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "DQNRUN_TEST_PROBE": str(probe)}
    sweep = tmp_path / "sweep"
    proc = run_cli(["train", "-m", "seed=0,1", *POP, *SHORT, "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"],
                   tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert all(results(sweep / j)["status"] == "completed" for j in ("0", "1"))
    assert probe.read_text().split("\n").count("True False") == 1, probe.read_text()  # the command line: no torch

    for where in ([f"hydra.sweep.dir={tmp_path / 'new' / 'sweep'}"], []):  # a given sweep dir, the default one
        proc = run_cli(["train", "-m", "seed=0,1", "network=nature_cnn", *POP, *SHORT, "hydra.launcher.n_jobs=2",
                        *where], tmp_path, env=env)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith("dqnrun train: error: network: cannot build dqnrun.networks.QNetwork: "
                                      "conv=nature needs image observations"), proc.stderr
        assert not (tmp_path / "new").exists() and not (tmp_path / "outputs").exists()
    assert probe.read_text().split("\n").count("True False") == 3  # its workers checked it: still no torch here


def test_a_one_job_population_sweep_says_job_not_jobs(tmp_path: Path) -> None:
    proc = run_cli(["train", "-m", "seed=0", *POP, *SHORT, f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:2] == ["dqnrun train: 1 job in 1 population", "  population 1: 1 member (job 0)"]
    assert f"dqnrun train: its 1 job finished in {tmp_path / 'sweep'}" in proc.stdout
