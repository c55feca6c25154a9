"""End-to-end smoke tests through the real `dqnrun` CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dqnrun import metrics as M
from tests.conftest import REPO, TINY, run_cli, tb_dir


def test_train_writes_a_complete_run_directory(trained_run: Path) -> None:
    assert (trained_run / ".hydra" / "config.yaml").exists()
    assert (trained_run / "train.log").exists()
    assert (trained_run / "checkpoints" / "last.pt").exists()
    assert (trained_run / "checkpoints" / "best.pt").exists()
    assert list(tb_dir(trained_run).glob("events.out.tfevents.*"))
    r = json.loads((trained_run / "results.json").read_text())
    for key in ("final_eval_return", "best_eval_return", "solved_at_step", "solved_at_seconds",
                "train_seconds", "steps", "updates", "sps"):
        assert key in r, key
    assert r["steps"] == 1200
    # 4 envs, train_freq 4 -> one gradient step per vector step after learning_starts (step > 400)
    assert r["updates"] == (1200 - 400) // 4
    assert math.isclose(r["sps"], r["steps"] / r["train_seconds"])
    assert r["best_eval_return"] >= r["final_eval_return"]
    assert r["solved_at_step"] is None or r["solved_at_step"] % 600 == 0


def test_checkpoint_is_self_contained_and_loads_weights_only(trained_run: Path) -> None:
    ckpt = torch.load(trained_run / "checkpoints" / "last.pt", weights_only=True)
    for key in ("algo", "policy", "algo_state", "step", "config", "format_version", "rng", "loop"):
        assert key in ckpt, key
    assert ckpt["algo"] == "dqn" and {"target", "optimizer", "updates"} <= set(ckpt["algo_state"])
    assert ckpt["step"] == 1200
    assert ckpt["config"]["env"]["id"] == "CartPole-v1"
    assert ckpt["config"]["seed"] == 1


def test_tensorboard_has_the_documented_scalar_tags(trained_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir(trained_run)))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert set(M.ALL_SCALARS) <= tags, set(M.ALL_SCALARS) - tags
    eval_steps = [e.step for e in acc.Scalars(M.EVAL_RETURN)]
    assert eval_steps == [600, 1200]
    loss_steps = [e.step for e in acc.Scalars(M.TD_LOSS)]
    assert loss_steps == list(range(600, 1201, 200))  # first update after step 400 is logged at 600


def test_eval_runs_from_another_directory_and_writes_eval_json(trained_run: Path, tmp_path: Path) -> None:
    ckpt = trained_run / "checkpoints" / "best.pt"
    proc = run_cli(["eval", f"ckpt={ckpt}", "episodes=7"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "mean return" in proc.stdout
    (eval_json,) = (tmp_path / "outputs").rglob("eval.json")
    r = json.loads(eval_json.read_text())
    assert r["episodes"] == 7 and len(r["returns"]) == 7
    assert math.isclose(r["mean_return"], sum(r["returns"]) / 7)
    assert r["std_return"] >= 0
    assert all(1 <= x <= 500 for x in r["returns"])  # CartPole returns are episode lengths


def test_eval_video_writes_a_playable_mp4(trained_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("moviepy")
    ckpt = trained_run / "checkpoints" / "best.pt"
    proc = run_cli(["eval", f"ckpt={ckpt}", "episodes=1", "video=true", "video_episodes=1"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    (mp4,) = (tmp_path / "outputs").rglob("*.mp4")
    assert f"video: {mp4}" in proc.stdout  # says where the video went
    import imageio_ffmpeg

    # ffmpeg decodes every frame; a broken file fails here.
    reader = imageio_ffmpeg.read_frames(str(mp4))
    meta = next(reader)
    n_frames = sum(1 for _ in reader)
    assert meta["size"][0] > 0 and n_frames >= 8


def test_best_pt_holds_only_the_policy_and_is_refused_as_a_resume_point(trained_run: Path, tmp_path: Path) -> None:
    best = torch.load(trained_run / "checkpoints" / "best.pt", weights_only=True)
    assert set(best) == {"format_version", "dqnrun_version", "algo", "config", "policy", "step", "loop"}
    last = (trained_run / "checkpoints" / "last.pt").stat().st_size
    assert (trained_run / "checkpoints" / "best.pt").stat().st_size < last / 2  # no optimizer, no target network
    proc = run_cli(["train", f"resume={trained_run / 'checkpoints' / 'best.pt'}"], tmp_path)
    assert proc.returncode == 2 and "holds the policy only (best.pt); resume from" in proc.stderr
    assert "last.pt" in proc.stderr.strip().splitlines()[-1]


def test_train_log_has_a_line_per_log_interval_and_stdout_too_without_a_terminal(trained_run: Path) -> None:
    lines = [ln for ln in (trained_run / "train.log").read_text().splitlines() if "dqnrun.progress" in ln]
    assert len(lines) == 1200 // 200  # log.every=200
    assert "step 1200/1200 | episodes" in lines[-1] and "epsilon" in lines[-1] and "loss" in lines[-1]
    assert lines[-1].endswith("steps/s")


def test_two_runs_started_together_get_distinct_directories(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "dqnrun", "train", "total_steps=100", "algo.learning_starts=50",
            "eval.every=0", "log.progress=false"]
    procs = [subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert len(list((tmp_path / "outputs").rglob("results.json"))) == 2


def test_multirun_sweeps_over_values(tmp_path: Path) -> None:
    proc = run_cli(["train", "-m", "seed=0,1", "total_steps=200", "algo.learning_starts=100",
                    "eval.every=0", "log.progress=false"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = sorted((tmp_path / "outputs" / "multirun").rglob("results.json"))
    assert [json.loads(p.read_text())["seed"] for p in results] == [0, 1]


def test_multirun_flag_may_follow_overrides(tmp_path: Path) -> None:
    proc = run_cli(["train", "total_steps=200", "algo.learning_starts=100", "eval.every=0",
                    "log.progress=false", "optimizer.lr=1e-3,3e-4", "-m"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "outputs" / "multirun").rglob("results.json"))) == 2


def test_cfg_job_prints_the_composed_config_without_training(tmp_path: Path) -> None:
    proc = run_cli(["train", "env=acrobot", "--cfg", "job"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Acrobot-v1" in proc.stdout
    assert not (tmp_path / "outputs").exists()


def test_config_is_found_after_a_regular_wheel_install(tmp_path: Path) -> None:
    """Not editable: build the wheel, install it alone into a folder, run from an unrelated cwd."""
    wheel_dir, site = tmp_path / "wheel", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheel_dir), str(REPO)], check=True, capture_output=True)
    (wheel,) = wheel_dir.glob("dqnrun-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {"PYTHONPATH": str(site), "PYTHONSAFEPATH": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", "import dqnrun, sys; print(dqnrun.__file__); "
         "sys.argv=['dqnrun','train','env=mountaincar','--cfg','job']; from dqnrun.cli import main; main()"],
        cwd=cwd, env={**__import__("os").environ, **env}, text=True, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert str(site) in proc.stdout and "MountainCar-v0" in proc.stdout


def test_tiny_override_list_is_valid() -> None:
    # Guard for the shared fixture: the overrides it uses must stay real config keys.
    from tests.conftest import compose_train

    cfg = compose_train(TINY)
    assert cfg.total_steps == 1200


def _console(tmp_path: Path, before: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``before`` (Python), then the ``dqnrun`` command's entry point (`dqnrun.cli.console`) with ``argv``, in a
    fresh interpreter whose stdout is a pipe (block-buffered: what is not flushed before the exit is lost)."""
    script = f"import sys\n{before}\nsys.argv = ['dqnrun', *{argv!r}]\nfrom dqnrun.cli import console\nconsole()\n"
    return subprocess.run([sys.executable, "-c", script], cwd=tmp_path, text=True, capture_output=True, timeout=120,
                          env=_buffered())


