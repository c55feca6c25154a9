"""Keys that moved keep working under their old spelling at every entry point, each has one canonical spelling,
and a run records its overrides as the user typed them (dqnrun.config.keys)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.conftest import run_cli

QUICK = ["env=cartpole", "total_steps=1200", "eval.every=0", "log.progress=false", "replay.capacity=2000"]


def _run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("results.json"))


def test_an_old_spelling_on_the_command_line_trains_as_the_canonical_key_and_is_recorded_as_typed(
        tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = run_cli(["train", *QUICK, "learner.train_freq=8", "learner.learning_starts=400",
                    f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    stored = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert stored["algo"]["train_freq"] == 8 and stored["algo"]["learning_starts"] == 400
    assert "train_freq" not in stored["learner"]
    typed = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    assert "learner.train_freq=8" in typed and "learner.learning_starts=400" in typed
    r = json.loads((run / "results.json").read_text())
    assert "learner.train_freq=8" in r["overrides"]
    assert r["updates"] == (1200 - 400) // 8  # the value took effect


def test_cfg_job_shows_only_the_canonical_spelling(tmp_path: Path) -> None:
    proc = run_cli(["train", "env=cartpole", "learner.target_update_interval=77", "--cfg", "job"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["algo"]["target_update_interval"] == 77 and cfg["algo"]["_target_"] == "dqnrun.algos.dqn.DQN"
    assert "target_update_interval" not in cfg["learner"] and "atoms" not in cfg["learner"]
    assert cfg["network"]["atoms"] == 51
    assert not (tmp_path / "outputs").exists()


def test_the_python_api_takes_old_spellings(tmp_path: Path) -> None:
    from dqnrun import train

    r = train([*QUICK, "learner.train_freq=8", "learner.learning_starts=400", "learner.v_max=50"],
              run_dir=tmp_path / "api")
    assert r["status"] == "completed" and r["updates"] == (1200 - 400) // 8
    assert "learner.train_freq=8" in r["overrides"]
    stored = yaml.safe_load((tmp_path / "api" / ".hydra" / "config.yaml").read_text())
    assert stored["network"]["v_max"] == 50


def test_a_sweep_over_an_old_spelling_runs_each_value_and_the_report_groups_both_spellings(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli(["train", "-m", *QUICK, "learner.learning_starts=400", "learner.train_freq=4,8",
                    f"hydra.sweep.dir={sweep}"], tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    runs = _run_dirs(sweep)
    assert len(runs) == 2
    updates = sorted(json.loads((d / "results.json").read_text())["updates"] for d in runs)
    assert updates == [(1200 - 400) // 8, (1200 - 400) // 4]
    for d in runs:
        assert any(o.startswith("learner.train_freq=") for o in yaml.safe_load((d / ".hydra" / "overrides.yaml")
                                                                                .read_text()))
    # a third run with the canonical spelling joins the learner.train_freq=8 group
    proc = run_cli(["train", *QUICK, "algo.learning_starts=400", "algo.train_freq=8", "seed=1",
                    f"hydra.run.dir={sweep / 'canonical'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli(["report", str(sweep), "--reps", "50"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "3 runs in 2 groups" in proc.stdout


def test_an_optuna_search_space_with_an_old_spelling_searches_the_canonical_key(tmp_path: Path) -> None:
    search = tmp_path / "confs" / "hparams_search"
    search.mkdir(parents=True)
    (search / "legacy.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - override /hydra/sweeper: dqnrun_optuna\n"
        "hydra:\n  sweeper:\n    direction: maximize\n    n_trials: 2\n    n_jobs: 1\n"
        "    sampler:\n      _target_: optuna.samplers.TPESampler\n      seed: 0\n      n_startup_trials: 2\n"
        "    params:\n      learner.train_freq: choice(4, 8)   # the spelling of dqnrun 0.2\n")
    (search.parent / "__init__.py").touch()
    sweep = tmp_path / "study"
    proc = run_cli(["train", "-m", "-cd", str(tmp_path / "confs"), "hparams_search=legacy", *QUICK,
                    "algo.learning_starts=400", f"hydra.sweep.dir={sweep}"], tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    runs = _run_dirs(sweep)
    assert len(runs) == 2
    for d in runs:
        r = json.loads((d / "results.json").read_text())
        freq = int(next(o for o in r["overrides"] if o.startswith("learner.train_freq=")).split("=")[1])
        assert yaml.safe_load((d / ".hydra" / "config.yaml").read_text())["algo"]["train_freq"] == freq
        assert r["updates"] == (1200 - 400) // freq


def test_validation_names_the_canonical_key_and_the_spelling_the_user_typed(tmp_path: Path) -> None:
    proc = run_cli(["train", "env=cartpole", "learner.train_freq=0"], tmp_path)
    assert proc.returncode == 2
    assert "algo.train_freq=0 is out of range" in proc.stderr
    assert "learner.train_freq is now spelled algo.train_freq" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "outputs").exists()


def test_each_job_of_a_sweep_is_checked_against_its_own_env(tmp_path: Path) -> None:
    """The preflight once cached the last env's spec: seed before env made frozenlake's job meet CartPole's."""
    for order in (["seed=0,1", "env=frozenlake,cartpole"], ["env=frozenlake,cartpole", "seed=0,1"]):
        proc = run_cli(["train", "-m", *order, "total_steps=2000", "learner.learning_starts=100", "--cfg", "job"],
                       tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count("# job ") == 4
