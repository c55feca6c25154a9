"""`dqnrun report`: discovery, grouping and statistics on synthetic sweep directories, checked by hand."""

from __future__ import annotations

import ast
import csv
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from dqnrun import report
from dqnrun.report import plot, stats
from dqnrun.run import artifacts

REPORT_PKG = Path(report.__file__).parent
FAST = ["--reps", "300"]  # enough for the checks below, and keeps each report well under a second


def write_run(path: Path, overrides: list[str] | None = None, results: dict | str | None = None,
              env_id: str = "CartPole-v1") -> Path:
    """A run directory as Hydra + dqnrun leave it: .hydra/{overrides,config}.yaml and/or results.json."""
    path.mkdir(parents=True, exist_ok=True)
    if overrides is not None:
        (path / ".hydra").mkdir(exist_ok=True)
        (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        # The composed config of a training run (a slice of it: what the report reads).
        config = {"seed": 0, "total_steps": 1000, "env": {"id": env_id, "num_envs": 1}}
        (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if isinstance(results, str):
        (path / "results.json").write_text(results)
    elif results is not None:
        (path / "results.json").write_text(json.dumps(results))
    return path


def completed(best: float, final: float | None = None, **extra) -> dict:
    final = best if final is None else final
    return {"status": "completed", "stop_reason": "completed", "env_id": "CartPole-v1", "steps": 1000,
            "total_steps": 1000, "sps": 500.0, "best_eval_return": best, "final_eval_return": final,
            "solved_score": None, "solved_at_step": None,
            "eval_history": [[500, min(best, final)], [1000, final]], **extra}


def make_sweep(root: Path, groups: dict[str, list[float]]) -> Path:
    """A Hydra multirun dir: one job per (lr, seed), best == final == the given return."""
    (root / ".submitit").mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    job = 0
    for lr, returns in groups.items():
        for seed, ret in enumerate(returns):
            write_run(root / str(job), [f"optimizer.lr={lr}", f"seed={seed}", "hydra/launcher=joblib"],
                      completed(ret, seed=seed))
            job += 1
    return root


def marked_png(software: str = plot.SOFTWARE, size: tuple[int, int] = (1, 1)) -> bytes:
    """A tiny PNG (header, a Software text chunk, no pixels) like the ones `dqnrun report` writes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", *size, 8, 2, 0, 0, 0)
    return (plot.PNG_MAGIC + chunk(b"IHDR", ihdr) + chunk(b"tEXt", b"Software\0" + software.encode())
            + chunk(b"IEND", b""))


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = report.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def by_label(summaries: list[dict]) -> dict[str, dict]:
    return {s["label"]: s for s in summaries}


# ------------------------------------------------------------------------------------------------ grouping


def test_groups_by_overrides_other_than_seed_hydra_and_bookkeeping(tmp_path: Path) -> None:
    for seed in range(3):
        for lr in ("0.001", "0.0003"):
            write_run(tmp_path / f"lr{lr}-s{seed}",
                      [f"optimizer.lr={lr}", f"seed={seed}", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                       "+replay.prioritized=true", "++total_steps=2000", "resume=auto", "log.progress=false",
                       f"name=run{seed}", "tags=[a,b]", "~eval.video"],
                      completed(1.0))
    runs = report.load_runs(tmp_path)
    groups = report.group_runs(runs)
    assert list(groups) == [
        "optimizer.lr=0.0003 replay.prioritized=true total_steps=2000 ~eval.video",
        "optimizer.lr=0.001 replay.prioritized=true total_steps=2000 ~eval.video",
    ]
    assert [len(g) for g in groups.values()] == [3, 3]


def test_defaults_group_and_overrides_from_results_json(tmp_path: Path) -> None:
    write_run(tmp_path / "a", ["seed=1"], completed(1.0))
    write_run(tmp_path / "b", None, completed(2.0))  # no overrides anywhere
    write_run(tmp_path / "c", None, completed(3.0, overrides=["env=acrobot", "seed=4"]))  # no .hydra dir
    labels = {r.path.name: r.label for rs in report.group_runs(report.load_runs(tmp_path)).values() for r in rs}
    assert labels == {"a": "(defaults)", "b": "(defaults)", "c": "env=acrobot"}


def test_config_overrides_normalises_and_filters() -> None:
    # The report groups by artifacts.config_tokens (the one definition of what defines a configuration).
    assert artifacts.config_tokens(["+a=1", "++b.c=x=y", "seed=3", "hydra.run.dir=o", "hydra/sweeper=optuna",
                                    "name=n", "tags=[t]", "total_steps=5", "resume=auto", "log.progress=false",
                                    "~d"]) == ["a=1", "b.c=x=y", "total_steps=5", "~d"]
    assert artifacts.config_tokens(None) == []


def test_discovery_recurses_but_not_into_run_internals(tmp_path: Path) -> None:
    write_run(tmp_path / "sweepA" / "0", ["seed=0"], completed(1.0))
    write_run(tmp_path / "deep" / "x" / "y" / "3", ["seed=1"], completed(1.0))
    # Not runs: a run's own folders (a stray results.json in a checkpoint dir) and launcher state.
    write_run(tmp_path / "sweepA" / "0" / "checkpoints", None, completed(9.0))
    write_run(tmp_path / "sweepA" / "0" / "wandb" / "run-1", None, completed(9.0))
    write_run(tmp_path / ".submitit" / "123", None, completed(9.0))
    found = [p.relative_to(tmp_path).as_posix() for p in report.find_run_dirs(tmp_path)]
    assert found == ["deep/x/y/3", "sweepA/0"]


def test_job_dirs_sort_numerically(tmp_path: Path) -> None:
    for i in (10, 2, 1):
        write_run(tmp_path / str(i), ["seed=0"], completed(1.0))
    assert [p.name for p in report.find_run_dirs(tmp_path)] == ["1", "2", "10"]


# ---------------------------------------------------------------------------------------------- statistics


def test_iqm_and_ci_by_hand() -> None:
    best = [0, 10, 20, 30, 40, 90, 100, 500]
    # IQM (25% trimmed mean): 8 runs, drop int(8/4) = 2 at each end -> [20, 30, 40, 90] -> 180 / 4 = 45.
    # Mean: (0+10+20+30+40+90+100+500) / 8 = 790 / 8 = 98.75. Median: (30 + 40) / 2 = 35.
    assert report.iqm(best) == pytest.approx(45.0)
    assert np.mean(best) == pytest.approx(98.75) and np.median(best) == pytest.approx(35.0)
    lo, hi = report.interval(best, reps=2000, seed=0)
    assert 0 <= lo <= 45.0 <= hi <= 500
    assert lo < hi
    # Seeded: the same CI every time, and the caller's global numpy RNG is left as it was.
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    assert report.interval(best, reps=2000, seed=0) == (lo, hi)
    assert np.random.rand() == expected_next
    assert report.interval(best, reps=2000, seed=1) != (lo, hi)


def test_iqm_ci_single_and_empty() -> None:
    assert report.iqm([7.5]) == 7.5 and report.interval([7.5]) == (7.5, 7.5)
    assert report.iqm([]) is None and report.interval([]) is None


def test_fast_statistics_agree_with_rliable() -> None:
    # The bootstrap uses faster equivalents of rliable's IQM and probability of improvement: same numbers.
    from rliable import metrics

    rng = np.random.default_rng(0)
    for n in range(1, 14):
        x = rng.integers(0, 6, size=(n, 1)).astype(float)  # small integers: plenty of ties
        assert stats._iqm_fast(x)[0] == pytest.approx(metrics.aggregate_iqm(x))
        for m in (1, 4, 9):
            y = rng.integers(0, 6, size=(m, 1)).astype(float)
            assert stats._poi_fast(x, y) == pytest.approx(metrics.probability_of_improvement(x, y))
        assert stats._poi_fast(x, x) == pytest.approx(0.5)


def test_probability_of_improvement_by_hand() -> None:
    # x = [1, 2, 3] vs y = [2, 2, 0], ties count half: 1 beats only 0 (1); 2 ties 2 twice and beats 0 (2);
    # 3 beats all three (3). (1 + 2 + 3) / 9 = 2/3.
    p, lo, hi = report.probability_of_improvement([1, 2, 3], [2, 2, 0], reps=1000)
    assert p == pytest.approx(2 / 3)
    assert 0 <= lo <= p <= hi <= 1
    assert report.probability_of_improvement([5, 6], [1, 2]) == (1.0, 1.0, 1.0)
    assert report.probability_of_improvement([5], []) is None


def test_summary_of_a_group_with_iqm_unlike_mean_and_median(tmp_path: Path) -> None:
    best = [0, 10, 20, 30, 40, 90, 100, 500]
    root = make_sweep(tmp_path / "sweep", {"0.001": best})
    [(label, group)] = report.group_runs(report.load_runs(root)).items()
    s = report.summarize(group, label, reps=1000)
    assert label == "optimizer.lr=0.001"
    assert (s["n"], s["failed"], s["unfinished"]) == (8, 0, 0)
    assert s["best_iqm"] == pytest.approx(45.0) and s["best_mean"] == pytest.approx(98.75)
    assert s["best_ci_low"] <= 45.0 <= s["best_ci_high"]
    assert s["median_sps"] == 500.0
    assert s["solve_rate"] is None and s["solved"] is None and s["median_steps_to_solve"] is None


def test_solve_rate_and_median_steps_to_solve(tmp_path: Path) -> None:
    solved_at = [1000, None, 3000, 2000]
    for i, step in enumerate(solved_at):
        write_run(tmp_path / str(i), [f"seed={i}"],
                  completed(480.0 if step else 300.0, solved_score=475.0, solved_at_step=step,
                            stop_reason="solved" if step else "completed", sps=100.0 * (i + 1)))
    # A failed run that had solved before it crashed must not count.
    write_run(tmp_path / "4", ["seed=4"], {"status": "failed", "error": "boom", "solved_score": 475.0,
                                           "solved_at_step": 10})
    [group] = report.group_runs(report.load_runs(tmp_path)).values()
    s = report.summarize(group, reps=200)
    assert s["n"] == 4 and s["failed"] == 1
    assert s["solved"] == 3 and s["solve_rate"] == pytest.approx(0.75)
    assert s["median_steps_to_solve"] == pytest.approx(2000.0)  # median of 1000, 2000, 3000
    assert s["median_sps"] == pytest.approx(250.0)  # median of 100, 200, 300, 400


def test_failed_and_unfinished_runs_are_counted_listed_and_left_out(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    root = make_sweep(tmp_path / "sweep", {"0.001": [100, 200, 300]})
    write_run(root / "3", ["optimizer.lr=0.001", "seed=3"],
              {"status": "failed", "stop_reason": "failed", "error": "RuntimeError: CUDA out of memory",
               "best_eval_return": 9999.0, "final_eval_return": 9999.0})
    write_run(root / "4", ["optimizer.lr=0.001", "seed=4"])  # launched, nothing written yet
    write_run(root / "5", ["optimizer.lr=0.001", "seed=5"],
              {**completed(5000.0), "status": "running", "stop_reason": None, "steps": 600,
               "eval_history": [[500, 5000.0]]})
    write_run(root / "6", ["optimizer.lr=0.001", "seed=6"], '{"status": "comp')  # killed mid-write
    rc, out, err = run_main([str(root), *FAST], capsys)
    assert rc == 0, err
    runs = report.load_runs(root)
    [group] = report.group_runs(runs).values()
    s = report.summarize(group, reps=200)
    assert (s["n"], s["failed"], s["unfinished"]) == (3, 1, 3)
    # Only the finished 100, 200, 300: 3 runs, int(3/4) = 0 trimmed, IQM = mean = 200.
    assert s["best_iqm"] == pytest.approx(200.0) and s["final_mean"] == pytest.approx(200.0)
    reasons = {r.rel: r.reason for r in runs if r.state != report.FINISHED}
    assert reasons["3"] == "failed: RuntimeError: CUDA out of memory"
    assert reasons["4"] == "no results.json yet"
    assert reasons["5"].startswith("running (step 600/1000")
    assert reasons["6"].startswith("unreadable results.json")
    for rel, reason in reasons.items():
        stable = reason.split(", results.json updated")[0]  # the age in seconds moves between the two reads
        assert any(line.strip().startswith(rel) and stable in line for line in out.splitlines()), (rel, out)
    md = (root / "report.md").read_text()
    for rel, reason in reasons.items():
        assert f"`{rel}`" in md and reason.split(", results.json updated")[0] in md
    assert "6 runs" not in out and "7 runs in 1 group (3 finished, 1 failed, 3 unfinished)" in out
    # The running run's partial curve is drawn with its group; the failed one is not.
    curve = report.group_curve(group, reps=200)
    assert curve is not None and curve["n"].max() == 4


def test_group_curve_on_a_common_step_grid() -> None:
    def run(steps: list[int], returns: list[float], state: str = report.FINISHED) -> report.Run:
        history = [list(x) for x in zip(steps, returns, strict=True)]
        return report.Run(Path("r"), "r", [], {"eval_history": history}, state)

    a = run([0, 10, 20], [0, 10, 20])
    b = run([5, 15], [15, 35])
    failed = run([0, 20], [1000, 1000], report.FAILED)
    c = report.group_curve([a, b, failed], reps=300)
    # Grid = union of steps. b is interpolated inside [5, 15] only: at 10 it is (15 + 35) / 2 = 25.
    # Means: 0 -> a only 0; 5 -> (5 + 15) / 2 = 10; 10 -> (10 + 25) / 2 = 17.5; 15 -> (15 + 35) / 2 = 25; 20 -> 20.
    assert c["steps"].tolist() == [0, 5, 10, 15, 20]
    assert c["mean"] == pytest.approx([0, 10, 17.5, 25, 20])
    assert c["n"].tolist() == [1, 2, 2, 2, 1]
    assert c["low"][[0, 4]].tolist() == c["high"][[0, 4]].tolist() == [0, 20]  # one run: no spread
    assert np.all(c["low"] <= c["mean"] + 1e-9) and np.all(c["mean"] <= c["high"] + 1e-9)
    assert np.all(c["high"][1:4] > c["low"][1:4])
    assert report.group_curve([failed]) is None


# ---------------------------------------------------------------------------------------------- --group-by


def test_group_by_name_and_tags(tmp_path: Path) -> None:
    specs = [("base", ["b", "a"]), ("base", ["a", "b"]), ("base", ["a"]), ("per", ["a"]), (None, [])]
    for i, (name, tags) in enumerate(specs):
        write_run(tmp_path / str(i), [f"seed={i}", f"optimizer.lr=0.00{i + 1}"],
                  completed(float(i), name=name, tags=tags, seed=i))
    runs = report.load_runs(tmp_path)
    by_name = report.group_runs(runs, ["name"])
    assert {k: len(v) for k, v in by_name.items()} == {"name=base": 3, "name=per": 1, "name=(none)": 1}
    by_tags = report.group_runs(runs, ["tags"])
    assert {k: len(v) for k, v in by_tags.items()} == {"tags=a+b": 2, "tags=a": 2, "tags=(none)": 1}
    both = report.group_runs(runs, ["name", "tags"])
    assert sorted(both) == ["name=(none) tags=(none)", "name=base tags=a", "name=base tags=a+b", "name=per tags=a"]


def test_group_by_override_key_and_env_id_through_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i, (lr, batch) in enumerate([("0.1", "32"), ("0.1", "64"), ("0.2", "32"), ("0.2", "64")]):
        write_run(tmp_path / str(i), [f"optimizer.lr={lr}", f"batch_size={batch}", "seed=0"], completed(float(i)))
    groups = report.group_runs(report.load_runs(tmp_path), ["optimizer.lr"])
    assert {k: len(v) for k, v in groups.items()} == {"optimizer.lr=0.1": 2, "optimizer.lr=0.2": 2}
    assert list(report.group_runs(report.load_runs(tmp_path), ["env_id"])) == ["env_id=CartPole-v1"]
    rc, out, _ = run_main([str(tmp_path), "--group-by", "optimizer.lr", *FAST], capsys)
    assert rc == 0 and "optimizer.lr=0.2" in out and "batch_size" not in out.split("Statistics")[0]


# ------------------------------------------------------------------------------------------ CLI and files


def test_report_files_table_sort_and_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # lr=0.001 is better at its best eval; lr=0.01 ends higher (its final return): the sort column matters.
    root = tmp_path / "multirun" / "2024-05-01" / "12-00-00"
    (root / ".submitit").mkdir(parents=True)
    for i in range(5):
        write_run(root / str(i), ["optimizer.lr=0.001", f"seed={i}"], completed(400.0 + i, 100.0 + i))
        write_run(root / str(i + 5), ["optimizer.lr=0.01", f"seed={i}"], completed(300.0 + i, 290.0 + i))
    (root / "curves.png").write_bytes(marked_png())  # a stale curves.png an earlier report wrote
    rc, out, err = run_main([str(root), "--compare", *FAST], capsys)
    assert rc == 0 and err == ""
    lines = out.splitlines()
    rows = [line for line in lines if "optimizer.lr=" in line and "[" in line]
    assert rows[0].lstrip().startswith("*1") and "optimizer.lr=0.001" in rows[0]
    assert rows[1].lstrip().startswith("2 ") and "optimizer.lr=0.01" in rows[1]
    assert max(len(line) for line in lines if str(root) not in line) <= 120  # a long DIR path may overflow
    # Final returns: every 0.01 seed (290..294) beats every 0.001 seed (100..104): P(#1 > #2) = 0.
    assert "P(#1 > #2) = 0.00 [0.00, 0.00]  #2 better" in out

    summaries = by_label(report.sort_summaries(
        [report.summarize(g, k, reps=300) for k, g in report.group_runs(report.load_runs(root)).items()]))
    with open(root / "report.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [row["group"] for row in table] == ["optimizer.lr=0.001", "optimizer.lr=0.01"]
    for row in table:
        s = summaries[row["group"]]
        assert int(row["n"]) == s["n"] == 5 and int(row["failed"]) == 0
        for key in ("best_iqm", "best_mean", "best_ci_low", "best_ci_high", "final_iqm", "final_mean",
                    "median_sps"):
            assert float(row[key]) == pytest.approx(s[key]), key
        assert row["solve_rate"] == "" and row["median_steps_to_solve"] == ""
    assert table[0]["best"] == "1" and table[1]["best"] == "0"
    # Hand check: 400..404 -> IQM of 5 = mean of the middle 3 (int(5/4) = 1 cut each side) = 402.
    assert float(table[0]["best_iqm"]) == pytest.approx(402.0)

    md = (root / "report.md").read_text()
    assert "| # | group |" in md and "**`optimizer.lr=0.001`**" in md
    assert "rliable" in md and "Agarwal et al. 2021" in md and "stratified" in md
    assert "## Probability of improvement (final eval return)" in md
    png = (root / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000

    rc, out, _ = run_main([str(root), "--sort", "final", *FAST], capsys)
    rows = [line for line in out.splitlines() if "optimizer.lr=" in line and "[" in line]
    assert rc == 0 and rows[0].lstrip().startswith("*1") and "optimizer.lr=0.01 " in rows[0] + " "
    assert "Probability of improvement" not in out


def test_report_is_reproducible(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_sweep(tmp_path / "s", {"0.1": [1, 5, 2, 8, 3], "0.2": [4, 4, 9, 1, 7]})
    assert run_main([str(root), *FAST], capsys)[0] == 0
    first = (root / "report.csv").read_text()
    assert run_main([str(root), *FAST], capsys)[0] == 0
    assert (root / "report.csv").read_text() == first


def test_out_dir_and_no_eval_points(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path / "run" / "0", ["seed=0"])  # nothing evaluated yet anywhere
    rc, out, _ = run_main([str(tmp_path / "run"), "--out", str(tmp_path / "o"), *FAST], capsys)
    assert rc == 0 and "no curves.png" in out
    assert (tmp_path / "o" / "report.md").is_file() and not (tmp_path / "o" / "curves.png").exists()
    assert not (tmp_path / "run" / "report.md").exists()


@pytest.mark.parametrize("make", ["missing", "empty", "no-runs"])
def test_missing_or_empty_dir_exits_2_with_one_line(tmp_path: Path, make: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "d"
    if make != "missing":
        target.mkdir()
    if make == "no-runs":
        (target / "notes").mkdir()
        (target / "notes" / "x.txt").write_text("hi")
    rc, out, err = run_main([str(target)], capsys)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("dqnrun report: error:")
    assert ("does not exist" if make == "missing" else "no run directories") in err


def test_usage_errors_and_help(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, out, err = run_main([str(tmp_path), "--bogus"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--bogus" in err
    rc, out, err = run_main([], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    rc, out, err = run_main([str(tmp_path), "--sort", "median"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    rc, out, err = run_main(["--help"], capsys)
    assert rc == 0 and out.startswith("usage: dqnrun report") and "--group-by" in out and "--compare" in out


ALLOWED_DQNRUN_IMPORTS = {"dqnrun.run.artifacts", "dqnrun.config.keys"}


def test_report_imports_no_training_code() -> None:
    # The report reads run directories of any dqnrun version: of dqnrun it may import only its own modules and
    # the two standard-library-only modules that define what a run directory holds.
    modules = sorted(REPORT_PKG.glob("*.py"))
    assert {m.stem for m in modules} >= {"__init__", "runs", "stats", "render", "plot", "command"}
    imported = []
    for module in modules:
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                imported += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"relative import in {module.name}"
                imported.append(node.module or "")
    assert imported, "the AST walk found no imports at all"
    offenders = {m for m in imported if (m == "dqnrun" or m.startswith("dqnrun."))
                 and not m.startswith("dqnrun.report.") and m not in ALLOWED_DQNRUN_IMPORTS}
    assert offenders == set(), offenders
    assert set(imported) >= ALLOWED_DQNRUN_IMPORTS
    assert not (REPORT_PKG.parent / "report.py").exists()
