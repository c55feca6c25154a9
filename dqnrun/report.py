"""`dqnrun report DIR`: per-configuration statistics over the seeds of a sweep, the way Agarwal et al.,
"Deep RL at the Edge of the Statistical Precipice" (NeurIPS 2021) recommend: interquartile mean (IQM) with
95% stratified-bootstrap confidence intervals, and probability of improvement between configurations, all
through rliable.

This module reads run files only (results.json, .hydra/overrides.yaml) and imports no other dqnrun module,
so it keeps working on sweeps written by older versions of dqnrun, whose config classes may have changed.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import shutil
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

PROG = "dqnrun report"
DEFAULT_REPS = 2000
DEFAULT_SEED = 0
CONFIDENCE = 0.95

# Overrides that do not change what is trained, so runs that differ only in them are seeds of one config.
BOOKKEEPING_KEYS = frozenset({"seed", "resume", "log.progress", "name", "tags"})
# Keys read from results.json for --group-by (they are run metadata, not only overrides).
RESULT_KEYS = ("name", "tags", "env_id")
# Folders a run writes inside its own directory: never other runs, and checkpoints/tb can be large.
RUN_OWN_DIRS = frozenset({"checkpoints", "tb", ".hydra", "videos", "wandb"})

FINISHED, FAILED, UNFINISHED = "finished", "failed", "unfinished"
METRICS = ("best", "final")
OUTPUT_FILES = ("report.md", "report.csv", "curves.png")


@dataclass
class Run:
    """One run directory: its overrides, its results.json (None if missing/unreadable) and its state."""

    path: Path
    rel: str
    overrides: list[str] | None
    results: dict[str, Any] | None
    state: str
    reason: str = ""
    label: str = ""
    tokens: tuple[str, ...] = ()


# ----------------------------------------------------------------------------------------------- discovery


def is_run_dir(path: Path) -> bool:
    """A run directory holds results.json or .hydra/overrides.yaml."""
    return (path / "results.json").is_file() or (path / ".hydra" / "overrides.yaml").is_file()


def find_run_dirs(root: Path) -> list[Path]:
    """Run directories under ``root`` (``root`` itself included), at any depth, in path order."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        inside_run = is_run_dir(here)
        if inside_run:
            found.append(here)
        # Hidden folders (.submitit, .git, .hydra) hold launcher/VCS state, not runs.
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and not (inside_run and d in RUN_OWN_DIRS)
        )
    return sorted(found, key=lambda p: _natural_key(p.relative_to(root).as_posix()))


def _natural_key(text: str) -> list[Any]:
    # Hydra job dirs are 0, 1, ..., 10: sort them as numbers, not as strings.
    parts: list[Any] = []
    for part in text.split("/"):
        parts.append((0, int(part), "") if part.isdigit() else (1, 0, part))
    return parts


def _read_overrides(path: Path) -> list[str] | None:
    f = path / ".hydra" / "overrides.yaml"
    if not f.is_file():
        return None
    try:
        data = yaml.safe_load(f.read_text())
    except (OSError, yaml.YAMLError):
        return None
    if data is None:
        return []
    return [str(x) for x in data] if isinstance(data, list) else None


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _progress(results: dict[str, Any]) -> str:
    steps, total = results.get("steps"), results.get("total_steps")
    if steps is None:
        return ""
    return f"step {steps}/{total}" if total is not None else f"step {steps}"


