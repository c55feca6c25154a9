"""`dqnrun report`: what it must not do (take other files for runs, rank envs against each other, overwrite a
user's files, ...), each checked on synthetic run directories."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dqnrun import report
from dqnrun.report import plot, render, stats
from tests.unit.test_report import FAST, completed, marked_png, run_main, write_run

OUTPUTS = ("report.md", "report.csv", "curves.png")


def two_env_sweep(root: Path) -> Path:
    """lr x seeds on CartPole (returns ~100-400) and on Acrobot (returns ~ -500..-80)."""
    job = 0
    for env, preset, returns in (("CartPole-v1", "cartpole", {"0.001": [400, 410, 420], "0.01": [100, 110, 120]}),
                                 ("Acrobot-v1", "acrobot", {"0.001": [-500, -490, -480], "0.01": [-90, -85, -80]})):
        for lr, rets in returns.items():
            for seed, ret in enumerate(rets):
                write_run(root / str(job), [f"env={preset}", f"optimizer.lr={lr}", f"seed={seed}"],
                          completed(float(ret), env_id=env, seed=seed), env_id=env)
                job += 1
    return root


# --------------------------------------------------------------------------------------- what is a run


def test_unrelated_results_json_files_are_not_runs_and_nothing_is_written(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bench" / "a").mkdir(parents=True)
    (tmp_path / "bench" / "a" / "results.json").write_text(json.dumps({"accuracy": 0.93, "status": "ok"}))
    (tmp_path / "bench" / "b").mkdir()
    (tmp_path / "bench" / "b" / "results.json").write_text("[1, 2, 3]")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "results.json").write_text("not json")
    rc, out, err = run_main([str(tmp_path), *FAST], capsys)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "no run directories" in err
    assert not any((tmp_path / name).exists() for name in OUTPUTS)


def test_dqnrun_results_json_or_a_training_record_make_a_run(tmp_path: Path) -> None:
    write_run(tmp_path / "status", None, {"status": "running"})
    write_run(tmp_path / "version", None, {"dqnrun_version": "0.1.0", "best_eval_return": 3.0})
    write_run(tmp_path / "started", ["seed=0"])  # Hydra's record of a training run, no results.json yet
    write_run(tmp_path / "torn", ["seed=1"], '{"status": "comp')  # a run killed mid-write
    write_run(tmp_path / "foreign", None, {"status": "ok"})
    hydra_only = tmp_path / "overrides-only" / ".hydra"
    hydra_only.mkdir(parents=True)
    (hydra_only / "overrides.yaml").write_text("- seed=0\n")  # no config.yaml: cannot tell what wrote it
    found = {p.name for p in report.find_run_dirs(tmp_path)}
    assert found == {"status", "version", "started", "torn"}


def test_eval_directories_are_not_unfinished_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path / "multirun" / "0", ["seed=0"], completed(100.0))
    # What `dqnrun eval` leaves under outputs/eval/: Hydra's record of the eval config, and eval.json.
    ev = tmp_path / "eval" / "2024-05-01" / "12-00-00-abc"
    (ev / ".hydra").mkdir(parents=True)
    (ev / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["ckpt=multirun/0/checkpoints/best.pt"]))
    (ev / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"ckpt": "x.pt", "episodes": 10, "seed": 0}))
    (ev / "eval.json").write_text(json.dumps({"env_id": "CartPole-v1", "mean_return": 10.0}))
    # Even an eval dir whose config were to look like training's is told apart by its eval.json.
    ev2 = tmp_path / "eval" / "2024-05-01" / "12-00-01-def"
    write_run(ev2, ["ckpt=x.pt"])
    (ev2 / "eval.json").write_text("{}")
    assert [p.relative_to(tmp_path).as_posix() for p in report.find_run_dirs(tmp_path)] == ["multirun/0"]
    rc, out, _ = run_main([str(tmp_path), *FAST], capsys)
    assert rc == 0 and "1 run in 1 group (1 finished, 0 failed, 0 unfinished)" in out


# ------------------------------------------------------------------------------------------------- envs


def test_envs_are_never_ranked_or_compared_against_each_other(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    root = two_env_sweep(tmp_path / "sweep")
    # A started Acrobot run without results.json yet: its env comes from its stored config.
    write_run(root / "12", ["env=acrobot", "optimizer.lr=0.01", "seed=3"], env_id="Acrobot-v1")
    rc, out, err = run_main([str(root), "--compare", *FAST], capsys)
    assert rc == 0, err
    assert "13 runs of 2 envs (12 finished, 0 failed, 1 unfinished)" in out.splitlines()[0]
    acro, cart = out.split("== Acrobot-v1: ")[1].split("== CartPole-v1: ")
    assert acro.startswith("7 runs in 2 groups") and cart.startswith("6 runs in 2 groups")
    for section, winner in ((acro, "optimizer.lr=0.01"), (cart, "optimizer.lr=0.001")):
        rows = [line for line in section.splitlines() if "optimizer.lr=" in line and "[" in line]
        assert len(rows) == 2 and rows[0].lstrip().startswith("*1") and winner in rows[0]
        assert rows[1].lstrip().startswith("2 ")
        assert section.count("  P(#") == 1 and "P(#1 > #2) = 1.00" in section  # one pair per env, none across
        assert "all groups: env=" in section
    assert "12  no results.json yet (group #1)" in acro

    with open(root / "report.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["env_id"], r["rank"], r["best"]) for r in table] == [
        ("Acrobot-v1", "1", "1"), ("Acrobot-v1", "2", "0"), ("CartPole-v1", "1", "1"), ("CartPole-v1", "2", "0")]
    md = (root / "report.md").read_text()
    assert md.startswith("# dqnrun report: sweep\n")
    assert md.index("## Acrobot-v1") < md.index("### Probability of improvement") < md.index("## CartPole-v1")
    assert md.count("| # | group |") == 2 and md.count("### Incomplete or failed runs") == 2

    reports = stats.analyze(report.load_runs(root), reps=100)
    fig = plot.make_figure("sweep", reports, reps=100)
    assert [ax.get_title().splitlines()[0] for ax in fig.axes] == ["Acrobot-v1", "CartPole-v1"]
    for ax in fig.axes:  # each panel: its env's 2 groups, ranked within the env
        assert [t.get_text().split(" (n=")[0] for t in ax.get_legend().get_texts()] == [
            "#1 optimizer.lr=0.01" if ax is fig.axes[0] else "#1 optimizer.lr=0.001",
            "#2 optimizer.lr=0.001" if ax is fig.axes[0] else "#2 optimizer.lr=0.01"]


def test_group_by_across_envs_keeps_envs_apart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = two_env_sweep(tmp_path / "sweep")
    rc, out, _ = run_main([str(root), "--group-by", "optimizer.lr", *FAST], capsys)
    assert rc == 0 and out.count("*1") == 2
    reports = stats.analyze(report.load_runs(root), ["optimizer.lr"], reps=100)
    assert [(r.env, [len(g) for g in r.groups.values()]) for r in reports] == [
        ("Acrobot-v1", [3, 3]), ("CartPole-v1", [3, 3])]


def test_one_env_is_named_in_the_header(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path / "0", ["seed=0"], completed(1.0))
    rc, out, _ = run_main([str(tmp_path), *FAST], capsys)
    assert rc == 0 and out.splitlines()[0] == f"{tmp_path} (CartPole-v1): 1 run in 1 group (1 finished, 0 failed, " \
                                               "0 unfinished)"
    assert "==" not in out
    assert f"`{tmp_path}` (CartPole-v1): 1 run" in (tmp_path / "report.md").read_text()


# -------------------------------------------------------------------------------------- the user's files


@pytest.mark.parametrize("name, content", [
    ("report.md", b"# My notes on this sweep\n\nlr=1e-3 looked best.\n"),
    ("report.csv", b"lr,return\n0.001,400\n"),
    ("curves.png", b"\x89PNG\r\n\x1a\nnot ours"),
    ("curves.png", None),  # a real PNG written by other software
])
def test_a_file_the_report_did_not_write_is_never_overwritten(tmp_path: Path, name: str, content: bytes | None,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path / "0", ["seed=0"], completed(1.0))
    content = content if content is not None else marked_png("Matplotlib version3.9.0, https://matplotlib.org/")
    (tmp_path / name).write_bytes(content)
    rc, out, err = run_main([str(tmp_path), *FAST], capsys)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and str(tmp_path / name) in err and "--out" in err
    assert (tmp_path / name).read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["0", name])
    # --out elsewhere works, and the report's own files are overwritten on the next run.
    assert run_main([str(tmp_path), "--out", str(tmp_path / "o"), *FAST], capsys)[0] == 0
    assert run_main([str(tmp_path), "--out", str(tmp_path / "o"), *FAST], capsys)[0] == 0
    assert all((tmp_path / "o" / n).is_file() for n in OUTPUTS)
    assert plot.png_info((tmp_path / "o" / "curves.png").read_bytes())[2]["Software"] == "dqnrun report"


def test_curves_png_of_an_older_report_is_replaced_only_beside_its_report_md(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Reports before the Software mark wrote a 1200x700 matplotlib PNG beside a report.md of theirs.
    write_run(tmp_path / "0", ["seed=0"], completed(1.0))
    legacy = marked_png("Matplotlib version3.8.4, https://matplotlib.org/", (1200, 700))
    (tmp_path / "curves.png").write_bytes(legacy)
    assert run_main([str(tmp_path), *FAST], capsys)[0] == 2
    (tmp_path / "report.md").write_text("# dqnrun report: old\n")
    assert run_main([str(tmp_path), *FAST], capsys)[0] == 0
    assert plot.png_info((tmp_path / "curves.png").read_bytes())[2]["Software"] == "dqnrun report"


def test_no_curves_leaves_a_foreign_curves_png_alone_and_removes_its_own(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path / "0", ["seed=0"])  # nothing evaluated: no curves.png this time
    (tmp_path / "curves.png").write_bytes(b"mine")
    assert run_main([str(tmp_path), *FAST], capsys)[0] == 0
    assert (tmp_path / "curves.png").read_bytes() == b"mine"
    (tmp_path / "curves.png").write_bytes(marked_png())
    assert run_main([str(tmp_path), *FAST], capsys)[0] == 0
    assert not (tmp_path / "curves.png").exists()


# --------------------------------------------------------------------------------------------- --group-by


def test_group_by_an_unknown_key_names_the_keys_that_vary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i, lr in enumerate(["0.1", "0.2"]):
        write_run(tmp_path / str(i), [f"optimizer.lr={lr}", f"seed={i}", "total_steps=1000"],
                  completed(1.0, seed=i, name=None, tags=[]))
    rc, out, err = run_main([str(tmp_path), "--group-by", "nosuchkey", *FAST], capsys)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "nosuchkey" in err and "the runs vary in: optimizer.lr, seed" in err
    assert not any((tmp_path / name).exists() for name in OUTPUTS)
    # Keys that results.json records are known even where no override set them.
    for key in ("total_steps", "seed", "name", "tags", "env_id"):
        assert run_main([str(tmp_path), "--group-by", key, *FAST], capsys)[0] == 0, key


def test_group_by_and_grouping_see_both_spellings_of_a_moved_key(tmp_path: Path) -> None:
    for i, o in enumerate(["algo.train_freq=8", "algo.train_freq=8", "algo.train_freq=4", "learner.gamma=0.9"]):
        write_run(tmp_path / str(i), [o, f"seed={i}"], completed(1.0, seed=i))
    runs = report.load_runs(tmp_path)
    for key in ("algo.train_freq", "algo.train_freq"):
        groups = report.group_runs(runs, [key])
        assert {k: len(v) for k, v in groups.items()} == {
            "algo.train_freq=(default)": 1, "algo.train_freq=4": 1, "algo.train_freq=8": 2}
    assert {k: len(v) for k, v in report.group_runs(runs).items()} == {
        "algo.train_freq=4": 1, "algo.train_freq=8": 2, "learner.gamma=0.9": 1}


# ------------------------------------------------------------------------------------------ the terminal


def test_a_closed_stdout_ends_quietly_and_the_files_are_written(tmp_path: Path) -> None:
    write_run(tmp_path / "0", ["seed=0"], completed(1.0))
    code = "import sys; from dqnrun.report import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), *FAST], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line, as with `| head -0`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and err == ""
    assert all((tmp_path / n).is_file() for n in OUTPUTS)


def test_labels_wrap_between_overrides_never_inside_one() -> None:
    tokens = ("algo.learning_starts=1000", "optimizer.lr=0.00025", "network.hidden_sizes=[64, 64]",
              "replay.prioritized=true")
    s = {"label": " ".join(tokens), "tokens": tokens, "rank": 1, "is_best": True, "n": 5, "failed": 0,
         "unfinished": 0, "solve_rate": None, "solved": None, "median_steps_to_solve": None, "median_sps": 10.0,
         **{f"{m}_{k}": 1.0 for m in ("best", "final") for k in ("iqm", "mean", "ci_low", "ci_high")}}
    table = render.format_table([s], width=40)
    label_col = table.splitlines()[1].index("group")
    pieces = [line[label_col:].split("  ")[0] for line in table.splitlines()[3:]]
    assert len(pieces) > 1  # it did wrap
    assert [t for p in pieces for t in p.split(" ") if t] == " ".join(tokens).split(" ")
    assert " ".join(pieces) == " ".join(tokens)  # each line holds whole overrides
    assert render.wrap_tokens(tokens, 10) == list(tokens)
    assert render.wrap_tokens(["a=1", "b=2", "c=3"], 7) == ["a=1 b=2", "c=3"]


# ----------------------------------------------------------------------------------------------- the plot


@pytest.mark.parametrize("n_envs", [1, 2])
def test_curves_title_sits_above_its_subtitle_and_the_panels(tmp_path: Path, n_envs: int) -> None:
    # One group (nothing in common to print) was the case where the title was drawn over the subtitle.
    for i, env in enumerate(["CartPole-v1", "Acrobot-v1"][:n_envs]):
        write_run(tmp_path / str(i), ["seed=0"], completed(10.0, env_id=env))
    reports = stats.analyze(report.load_runs(tmp_path), reps=100)
    assert sum(len(r.groups) for r in reports) == n_envs
    fig = plot.make_figure("some/sweep", reports, reps=100)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = {t.get_gid(): t for t in fig.texts}
    title, sub = (texts[k].get_window_extent(renderer) for k in ("title", "subtitle"))
    assert title.y0 > sub.y1  # above it, not overlapping
    assert title.y1 <= fig.bbox.y1 and sub.x0 >= 0 and sub.x1 <= fig.bbox.x1
    for ax in fig.axes:  # the panels (with their own titles) start below the subtitle
        assert ax.get_tightbbox(renderer).y1 < sub.y0
    assert "CartPole-v1" in texts["title"].get_text() if n_envs == 1 else texts["title"].get_text() == "some/sweep"


# ------------------------------------------------------------------------------------------------ liveness


def _gone_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def running(pid: int | None, host: str | None) -> dict:
    return {**completed(100.0), "status": "running", "stop_reason": None, "steps": 600, "pid": pid, "host": host}


def test_a_dead_process_is_reported_dead_not_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    here, gone = socket.gethostname(), _gone_pid()
    write_run(tmp_path / "dead", ["seed=0"], running(gone, here))
    write_run(tmp_path / "alive", ["seed=1"], running(os.getpid(), here))
    write_run(tmp_path / "elsewhere", ["seed=2"], running(gone, "some-other-node"))
    write_run(tmp_path / "old", ["seed=3"], running(gone, None))  # older versions write no host
    reasons = {r.rel: r.reason for r in report.load_runs(tmp_path)}
    assert reasons["dead"] == (f"dead: process {gone} is gone (killed?); resume it with dqnrun train "
                               f"resume={tmp_path / 'dead'}")
    for rel in ("alive", "elsewhere", "old"):
        assert reasons[rel].startswith("running (step 600/1000, results.json updated"), rel
    rc, out, _ = run_main([str(tmp_path), *FAST], capsys)
    assert rc == 0 and f"dead: process {gone} is gone (killed?)" in out


def test_a_live_lock_keeps_a_run_running(tmp_path: Path) -> None:
    here, gone = socket.gethostname(), _gone_pid()
    run = write_run(tmp_path / "r", ["seed=0"], running(gone, here))
    (run / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": here, "started": "2024-05-01T12:00:00"}))
    assert report.process_liveness(run, json.loads((run / "results.json").read_text())) == (True, os.getpid())
    assert report.load_run(run).reason.startswith("running (")
    (run / ".lock").write_text(json.dumps({"pid": gone, "host": here, "started": "2024-05-01T12:00:00"}))
    assert report.load_run(run).reason.startswith(f"dead: process {gone}")
    (run / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": "some-other-node"}))
    assert report.load_run(run).reason.startswith(f"dead: process {gone}")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="zombies are told apart through /proc")
def test_a_killed_process_nobody_reaped_yet_is_dead() -> None:
    from dqnrun.report.runs import pid_alive

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        for _ in range(200):  # until it has exited: a zombie still answers kill(pid, 0)
            if Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
                break
            time.sleep(0.05)
        assert pid_alive(proc.pid) is False
    finally:
        proc.wait()
    assert pid_alive(proc.pid) is False and pid_alive(os.getpid()) is True
