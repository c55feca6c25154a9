"""Bad input through the real CLI entry point: one clear line naming the problem, exit code 2, no files."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from dqnrun.cli import main
from dqnrun.run.checkpoint import FORMAT_VERSION
from tests.conftest import REPO, run_cli

FIXTURE = "tests/fixtures/ckpt_v0_2_0/mlp_nstep.best.pt"

TRAIN_CASES = [
    # (overrides, pattern the message must contain)
    (["env.id=CartPol-v1"], "env.id='CartPol-v1' is not a registered"),
    (["env.id=nosuchpkg.mod:Foo-v0"], "cannot import module 'nosuchpkg.mod'"),
    (["env=cartpol"], "unknown env preset 'cartpol'; choose one of: acrobot, atari, breakout, cartpole"),
    (["optimizer=adamw"], "unknown optimizer preset 'adamw'"),
    (["optimizer.lrr=1e-3"], "unknown config key 'optimizer.lrr' (did you mean optimizer.lr?)"),
    (["learner.gama=0.9"], "unknown config key 'learner.gama' (did you mean learner.gamma?)"),
    (["optimizer.lr=abc"], "optimizer.lr='abc' is not a number"),
    (["optimizer.lr=0"], "optimizer.lr=0 is out of range"),
    (["optimizer.lr=-1e-3"], "optimizer.lr=-0.001 is out of range"),
    (["learner.gamma=1.5"], "learner.gamma=1.5 is out of range; it must lie in [0, 1]"),
    (["replay.batch_size=256", "replay.capacity=100"], "replay.batch_size=256 exceeds replay.capacity=100"),
    (["env.num_envs=0"], "env.num_envs=0 is out of range"),
    (["total_steps=500", "algo.learning_starts=1000"], "total_steps=500 is not above algo.learning_starts"),
    (["schedule.start=1.5"], "schedule.start=1.5 is out of range"),
    (["eval.epsilon=2"], "eval.epsilon=2 is out of range"),
    (["learner.loss=l1"], "learner.loss='l1' is not one of huber | mse | half_sse"),
    (["total_steps=1.5"], "total_steps=1.5 is not an integer"),
    (["network.hidden=[64,-1]"], "network.hidden=[64, -1] must be a list of positive integers"),
    (["env.id=Pendulum-v1"], "Box action space; DQN needs a Discrete one"),
    (["device=cuda"] if not torch.cuda.is_available() else ["device=tpu"], "device="),
    (["replay.capacity=100000000000"], "lower replay.capacity"),
    (["seed=0,1"], "seed=0,1 is a sweep; add -m"),
    (["learner.double=yes"], "learner.double='yes' is not a boolean; pass learner.double=true or"),
    (["compile=1"], "compile=1 is not a boolean"),
    (["resume=/nonexistent/run"], "resume=/nonexistent/run: no checkpoint found"),
    # accepted before and wrong: a key no code reads, an infinite learning rate, a rising epsilon
    (["+foo=1"], "+foo: no part of dqnrun reads foo"),
    (["+optimizer.lrr=1e-3"], "no part of dqnrun reads optimizer.lrr (did you mean optimizer.lr?)"),
    (["+replay.alpha=0.5"], "no part of dqnrun reads replay.alpha"),
    (["optimizer.lr=inf"], "optimizer.lr=inf is out of range; it must lie in (0, inf)"),
    (["learner.max_grad_norm=inf"], "learner.max_grad_norm=inf is out of range"),
    (["schedule.start=0.5", "schedule.end=0.9"], "schedule.end=0.9 is above schedule.start=0.5"),
    (["env=frozenlake", "learner.distributional=true"], "learner.distributional=true needs a network with a C51"),
    (["network.hidden=[32]", f"init_from={REPO / FIXTURE}"],
     "its weights do not fit this run's network (net.0.weight is (16, 4) there and (32, 4) here"),
    (["env.id=tests.custom_envs:DqnrunTest/Broken-v0", "++env.kwargs.bug=reset_shape"],
     "reset() returned an observation of shape (4,), but its observation_space is Box(5,)"),
    (["hydra.run.dir=/proc/dqnrun-x"], "hydra.run.dir=/proc/dqnrun-x: cannot create the run directory"),
    # habits from other tools
    (["--env", "cartpole"], "--env: dqnrun takes key=value, not --key value; say: dqnrun train env=cartpole"),
    (["--seed=3"], "say: dqnrun train seed=3"),
    (["cartpole"], "'cartpole' is not key=value; say: dqnrun train env=cartpole"),
    (["+experiment=rainbow"], "experiment is already in the config; say experiment=rainbow (without +)"),
]


@pytest.mark.parametrize(("overrides", "pattern"), TRAIN_CASES, ids=[" ".join(c[0]) for c in TRAIN_CASES])
def test_bad_train_input_gets_one_clear_line_and_exit_2(
    overrides: list[str], pattern: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["train", *overrides])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("dqnrun train: error: ")
    assert pattern in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "outputs").exists()  # rejected before any run directory exists


def _write(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


class Evil:
    def __reduce__(self):  # would run code when unpickled without weights_only
        return (Path.touch, (Path("PWNED"),))


def _eval_cases(tmp: Path) -> list[tuple[str, str]]:
    good = {"format_version": FORMAT_VERSION, "algo": "dqn", "policy": {}, "algo_state": {}, "step": 0,
            "config": {"env": {"id": "CartPole-v1"}}}
    truncated = tmp / "truncated.pt"
    _write(truncated, {**good, "policy": {"w": torch.zeros(1000)}})
    truncated.write_bytes(truncated.read_bytes()[:200])
    garbage = tmp / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all" * 10)
    not_zip = tmp / "empty.pt"
    not_zip.write_bytes(b"")
    with zipfile.ZipFile(tmp / "zip.pt", "w") as z:
        z.writestr("hello.txt", "hi")
    return [
        (str(tmp / "missing.pt"), "no such file"),
        (str(tmp), "is a directory"),
        (str(truncated), "is truncated or corrupt"),
        (str(garbage), "is not a checkpoint (not a file written by torch.save)"),
        (str(not_zip), "is not a checkpoint (an empty file)"),
        (str(REPO / "README.md"), "is not a checkpoint"),
        (str(tmp / "zip.pt"), "is truncated or corrupt"),
        (str(_write(tmp / "foreign.pt", {"weights": torch.zeros(3)})), "is not a dqnrun checkpoint"),
        (str(_write(tmp / "list.pt", [1, 2, 3])), "is not a dqnrun checkpoint"),
        (str(_write(tmp / "future.pt", {**good, "format_version": FORMAT_VERSION + 1})),
         f"has checkpoint format {FORMAT_VERSION + 1}"),
        (str(_write(tmp / "incomplete.pt", {"format_version": FORMAT_VERSION, "policy": {}})),
         "missing algo, config, step"),
        (str(_write(tmp / "incomplete_v1.pt", {"format_version": 1, "online": {}})),
         "missing config, step"),
    ]


def test_bad_checkpoints_get_one_clear_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cases = _eval_cases(tmp_path)
    for ckpt, pattern in cases:
        with pytest.raises(SystemExit) as exc:
            main(["eval", f"ckpt={ckpt}"])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2, (ckpt, err)
        assert len(err.splitlines()) == 1 and pattern in err and ckpt in err, (ckpt, err)
    assert not (tmp_path / "outputs").exists()


def test_a_path_without_ckpt_is_rewritten_as_key_value(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["eval", "runs/x/checkpoints/best.pt"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == ("dqnrun eval: error: 'runs/x/checkpoints/best.pt' is not key=value; "
                                               "say: dqnrun eval ckpt=runs/x/checkpoints/best.pt")


def test_an_unquoted_non_ascii_value_just_works(tmp_path: Path) -> None:
    proc = run_cli(["train", "env=cartpole", "name=été", "--cfg", "job"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "name: été" in proc.stdout


def test_eval_without_ckpt_says_how_to_pass_one(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["eval"])
    assert exc.value.code == 2
    assert "ckpt is required" in capsys.readouterr().err


def test_malicious_pickle_checkpoint_is_refused_without_running_code(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    # A real torch checkpoint that would run code if loaded without weights_only (protocol 2 and 5).
    torch.save({"format_version": FORMAT_VERSION, "payload": Evil()}, evil)
    evil5 = tmp_path / "evil5.pt"
    torch.save({"format_version": FORMAT_VERSION, "payload": Evil()}, evil5, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    proc5 = run_cli(["eval", f"ckpt={evil5}"], tmp_path)
    assert proc5.returncode == 2 and "refused by the safe loader" in proc5.stderr, proc5.stderr
    proc = run_cli(["eval", f"ckpt={evil}"], tmp_path)
    assert proc.returncode == 2
    assert "refused by the safe loader" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "PWNED").exists()


def test_unknown_subcommand_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["trian"])
    assert exc.value.code == 2
    assert "unknown command 'trian'" in capsys.readouterr().err