def load_run(path: Path, root: Path | None = None) -> Run:
    """Read one run directory into a :class:`Run` and classify it as finished, failed or unfinished."""
    rel = path.relative_to(root).as_posix() if root is not None else str(path)
    overrides = _read_overrides(path)
    f = path / "results.json"
    if not f.is_file():
        return Run(path, rel, overrides, None, UNFINISHED, "no results.json yet")
    try:
        results = json.loads(f.read_text())
        if not isinstance(results, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        # A run killed mid-write or a disk hiccup: the run may still be going, so it is not failed.
        return Run(path, rel, overrides, None, UNFINISHED, f"unreadable results.json ({type(e).__name__}: {e})")
    if overrides is None and isinstance(results.get("overrides"), list):
        overrides = [str(x) for x in results["overrides"]]
    status = results.get("status")
    progress = _progress(results)
    if status == "completed":
        return Run(path, rel, overrides, results, FINISHED)
    if status == "failed":
        error = str(results.get("error") or "no error message").strip().splitlines()
        return Run(path, rel, overrides, results, FAILED, f"failed: {error[0] if error else 'no error message'}")
    if status == "interrupted":
        where = f" at {progress}" if progress else ""
        return Run(path, rel, overrides, results, UNFINISHED, f"interrupted{where} (resumable)")
    if status == "running":
        # A run that was killed hard (OOM, node lost) stays "running" forever: the age tells them apart.
        try:
            age = f", results.json updated {_age(time.time() - f.stat().st_mtime)} ago"
        except OSError:
            age = ""
        where = f" ({progress}{age})" if progress else (f" ({age[2:]})" if age else "")
        return Run(path, rel, overrides, results, UNFINISHED, f"running{where}")
    what = "no status" if status is None else f"unknown status {status!r}"
    return Run(path, rel, overrides, results, UNFINISHED, f"{what} in results.json")


def load_runs(root: Path) -> list[Run]:
    """All run directories under ``root``, read and classified."""
    return [load_run(p, root) for p in find_run_dirs(root)]


# ------------------------------------------------------------------------------------------------ grouping


def split_override(override: str) -> tuple[str, str | None]:
    """``"+a.b=1"`` -> ``("a.b", "1")``; ``"~a.b"`` -> ``("~a.b", None)``. ``+``/``++`` are dropped because
    adding a key and setting it configure the same run; ``~`` (deletion) is kept, it is a different config."""
    key, sep, value = override.strip().partition("=")
    key = key.lstrip("+")
    return key, (value if sep else None)


def _is_hydra_key(key: str) -> bool:
    return key.lstrip("~").replace("/", ".").split(".")[0] == "hydra"


def config_overrides(overrides: Sequence[str] | None) -> list[str]:
    """The overrides that define a configuration: normalised (``+k=v`` -> ``k=v``), sorted, without seed,
    hydra* keys and bookkeeping keys (:data:`BOOKKEEPING_KEYS`)."""
    keep = set()
    for o in overrides or []:
        key, value = split_override(o)
        if not key or _is_hydra_key(key) or key.lstrip("~") in BOOKKEEPING_KEYS:
            continue
        keep.add(key if value is None else f"{key}={value}")
    return sorted(keep)


def _override_value(run: Run, key: str) -> str | None:
    for o in run.overrides or []:
        k, v = split_override(o)
        if k == key and v is not None:
            return v
    return None


def _group_value(run: Run, key: str) -> str:
    res = run.results or {}
    if key == "tags":
        tags = res.get("tags")
        if tags is None:
            raw = _override_value(run, "tags")
            tags = [t.strip() for t in raw.strip("[]").split(",") if t.strip()] if raw else []
        if isinstance(tags, str):
            tags = [tags]
        return "+".join(sorted(str(t) for t in tags)) or "(none)"
    if key in RESULT_KEYS:
        value = res.get(key)
        if value is None:
            value = _override_value(run, key)
        if value is None:
            return "(none)" if key == "name" and run.results is not None else "(unknown)"
        return str(value)
    value = _override_value(run, key)
    if value is not None:
        return value
    # Not overridden: results.json may still record the value the run used (e.g. total_steps, seed).
    if key in res and isinstance(res[key], (str, int, float, bool)):
        return str(res[key])
    return "(default)"


def group_tokens(run: Run, by: Sequence[str] | None = None) -> tuple[str, ...]:
    """What defines the group of ``run``: its config overrides (:func:`config_overrides`), or with ``by`` the
    ``key=value`` of those keys only (``tags=a+b`` for tags)."""
    if by:
        return tuple(f"{k}={_group_value(run, k)}" for k in by)
    return tuple(config_overrides(run.overrides))


def group_runs(runs: Sequence[Run], by: Sequence[str] | None = None) -> dict[str, list[Run]]:
    """Runs grouped by label (their :func:`group_tokens` joined by spaces, or ``(defaults)``), labels in sorted
    order, runs in discovery order. Sets each run's ``tokens`` and ``label``."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        run.tokens = group_tokens(run, by)
        run.label = " ".join(run.tokens) or "(defaults)"
        groups.setdefault(run.label, []).append(run)
    return dict(sorted(groups.items()))


# ---------------------------------------------------------------------------------------------- statistics


def _bootstrap_ci(scores: np.ndarray | list[np.ndarray], statistic: Callable[..., Any], reps: int, seed: int,
                  ) -> np.ndarray:
    """rliable's 95% stratified-bootstrap percentile CI of ``statistic(scores)``, seeded: shape (2, ...), lower
    and upper bounds. ``scores`` is one (runs x tasks ...) array, or a list of them, each resampled over its own
    runs."""
    from rliable import library as rly

    # rliable's StratifiedBootstrap draws its resampling indices from numpy's *global* RNG
    # (np.random.choice in update_indices), ignoring the random_state it forwards to arch (and arch 7
    # deprecates random_state). So seed the global RNG around each call, and restore it for the caller.
    # Seeding per call also makes a group's CI independent of which other groups are in the sweep.
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        _, ci = rly.get_interval_estimates({"x": scores}, statistic, reps=reps, confidence_interval_size=CONFIDENCE)
    finally:
        np.random.set_state(state)
    return ci["x"]


def _as_scores(x: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    return a.reshape(-1, 1) if a.ndim <= 1 else a


def _iqm_fast(scores: np.ndarray) -> np.ndarray:
    # Same statistic as rliable's metrics.aggregate_iqm (scipy.stats.trim_mean(., 0.25, axis=None): drop
    # int(n/4) scores at each end of all runs x tasks, mean the rest; tests check they agree), about 20x
    # faster. The bootstrap calls it once per replicate, and scipy's per-call overhead made a 20-group
    # report take over 10 s at 2000 reps.
    flat = np.sort(scores, axis=None)
    cut = int(0.25 * flat.size)
    return np.array([flat[cut:flat.size - cut].mean()])


def _poi_fast(x: np.ndarray, y: np.ndarray) -> float:
    # Same statistic as rliable's metrics.probability_of_improvement (per task, Mann-Whitney U / (n_x n_y),
    # i.e. P(X > Y) + P(X = Y) / 2, averaged over tasks; tests check they agree), without scipy's
    # mannwhitneyu, whose ~0.7 ms per call made each pair's bootstrap take over a second.
    gt = (x[:, None, :] > y[None, :, :]).mean(axis=(0, 1))
    eq = (x[:, None, :] == y[None, :, :]).mean(axis=(0, 1))
    return float(np.mean(gt + 0.5 * eq))


def iqm(x: Sequence[float] | np.ndarray) -> float | None:
    """Interquartile mean (rliable ``metrics.aggregate_iqm``, 25% trimmed mean) of scores ``x``: one score per
    run, shape (n_runs,) or (n_runs, n_tasks). None for no scores."""
    scores = _as_scores(x)
    if scores.size == 0:
        return None
    from rliable import metrics

    return float(metrics.aggregate_iqm(scores))


def interval(x: Sequence[float] | np.ndarray, reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED,
             ) -> tuple[float, float] | None:
    """95% stratified-bootstrap percentile CI (rliable ``get_interval_estimates``, ``reps`` replicates,
    seeded) of the IQM of scores ``x``, shape (n_runs,) or (n_runs, n_tasks). A single run's CI is its score;
    None for no scores."""
    scores = _as_scores(x)
    if scores.size == 0:
        return None
    if scores.shape[0] == 1:
        v = float(_iqm_fast(scores)[0])
        return v, v
    ci = _bootstrap_ci(scores, _iqm_fast, reps, seed)
    return float(ci[0, 0]), float(ci[1, 0])


def probability_of_improvement(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray,
                               reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED,
                               ) -> tuple[float, float, float] | None:
    """P(X > Y) (ties count half) of scores ``x`` over scores ``y`` (one per run; shapes (n_x,), (n_y,)),
    rliable ``metrics.probability_of_improvement``, and its 95% CI from rliable's stratified independent
    bootstrap (each side resampled over its own runs). Returns (p, low, high), or None if a side is empty."""
    sx, sy = _as_scores(x), _as_scores(y)
    if sx.size == 0 or sy.size == 0:
        return None
    from rliable import metrics

    p = float(metrics.probability_of_improvement(sx, sy))
    if sx.shape[0] == 1 and sy.shape[0] == 1:
        return p, p, p
    lo, hi = np.ravel(_bootstrap_ci([sx, sy], _poi_fast, reps, seed))
    return p, float(lo), float(hi)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def eval_history(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """A run's eval curve as (steps, returns), both shape (n_points,), steps increasing (a step evaluated twice,
    e.g. around a resume, keeps its last return). Empty arrays if it has none."""
    points: dict[float, float] = {}
    for item in (run.results or {}).get("eval_history") or []:
        if isinstance(item, (list, tuple)) and len(item) >= 2:
            step, ret = _finite(item[0]), _finite(item[1])
            if step is not None and ret is not None:
                points[step] = ret
    steps = np.array(sorted(points), dtype=float)
    return steps, np.array([points[s] for s in steps], dtype=float)


def eval_return(run: Run, metric: str) -> float | None:
    """A run's ``best`` or ``final`` eval return (from results.json; from its eval_history if the field is
    missing, as in runs that predate it). None if it never evaluated."""
    res = run.results or {}
    key = f"{metric}_eval_return"
    if key in res:
        return _finite(res[key])
    _, returns = eval_history(run)
    if returns.size == 0:
        return None
    return float(returns.max() if metric == "best" else returns[-1])


def _scores(runs: Sequence[Run], metric: str) -> list[float]:
    # The scores the statistics use: one per finished run that evaluated.
    return [v for v in (eval_return(r, metric) for r in runs if r.state == FINISHED) if v is not None]


def _finite_values(runs: Sequence[Run], key: str) -> list[float]:
    return [v for v in (_finite((r.results or {}).get(key)) for r in runs) if v is not None]


def summarize(group: Sequence[Run], label: str = "", reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED,
              ) -> dict[str, Any]:
    """Statistics of one group over its finished runs.

    Keys: label, n (finished runs), failed, unfinished, and for m in best/final: m_n (finished runs that
    evaluated), m_mean, m_iqm, m_ci_low, m_ci_high (eval return); solved (runs), solve_rate (0..1, None if no
    finished run has a solved_score), median_steps_to_solve (env steps, None if none solved), median_sps (env steps per
    second). Missing values are None.
    """
    finished = [r for r in group if r.state == FINISHED]
    out: dict[str, Any] = {
        "label": label or (group[0].label if group else ""),
        "tokens": group[0].tokens if group else (),
        "n": len(finished),
        "failed": sum(r.state == FAILED for r in group),
        "unfinished": sum(r.state == UNFINISHED for r in group),
    }
    for m in METRICS:
        values = _scores(finished, m)
        ci = interval(values, reps, seed)
        out[f"{m}_n"] = len(values)
        out[f"{m}_mean"] = float(np.mean(values)) if values else None
        out[f"{m}_iqm"] = iqm(values)
        out[f"{m}_ci_low"], out[f"{m}_ci_high"] = ci if ci else (None, None)
    # A solve rate needs a target: without any solved_score, "0 solved" would read as a failure.
    has_target = bool(_finite_values(finished, "solved_score"))
    solve_steps = _finite_values(finished, "solved_at_step")
    out["solved"] = len(solve_steps) if has_target else None
    out["solve_rate"] = len(solve_steps) / len(finished) if has_target else None
    out["median_steps_to_solve"] = float(np.median(solve_steps)) if solve_steps else None
    sps = _finite_values(finished, "sps")
    out["median_sps"] = float(np.median(sps)) if sps else None
    return out


def sort_summaries(summaries: Sequence[dict[str, Any]], by: str = "best") -> list[dict[str, Any]]:
    """Summaries by descending IQM of the ``by`` (best/final) eval return, groups without one last; sets
    ``rank`` (1-based) and ``is_best`` (all groups tied at the top IQM)."""
    key = f"{by}_iqm"
    ordered = sorted(summaries, key=lambda s: (s[key] is None, -(s[key] or 0.0), s["label"]))
    top = ordered[0][key] if ordered else None
    for i, s in enumerate(ordered, 1):
        s["rank"] = i
        s["is_best"] = top is not None and s[key] is not None and math.isclose(s[key], top, abs_tol=1e-12)
    return ordered


def compare(groups: dict[str, Sequence[Run]], order: Sequence[str], metric: str = "final",
            reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED) -> dict[tuple[str, str], tuple[float, float, float]]:
    """Probability of improvement for every ordered pair of groups (labels in ``order``) that both have finished
    runs with a ``metric`` eval return: {(x, y): (P(x > y), low, high)}."""
    scores = {label: _scores(groups[label], metric) for label in order}
    labels = [label for label in order if scores[label]]
    out: dict[tuple[str, str], tuple[float, float, float]] = {}
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            res = probability_of_improvement(scores[a], scores[b], reps, seed)
            if res is None:
                continue
            p, lo, hi = res
            out[(a, b)] = (p, lo, hi)
            # With ties counted half, P(Y > X) = 1 - P(X > Y) on every bootstrap resample, so the reverse
            # pair's CI is the mirror image: no second bootstrap needed.
            out[(b, a)] = (1.0 - p, 1.0 - hi, 1.0 - lo)
    return out


def group_curve(group: Sequence[Run], reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED,
                ) -> dict[str, np.ndarray] | None:
    """Mean eval return over a group's non-failed runs with eval points, on the union of their eval steps, with a
    95% stratified-bootstrap CI of that mean (rliable). Each run is linearly interpolated within its own step
    range only (no extrapolation), so runs that stopped early drop out past their last eval.

    Returns arrays of shape (n_steps,): steps (env steps), mean, low, high, n (runs covering each step), and runs
    (the list of runs drawn), or None if no run has eval points.
    """
    curves = [(r, *eval_history(r)) for r in group if r.state != FAILED]
    curves = [(r, s, v) for r, s, v in curves if s.size]
    if not curves:
        return None
    grid = np.unique(np.concatenate([s for _, s, _ in curves]))
    values = np.full((len(curves), grid.size), np.nan)
    for i, (_, s, v) in enumerate(curves):
        inside = (grid >= s[0]) & (grid <= s[-1])
        values[i, inside] = np.interp(grid[inside], s, v)
    covered = ~np.isnan(values)
    n = covered.sum(axis=0)
    mean = np.nanmean(values, axis=0)
    low, high = mean.copy(), mean.copy()
    # Steps covered by the same set of runs form one (runs x steps) block: one vectorised bootstrap per block
    # gives per-step CIs in a few calls rather than one per step (a group has at most ~2 blocks per run).
    patterns, block_of = np.unique(covered.T, axis=0, return_inverse=True)
    for b, pattern in enumerate(patterns):
        cols = np.flatnonzero(block_of.ravel() == b)
        block = values[pattern][:, cols]
        if block.shape[0] < 2:
            continue
        low[cols], high[cols] = _bootstrap_ci(block[:, None, :], lambda s: s.mean(axis=0)[0], reps, seed)
    return {"steps": grid, "mean": mean, "low": low, "high": high, "n": n, "runs": [r for r, _, _ in curves]}


def shared_solved_score(runs: Sequence[Run]) -> float | None:
    """The solved_score all non-failed runs that record one share, else None."""
    # Failed runs may have died before writing their settings; they are not drawn either.
    scores = {_finite(r.results["solved_score"]) for r in runs
              if r.results is not None and r.state != FAILED and "solved_score" in r.results}
    return scores.pop() if len(scores) == 1 and None not in scores else None


# ------------------------------------------------------------------------------------------------- output


def fmt(x: float | None) -> str:
    """A return/probability for humans: '-' for None, 1 decimal from 1 up, 3 significant digits below."""
    if x is None:
        return "-"
    return f"{x:.1f}" if abs(x) >= 1 else f"{x:.3g}"


def fmt_steps(x: float | None) -> str:
    """Env steps for humans: 950, 12.5k, 1.2M."""
    if x is None:
        return "-"
    if abs(x) >= 1e6:
        return f"{x / 1e6:.3g}M"
    if abs(x) >= 1e4:
        return f"{x / 1e3:.3g}k"
    return f"{x:.0f}"


def _with_ci(s: dict[str, Any], m: str) -> str:
    if s[f"{m}_iqm"] is None:
        return "-"
    return f"{fmt(s[f'{m}_iqm'])} [{fmt(s[f'{m}_ci_low'])}, {fmt(s[f'{m}_ci_high'])}]"


def _solved(s: dict[str, Any]) -> str:
    return "-" if s["solve_rate"] is None else f"{s['solved']}/{s['n']}"


# (file header, terminal header) per column; the terminal puts "best"/"final" on a line above to stay narrow.
COLUMNS: list[tuple[str, str, Callable[[dict[str, Any]], str]]] = [
    ("n", "n", lambda s: str(s["n"])),
    ("failed", "fail", lambda s: str(s["failed"])),
    ("unfinished", "unf", lambda s: str(s["unfinished"])),
    ("best IQM [95% CI]", "IQM [95% CI]", lambda s: _with_ci(s, "best")),
    ("best mean", "mean", lambda s: fmt(s["best_mean"])),
    ("final IQM [95% CI]", "IQM [95% CI]", lambda s: _with_ci(s, "final")),
    ("final mean", "mean", lambda s: fmt(s["final_mean"])),
    ("solved", "solved", _solved),
    ("median steps to solve", "to solve", lambda s: fmt_steps(s["median_steps_to_solve"])),
    ("median SPS", "SPS", lambda s: "-" if s["median_sps"] is None else f"{s['median_sps']:.0f}"),
]
_SUPER = {3: "best eval return", 5: "final eval return"}


def _rank(s: dict[str, Any]) -> str:
    return f"{'*' if s.get('is_best') else ''}{s.get('rank', '')}"


def common_overrides(token_lists: Sequence[Sequence[str]]) -> list[str]:
    """The overrides (:func:`group_tokens`) every one of several groups shares (none for a single group)."""
    if len(token_lists) < 2:
        return []
    return sorted(set.intersection(*(set(t) for t in token_lists)))


def strip_common(tokens: Sequence[str], common: Sequence[str], label: str = "(defaults)") -> str:
    """A group's ``tokens`` without the ``common`` ones, joined by spaces (``label`` if nothing is left)."""
    # Tokens, not label.split(): an override value may hold spaces (network.hidden_sizes=[64, 64]).
    return " ".join(t for t in tokens if t not in common) or label


