"""The Python API (`from dqnrun import train, load`): the CLI's code path, validation and errors included."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import dqnrun
from dqnrun import UsageError, load, train
from tests.conftest import REPO, TINY, run_cli


@pytest.fixture(scope="module")
def api_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("api") / "cp1"
    return run_dir, train(["env=cartpole", "seed=1", *TINY], run_dir=run_dir)


def test_train_returns_the_results_and_writes_a_cli_like_run_directory(api_run: tuple[Path, dict]) -> None:
    run_dir, result = api_run
    assert result == json.loads((run_dir / "results.json").read_text())
    assert result["status"] == "completed" and result["steps"] == 1200 and result["seed"] == 1
    assert result["updates"] == (1200 - 400) // 4
    for path in (".hydra/config.yaml", ".hydra/overrides.yaml", "train.log", "checkpoints/best.pt", "tb"):
        assert (run_dir / path).exists(), path
    assert "completed: 1200 steps" in (run_dir / "train.log").read_text()


def test_load_acts_on_one_observation_and_on_a_batch(api_run: tuple[Path, dict]) -> None:
    run_dir, _ = api_run
    agent = load(run_dir / "checkpoints" / "best.pt")
    assert agent.obs_shape == (4,) and agent.n_actions == 2
    obs = np.random.default_rng(0).normal(size=(9, 4)).astype(np.float32)
    q = agent.q_values(obs)
    assert q.shape == (9, 2)
    batch = agent.act(obs)
    assert batch.shape == (9,) and batch.dtype == np.int64
    assert np.array_equal(batch, q.argmax(1))
    single = agent.act(obs[3])
    assert isinstance(single, int) and single == int(q[3].argmax())
    with pytest.raises(UsageError, match=r"obs of shape \(3,\) fits neither"):
        agent.act(np.zeros(3))


def test_agent_evaluate_is_dqnrun_eval(api_run: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, _ = api_run
    agent = load(run_dir)  # a run directory means its best.pt
    out = agent.evaluate(episodes=5)
    assert out["episodes"] == 5 and len(out["returns"]) == 5
    assert out["mean_return"] == pytest.approx(np.mean(out["returns"]))
    proc = run_cli(["eval", f"ckpt={run_dir / 'checkpoints' / 'best.pt'}", "episodes=5"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    (eval_json,) = (tmp_path / "outputs").rglob("eval.json")
    assert json.loads(eval_json.read_text())["returns"] == out["returns"]  # same seeds, same episodes


@pytest.mark.parametrize("overrides", [["optimizer.lr=abc"], ["env.id=CartPol-v1"], ["optimizer.lrr=1"],
                                       ["seed=0,1"]])
def test_bad_input_raises_usage_error_with_the_clis_line_and_writes_nothing(
        overrides: list[str], tmp_path: Path) -> None:
    run_dir = tmp_path / "never"
    with pytest.raises(UsageError) as exc:
        train(overrides, run_dir=run_dir)
    assert not run_dir.exists()
    cli = run_cli(["train", *overrides], tmp_path)
    assert cli.returncode == 2
    assert cli.stderr.strip() == f"dqnrun train: error: {exc.value}"
    assert isinstance(exc.value, dqnrun.DqnrunError) and "\n" not in str(exc.value)


def test_the_readme_api_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    (snippet,) = [b for b in blocks if "from dqnrun import" in b]
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)  # noqa: S102 - our own README
    assert scope["result"]["status"] == "completed"
    assert scope["agent"].n_actions == 2


def test_dqnrun_train_validates_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dqnrun.config.rules
    import dqnrun.run.lifecycle
    from dqnrun import train

    calls = []
    real = dqnrun.config.rules.validate_train_config

    def counting(cfg: object) -> None:
        calls.append(1)
        real(cfg)

    monkeypatch.setattr(dqnrun.config.rules, "validate_train_config", counting)
    monkeypatch.setattr(dqnrun.run.lifecycle, "validate_train_config", counting)
    r = train(["env=cartpole", "total_steps=600", "algo.learning_starts=200", "eval.every=0", "log.progress=false"],
              run_dir=tmp_path / "run")
    assert r["status"] == "completed" and len(calls) == 1
