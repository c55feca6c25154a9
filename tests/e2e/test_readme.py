"""Every command line of the README's tour runs, as written, with a small step budget added: the README cannot
drift from the code.

Commands that need what this machine lacks (a SLURM cluster, a PostgreSQL server of the user's, a display, a
GPU) or take long (Atari training, LunarLander), or name a user's package (my_pkg), run with ``--cfg job``, so
that at least their config composes and validates. ``$RUN``, ``$SWEEP`` and ``$STUDY`` are the directories
that earlier commands of the tour print. (The Python snippet is run by tests/test_api.py.)
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

BUDGET = ["total_steps=1200", "algo.learning_starts=400", "eval.every=600", "eval.episodes=2",
          "log.progress=false", "replay.capacity=2000", "checkpoint.every=600"]
PQN_BUDGET = ["total_steps=1024", "eval.every=512", "eval.episodes=2", "log.progress=false", "checkpoint.every=512"]
CFG_ONLY = ("env=pong", "env=atari", "LunarLander", "hydra/launcher=slurm", "postgresql://", "my_pkg",
            # trained for real by their own e2e tests (test_pixel_runs, test_variants_smoke, test_user_envs,
            # test_loggers, test_lifecycle): here they only have to compose and validate as written
            "env=acrobot", "env=minatar_breakout", "env=frozenlake", "env.wrappers", "logger=", "stop_when_solved",
            "algo=pqn env=cartpole 'seed=range(8)'",  # PQN populations: tests/e2e/test_population_pqn.py
            "name=lr-test")


def tour_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    tour = readme.split("## Tour", 1)[1].split("## Config groups", 1)[0]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", tour, flags=re.S):
        for line in block.splitlines():
            command = re.split(r"\s{2,}#", line)[0].strip()
            if command.startswith("dqnrun "):
                lines.append(command)
    return lines


def test_the_tour_has_the_commands_the_issues_promise() -> None:
    text = "\n".join(tour_commands())
    for needle in ("dqnrun train env=cartpole", "dqnrun eval", "video=true", "render=human", "resume=$RUN",
                   "init_from=", "hydra/launcher=joblib", "hydra/launcher=submitit_local", "hydra/launcher=slurm",
                   "hparams_search=cartpole_optuna", "resume=$STUDY", "postgresql://", "dqnrun report",
                   "dqnrun export", "format=onnx", "env=minatar_breakout", "env=pong", "logger=", "name=", "tags=",
                   "env.wrappers", "env.kwargs.", "stop_when_solved", "--help"):
        assert needle in text, needle


def _printed_dir(out: str, marker: str) -> str | None:
    found = re.findall(rf"{marker}\s*(\S+)", out)
    return found[-1] if found else None


def test_every_tour_command_runs_as_written(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0", "SDL_AUDIODRIVER": "dummy"}
    xvfb = shutil.which("Xvfb")
    server = None
    if xvfb:
        server = subprocess.Popen([xvfb, ":98", "-screen", "0", "640x480x24", "-nolisten", "tcp"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env.update(DISPLAY=":98", SDL_VIDEODRIVER="x11")
        time.sleep(1.0)
    else:
        env.pop("DISPLAY", None)
        env.pop("WAYLAND_DISPLAY", None)
    dirs: dict[str, str] = {}
    try:
        for command in tour_commands():
            args = shlex.split(command)[1:]
            needs = [v for v in ("RUN", "SWEEP", "STUDY") if f"${v}" in command]
            for var in needs:
                assert var in dirs, f"{command}: no earlier command printed ${var}"
                args = [a.replace(f"${var}", dirs[var]) for a in args]
            sub = args[0]
            if sub == "train" and any(c in command for c in CFG_ONLY):
                args += ["--cfg", "job"]
            elif sub == "train" and not any(a.startswith("--") for a in args):
                args += PQN_BUDGET if "algo=pqn" in args else BUDGET
                if "hparams_search=" in command:
                    args += ["hydra.sweeper.n_trials=2", "total_steps=1500", "algo.learning_starts=500",
                             "eval.every=500"]
            elif sub == "eval":
                args += ["episodes=2", "video_episodes=1"]
            proc = subprocess.run([sys.executable, "-m", "dqnrun", *args], cwd=tmp_path, env=env, text=True,
                                  capture_output=True, timeout=600)
            if "render=human" in command and not xvfb:
                assert proc.returncode == 2 and "render=human needs a display" in proc.stderr, command
                continue
            assert proc.returncode == 0, f"{command}\n{proc.stderr[-2000:]}"
            out = proc.stdout + proc.stderr
            run_dir = _printed_dir(out, "run directory:")
            sweep_dir = _printed_dir(out, r"summarize them with: \S*dqnrun report")
            if run_dir and "RUN" not in dirs and sub == "train" and "env=cartpole" in command:
                dirs["RUN"] = str(tmp_path / run_dir)
            if sweep_dir and "hparams_search" in command:
                dirs.setdefault("STUDY", str(tmp_path / sweep_dir))
            elif sweep_dir and "hydra/launcher=joblib" in command:
                dirs.setdefault("SWEEP", str(tmp_path / sweep_dir))
    finally:
        if server is not None:
            server.terminate()
            server.wait()
    assert set(dirs) == {"RUN", "SWEEP", "STUDY"}
    assert (Path(dirs["SWEEP"]) / "report.md").exists() and (Path(dirs["RUN"]) / "export" / "policy.onnx").exists()


@pytest.mark.parametrize("target", ["train", "test", "sweep-demo", "test-ray", "bench-pixels"])
def test_the_make_targets_the_readme_names_exist(target: str) -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), target