def format_table(summaries: Sequence[dict[str, Any]], width: int = 120, common: Sequence[str] = ()) -> str:
    """The terminal table, at most ``width`` columns; labels lose the ``common`` tokens (printed above the
    table by the caller), and labels that still do not fit wrap onto more lines."""
    labels = [strip_common(s["tokens"], common, s["label"]) for s in summaries]
    cells = [[_rank(s)] + [f(s) for _, _, f in COLUMNS] for s in summaries]
    heads = ["#"] + [h for _, h, _ in COLUMNS]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]

    def span(i: int) -> int:
        # A super-header spans its column and the mean column to its right.
        return widths[i + 1] + 2 + widths[i + 2]

    for i, text in _SUPER.items():
        widths[i + 1] += max(0, len(text) - span(i))
    fixed = sum(widths) + 2 * len(widths)
    label_w = max(20, min(max([len("group")] + [len(x) for x in labels]), width - fixed))

    def line(rank: str, label: str, rest: list[str]) -> str:
        return "  ".join([rank.rjust(widths[0]), label.ljust(label_w)] +
                         [c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)]).rstrip()

    # line() right-aligns cells; a super-header starts where its first column starts and covers the next one.
    sup: list[str | None] = [" " * w for w in widths[1:]]
    for i, text in _SUPER.items():
        sup[i], sup[i + 1] = text.center(span(i)), None
    parts = [" " * widths[0], " " * label_w] + [x for x in sup if x is not None]
    out = ["  ".join(parts).rstrip(), line("#", "group", heads[1:]), "-" * min(width, fixed + label_w)]
    for label, c in zip(labels, cells, strict=True):
        wrapped = textwrap.wrap(label, label_w, break_on_hyphens=False) or [""]
        out.append(line(c[0], wrapped[0], c[1:]))
        out += [line("", p, [""] * (len(heads) - 1)) for p in wrapped[1:]]
    return "\n".join(out)