def _buffered() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def test_the_command_exits_quickly_with_mains_exit_code_its_output_and_its_exit_handlers(tmp_path: Path) -> None:
    """`console` skips Python's teardown (os._exit) once main is done: main's exit code, every byte it printed
    (through a pipe), the exit handlers' work; a thread that is not a daemon makes it exit as Python does."""
    mark = tmp_path / "atexit.txt"
    hook = f"import atexit\natexit.register(lambda: open({str(mark)!r}, 'w').write('ran'))"
    proc = _console(tmp_path, hook, ["train", "env=mountaincar", "--cfg", "job"])  # a long print, exit 0
    assert proc.returncode == 0, proc.stderr
    plain = subprocess.run([sys.executable, "-c", "import sys; sys.argv = ['dqnrun', 'train', 'env=mountaincar', "
                            "'--cfg', 'job']; from dqnrun.cli import main; main()"], cwd=tmp_path, text=True,
                           capture_output=True, timeout=120, env=_buffered())  # through main: Python's own exit
    assert "MountainCar-v0" in proc.stdout and proc.stdout == plain.stdout and mark.read_text() == "ran"
    assert _console(tmp_path, "", ["--version"]).stdout.startswith("dqnrun ")  # a print no logging handler flushes
    proc = _console(tmp_path, "", ["train", "env=nonexistent"])  # bad input: one line, exit 2
    assert proc.returncode == 2 and proc.stderr.startswith("dqnrun train: error: unknown env preset")
    proc = _console(tmp_path, "import dqnrun.cli as c\nc.main = lambda: sys.exit('gone')", [])  # sys.exit("text")
    assert proc.returncode == 1 and proc.stderr.strip() == "gone"
    late = tmp_path / "thread.txt"
    thread = ("import threading, time\nthreading.Thread(target=lambda: (time.sleep(0.5), "
              f"open({str(late)!r}, 'w').write('done'))).start()")
    proc = _console(tmp_path, thread, ["--version"])
    assert proc.returncode == 0 and proc.stdout.startswith("dqnrun ") and late.read_text() == "done"
