"""Help that teaches, shell completion with the subcommand, and watching an agent (render=human)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import TINY, compose_train, run_cli


def test_dqnrun_help_lists_the_subcommands(tmp_path: Path) -> None:
    proc = run_cli(["--help"], tmp_path)
    assert proc.returncode == 0
    for command in ("train", "eval", "report", "export"):
        assert f"dqnrun {command} " in proc.stdout


def test_train_help_lists_every_group_with_its_options_and_describes_the_important_keys(tmp_path: Path) -> None:
    proc = run_cli(["train", "--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert re.search(r"^env: acrobot, atari, breakout, cartpole, ", out, flags=re.M)
    for group, option in (("logger", "csv"), ("network", "nature_cnn"), ("network", "minatar_cnn"),
                          ("hparams_search", "cartpole_optuna"), ("replay", "prioritized"), ("experiment", "rainbow")):
        line = re.search(rf"^{group}: (.*)$", out, flags=re.M)
        assert line and option in line.group(1).split(", "), group
    keys = re.findall(r"^  ([a-z_.A-Z]+(?:, [a-z_.]+)?) {2,}\S", out.split("== Important keys")[1], flags=re.M)
    assert len(keys) >= 20
    atari = compose_train(["env=atari"])
    for entry in keys:  # every key the help describes exists: the help cannot drift from the config
        for key in entry.split(", "):
            key = key.removesuffix(".NAME")
            cfg = atari if key.startswith("env.atari") else compose_train()
            assert OmegaConf.select(cfg, key, default="<absent>") != "<absent>", key


def test_shell_completion_works_with_the_subcommand(tmp_path: Path) -> None:
    env = {"COMP_LINE": "dqnrun train env=cartp", "COMP_POINT": "22"}
    proc = run_cli(["train", "-sc", "query=bash"], tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["env=cartpole"]
    proc = run_cli(["train", "-sc", "query=bash"], tmp_path, env={"COMP_LINE": "dqnrun train logger="})
    assert set(proc.stdout.split()) == {"logger=csv", "logger=tensorboard", "logger=wandb"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("watch")
    assert run_cli(["train", "env=cartpole", *TINY, f"hydra.run.dir={cwd / 'run'}"], cwd).returncode == 0
    return cwd / "run" / "checkpoints" / "best.pt"


def test_render_human_without_a_display_says_why_in_one_line(checkpoint: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    proc = subprocess.run([sys.executable, "-m", "dqnrun", "eval", f"ckpt={checkpoint}", "render=human"],
                          cwd=tmp_path, env=env, text=True, capture_output=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "dqnrun eval: error: render=human needs a display, and this session has none (DISPLAY and "
        "WAYLAND_DISPLAY are unset, e.g. over ssh or in a container); record mp4s instead with video=true"]
    assert not (tmp_path / "outputs").exists()  # refused before Hydra made an eval directory


def test_render_human_opens_a_window_where_a_display_exists(checkpoint: Path, tmp_path: Path) -> None:
    xvfb = shutil.which("Xvfb")
    if xvfb is None and not os.environ.get("DISPLAY"):
        pytest.skip("no display and no Xvfb to make one (apt-get install xvfb)")
    server = None
    display = os.environ.get("DISPLAY")
    if xvfb is not None:
        display = ":97"
        server = subprocess.Popen([xvfb, display, "-screen", "0", "800x600x24", "-nolisten", "tcp"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
    try:
        env = {"DISPLAY": display, "SDL_VIDEODRIVER": "x11", "SDL_AUDIODRIVER": "dummy"}
        proc = run_cli(["eval", f"ckpt={checkpoint}", "render=human", "episodes=1", "video_episodes=1"], tmp_path,
                       env=env)
        assert proc.returncode == 0, proc.stderr
        (eval_json,) = (tmp_path / "outputs").rglob("eval.json")
        watched = json.loads(eval_json.read_text())["watched_returns"]
        assert len(watched) == 1 and 1 <= watched[0] <= 500
    finally:
        if server is not None:
            server.terminate()
            server.wait()