def _census(runs: Sequence[Run], summaries: Sequence[dict[str, Any]]) -> str:
    counts = {st: sum(r.state == st for r in runs) for st in (FINISHED, FAILED, UNFINISHED)}
    return (f"{len(runs)} run{'s' * (len(runs) != 1)} in {len(summaries)} group{'s' * (len(summaries) != 1)} "
            f"({counts[FINISHED]} finished, {counts[FAILED]} failed, {counts[UNFINISHED]} unfinished)")


def _problem_runs(runs: Sequence[Run]) -> list[Run]:
    return [r for r in runs if r.state != FINISHED]


def _method_note(reps: int, seed: int, sort: str) -> str:
    return (f"Statistics over finished runs only (one score per seed): IQM = interquartile mean (25% trimmed mean); "
            f"95% CIs are stratified-bootstrap percentile intervals ({reps} replicates, seed {seed}) via rliable, "
            f"following Agarwal et al. 2021, \"Deep RL at the Edge of the Statistical Precipice\". "
            f"Rows sorted by the IQM of the {sort} eval return; * marks the best.")


def _best_note(summaries: Sequence[dict[str, Any]], sort: str) -> str | None:
    # A top row whose CI overlaps the runner-up's is not a clear winner: say so rather than let '*' overclaim.
    ranked = [s for s in summaries if s[f"{sort}_iqm"] is not None]
    if len(ranked) < 2:
        return None
    a, b = ranked[0], ranked[1]
    if a[f"{sort}_ci_low"] <= b[f"{sort}_ci_high"]:
        return (f"the 95% CI of #{a['rank']} overlaps that of #{b['rank']}: the ranking of the top groups is not "
                f"settled by these seeds (see --compare)")
    return None


FEW_SEEDS = 5


def _few_seeds_note(summaries: Sequence[dict[str, Any]]) -> str | None:
    # The percentile bootstrap resamples the seeds there are: with 2-4 of them it cannot see how spread out
    # other seeds would be, so its CIs come out too narrow. Say so where it applies.
    few = [s for s in summaries if 0 < s["n"] < FEW_SEEDS]
    if not few:
        return None
    return (f"{', '.join('#' + str(s['rank']) for s in few)} ha{'ve' if len(few) > 1 else 's'} fewer than "
            f"{FEW_SEEDS} finished runs: bootstrap CIs from so few seeds understate the uncertainty")


def _notes(summaries: Sequence[dict[str, Any]], sort: str) -> list[str]:
    return [n for n in (_best_note(summaries, sort), _few_seeds_note(summaries)) if n]


def _verdict(x: str, y: str, lo: float, hi: float) -> str:
    if lo > 0.5:
        return f"{x} better (CI above 0.5)"
    if hi < 0.5:
        return f"{y} better (CI below 0.5)"
    return ""


def format_terminal(root: Path, runs: Sequence[Run], summaries: Sequence[dict[str, Any]], sort: str, reps: int,
                    seed: int, cmp: dict[tuple[str, str], tuple[float, float, float]] | None, metric: str,
                    width: int = 120) -> str:
    """Everything `dqnrun report` prints: header, table, notes, problem runs and the comparison."""
    out = [f"{root}: {_census(runs, summaries)}"]
    common = common_overrides([s["tokens"] for s in summaries])
    if common:
        out += textwrap.wrap("all groups: " + " ".join(common), width, break_on_hyphens=False)
    out += ["", format_table(summaries, width, common), ""]
    out += textwrap.wrap(_method_note(reps, seed, sort), width)
    for note in _notes(summaries, sort):
        out += textwrap.wrap(f"Note: {note}.", width)
    problems = _problem_runs(runs)
    if problems:
        out += ["", "Incomplete or failed runs (not in the statistics; unfinished runs' curves are plotted):"]
        pw = max(len(r.rel) for r in problems)
        rank = {s["label"]: s["rank"] for s in summaries}
        for r in problems:  # one line each, unwrapped: a path and its reason stay greppable and copyable
            out.append(f"  {r.rel.ljust(pw)}  {r.reason} (group #{rank.get(r.label, '?')})")
    if cmp is not None:
        out += ["", *_format_compare_text(summaries, cmp, metric, width)]
    return "\n".join(out)


def _format_compare_text(summaries: Sequence[dict[str, Any]], cmp: dict[tuple[str, str], tuple[float, float, float]],
                         metric: str, width: int = 120) -> list[str]:
    order = [s["label"] for s in summaries]
    rank = {s["label"]: s["rank"] for s in summaries}
    pairs = [(a, b, cmp[(a, b)]) for i, a in enumerate(order) for b in order[i + 1:] if (a, b) in cmp]
    head = (f"Probability of improvement on the {metric} eval return, 95% stratified-bootstrap CI (rliable): "
            "P(#i > #j) = chance a seed of row i beats a seed of row j (ties count half):")
    out = textwrap.wrap(head, width)
    if not pairs:
        return [*out, "  nothing to compare: fewer than two groups have finished runs"]
    for a, b, (p, lo, hi) in pairs:
        x, y = f"#{rank[a]}", f"#{rank[b]}"
        out.append(f"  P({x} > {y}) = {p:.2f} [{lo:.2f}, {hi:.2f}]  {_verdict(x, y, lo, hi)}".rstrip())
    return out


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "'")


def render_markdown(root: Path, runs: Sequence[Run], summaries: Sequence[dict[str, Any]], sort: str, reps: int,
                    seed: int, cmp: dict[tuple[str, str], tuple[float, float, float]] | None, metric: str) -> str:
    """report.md: the table (full labels), the method note, incomplete/failed runs and the comparison."""
    heads = ["#", "group"] + [h for h, _, _ in COLUMNS]
    out = [f"# dqnrun report: {root.resolve().name}", "",
           f"`{_md_escape(str(root))}`: {_census(runs, summaries)}.", "",
           "| " + " | ".join(heads) + " |",
           "|" + "|".join(["---:", ":---"] + ["---:"] * len(COLUMNS)) + "|"]
    for s in summaries:
        label = f"**`{_md_escape(s['label'])}`**" if s.get("is_best") else f"`{_md_escape(s['label'])}`"
        out.append("| " + " | ".join([_rank(s), label] + [f(s) for _, _, f in COLUMNS]) + " |")
    out += ["", _method_note(reps, seed, sort)]
    for note in _notes(summaries, sort):
        out += ["", f"Note: {note}."]
    problems = _problem_runs(runs)
    out += ["", "## Incomplete or failed runs", ""]
    if problems:
        out.append("Not in the statistics; unfinished runs' eval curves are part of curves.png.")
        out.append("")
        out += [f"- `{_md_escape(r.rel)}` ({_md_escape(r.label)}): {_md_escape(r.reason)}" for r in problems]
    else:
        out.append("None: every run finished.")
    if cmp is not None:
        out += ["", f"## Probability of improvement ({metric} eval return)", "",
                f"P(row > column) with its 95% stratified-bootstrap CI (rliable, {reps} replicates): the probability "
                "that a random seed of the row's configuration beats a random seed of the column's (ties count "
                "half). A CI above 0.5 means the row is better with 95% confidence.", ""]
        order = [s for s in summaries if any(k[0] == s["label"] for k in cmp)]
        if len(order) < 2:
            out.append("Nothing to compare: fewer than two groups have finished runs.")
        else:
            out.append("| | " + " | ".join(f"#{s['rank']}" for s in order) + " |")
            out.append("|---:|" + "|".join([":---:"] * len(order)) + "|")
            for a in order:
                row = []
                for b in order:
                    if a is b:
                        row.append("-")
                    else:
                        p, lo, hi = cmp[(a["label"], b["label"])]
                        cell = f"{p:.2f} [{lo:.2f}, {hi:.2f}]"
                        row.append(f"**{cell}**" if lo > 0.5 else cell)
                out.append(f"| #{a['rank']} | " + " | ".join(row) + " |")
    return "\n".join(out) + "\n"


CSV_FIELDS = ["rank", "best", "group", "n", "failed", "unfinished",
              "best_mean", "best_iqm", "best_ci_low", "best_ci_high", "best_n",
              "final_mean", "final_iqm", "final_ci_low", "final_ci_high", "final_n",
              "solved", "solve_rate", "median_steps_to_solve", "median_sps"]


def render_csv(summaries: Sequence[dict[str, Any]]) -> str:
    """report.csv: one row per group (:data:`CSV_FIELDS`), plain numbers, empty cells for missing values."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for s in summaries:
        row = {**s, "group": s["label"], "best": int(bool(s.get("is_best")))}
        w.writerow(["" if row.get(k) is None else repr(row[k]) if isinstance(row[k], float) else row[k]
                    for k in CSV_FIELDS])
    return buf.getvalue()


def _short(label: str, n: int = 48) -> str:
    # Keep both ends: sweeps often differ in the last override as much as in the first.
    if len(label) <= n:
        return label
    head = (n - 1) // 2
    return label[:head] + "…" + label[len(label) - (n - 1 - head):]


def plot_curves(path: Path, title: str, groups: dict[str, Sequence[Run]], order: Sequence[str],
                reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED) -> bool:
    """Write curves.png: per group, mean eval return vs env steps with a shaded 95% bootstrap CI, groups in
    ``order``. Returns False (and writes nothing) if no run has eval points."""
    all_curves = {label: group_curve(groups[label], reps, seed) for label in order}
    curves = {k: v for k, v in all_curves.items() if v is not None}
    rank = {label: i for i, label in enumerate(order, 1)}
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Overrides every group shares say nothing in a legend: the subtitle says them once, as the table does.
    common = common_overrides([groups[label][0].tokens for label in order])
    many = len(curves) > 8
    fig, ax = plt.subplots(figsize=(12, 7), dpi=100)
    if len(curves) <= 10:
        colors = list(plt.get_cmap("tab10").colors)
    else:
        # tab20 comes in dark/light pairs of one hue: dark ones first, so neighbouring ranks differ in hue.
        tab20 = list(plt.get_cmap("tab20").colors)
        colors = tab20[0::2] + tab20[1::2]
    # Markers help read a few eval points; on dense or many curves they are clutter.
    markers = not many and max(c["steps"].size for c in curves.values()) <= 30
    for label, c in curves.items():
        i = rank[label] - 1
        color = colors[i % len(colors)]
        runs = c["runs"]
        incomplete = sum(r.state == UNFINISHED for r in runs)
        shown = strip_common(groups[label][0].tokens, common, label)
        # The table's row number, so a line can be found in the table (order is the table's order).
        legend = f"#{i + 1} {_short(shown, 48 if many else 72)} (n={len(runs)}"
        legend += f", {incomplete} incomplete)" if incomplete else ")"
        marker = "o" if markers else None
        ax.plot(c["steps"], c["mean"], color=color, lw=1.5 if many else 2, marker=marker, ms=4, label=legend)
        ax.fill_between(c["steps"], c["low"], c["high"], color=color, alpha=0.08 if many else 0.18, lw=0)
    all_runs = [r for label in curves for r in groups[label]]
    solved = shared_solved_score(all_runs)
    if solved is not None:
        ax.axhline(solved, color="0.35", ls="--", lw=1.2, label=f"solved score ({fmt(solved)})")
    ax.set_xlabel("env steps")
    ax.set_ylabel("eval return")
    ax.set_title(title, fontsize=14, pad=22 if common else 10)
    sub = "mean over runs, shaded: 95% stratified-bootstrap CI of the mean (rliable)"
    if common:
        sub += "; all groups: " + _short(" ".join(common), 110)
    ax.text(0.5, 1.01, sub, transform=ax.transAxes, ha="center", va="bottom", fontsize=9, color="0.3")
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.01)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: fmt_steps(x)))
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if many:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    else:
        ax.legend(loc="best", fontsize=9, framealpha=0.9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


# -------------------------------------------------------------------------------------------------- the CLI


class _ParserExit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class _Parser(argparse.ArgumentParser):
    # argparse prints the whole usage and calls sys.exit; a subcommand should return a code and say one line.
    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{PROG}: error: {message} (see {PROG} --help)", file=sys.stderr)
        raise _ParserExit(2)

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        if message:
            print(message, file=sys.stderr, end="")
        raise _ParserExit(status)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `dqnrun report` (program name and subcommand excluded)."""
    p = _Parser(
        prog=PROG,
        description="Statistics over the seeds of a sweep: IQM and 95% stratified-bootstrap CIs of the best and "
                    "final eval returns per configuration (rliable; Agarwal et al. 2021). Prints a table and writes "
                    "report.md, report.csv and curves.png into DIR.",
        epilog="Runs are grouped by their overrides other than seed, hydra* keys and bookkeeping keys "
               f"({', '.join(sorted(BOOKKEEPING_KEYS - {'seed'}))}). Only finished runs enter the statistics.",
    )
    p.add_argument("dir", metavar="DIR", help="a multirun directory, or any directory holding run directories")
    p.add_argument("--group-by", metavar="KEY[,KEY...]",
                   help="group by these keys only: override keys (e.g. optimizer.lr) or name, tags, env_id")
    p.add_argument("--sort", choices=METRICS, default="best",
                   help="sort by the IQM of the best (default) or final eval return")
    p.add_argument("--compare", action="store_true",
                   help="also compare groups pairwise: probability of improvement with 95%% CIs")
    p.add_argument("--metric", choices=METRICS, default="final",
                   help="the eval return --compare uses (default: final)")
    p.add_argument("--reps", type=int, default=DEFAULT_REPS,
                   help=f"bootstrap replicates (default {DEFAULT_REPS})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"bootstrap seed, for reproducible CIs (default {DEFAULT_SEED})")
    p.add_argument("--out", metavar="OUTDIR", help="write report.md, report.csv, curves.png here instead of DIR")
    return p


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str]) -> int:
    """`dqnrun report` with ``argv`` (no program name or subcommand). Returns the exit code: 0 if a report was
    produced (even if some runs failed), 2 for bad usage, a missing DIR or no run directories, 1 if the report
    files cannot be written."""
    try:
        args = build_parser().parse_args(argv)
    except _ParserExit as e:
        return e.code
    if args.reps < 1:
        return _error("--reps must be at least 1")
    by = None
    if args.group_by is not None:
        by = [k.strip() for k in args.group_by.split(",") if k.strip()]
        if not by:
            return _error("--group-by needs at least one key, e.g. --group-by optimizer.lr")
    root = Path(args.dir)
    if not root.exists():
        return _error(f"{root} does not exist")
    if not root.is_dir():
        return _error(f"{root} is not a directory")
    runs = load_runs(root)
    if not runs:
        return _error(f"no run directories under {root} (a run directory holds results.json or "
                      ".hydra/overrides.yaml)")
    groups = group_runs(runs, by)
    summaries = sort_summaries([summarize(g, label, args.reps, args.seed) for label, g in groups.items()],
                               args.sort)
    order = [s["label"] for s in summaries]
    cmp = None
    if args.compare:
        pairs = sum(s[f"{args.metric}_n"] > 0 for s in summaries)
        pairs = pairs * (pairs - 1) // 2
        if pairs > 45:
            print(f"{PROG}: comparing {pairs} pairs of groups ({args.reps} bootstrap replicates each; "
                  "fewer with --reps)...", file=sys.stderr)
        cmp = compare(groups, order, args.metric, args.reps, args.seed)
    width = max(100, shutil.get_terminal_size((120, 24)).columns)
    print(format_terminal(root, runs, summaries, args.sort, args.reps, args.seed, cmp, args.metric, width))

    out_dir = Path(args.out) if args.out else root
    title = "/".join(root.resolve().parts[-2:])
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "report.md").write_text(
            render_markdown(root, runs, summaries, args.sort, args.reps, args.seed, cmp, args.metric))
        (out_dir / "report.csv").write_text(render_csv(summaries))
        plotted = plot_curves(out_dir / "curves.png", title, groups, order, args.reps, args.seed)
        if not plotted:
            # A curves.png left from an earlier report would contradict this one.
            (out_dir / "curves.png").unlink(missing_ok=True)
    except OSError as e:
        print(f"{PROG}: error: cannot write the report into {out_dir}: {e}", file=sys.stderr)
        return 1
    written = [f for f in OUTPUT_FILES if f != "curves.png" or plotted]
    why = "" if plotted else " (no curves.png: no run has eval points yet)"
    print(f"\nwrote {', '.join(written)} into {out_dir}{why}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
