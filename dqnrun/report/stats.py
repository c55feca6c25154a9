"""Statistics over the seeds of a configuration, the way Agarwal et al., "Deep RL at the Edge of the Statistical
Precipice" (NeurIPS 2021) recommend: interquartile mean (IQM) with 95% stratified-bootstrap confidence intervals,
and probability of improvement between configurations, all through rliable (imported when first used).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dqnrun.report.runs import FAILED, FINISHED, UNFINISHED, Run, group_runs, split_by_env

DEFAULT_REPS = 2000
DEFAULT_SEED = 0
CONFIDENCE = 0.95
METRICS = ("best", "final")

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

    Keys: label, tokens, env, n (finished runs), failed, unfinished, and for m in best/final: m_n (finished runs that
    evaluated), m_mean, m_iqm, m_ci_low, m_ci_high (eval return); solved (runs), solve_rate (0..1, None if no
    finished run has a solved_score), median_steps_to_solve (env steps, None if none solved), median_sps (env steps per
    second). Missing values are None.
    """
    finished = [r for r in group if r.state == FINISHED]
    out: dict[str, Any] = {
        "label": label or (group[0].label if group else ""),
        "tokens": group[0].tokens if group else (),
        "env": group[0].env if group else "",
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
    members = _finite_values(finished, "population_members")
    out["population_members"] = int(max(members)) if members else None  # SPS is then each member's share
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


@dataclass
class EnvReport:
    """The report of one env: its runs, their groups, the groups' summaries (ranked) and, with --compare, the
    pairwise comparison. Runs of different envs are never grouped, ranked or compared together."""

    env: str
    runs: list[Run]
    groups: dict[str, list[Run]]
    summaries: list[dict[str, Any]]
    cmp: dict[tuple[str, str], tuple[float, float, float]] | None = field(default=None)

    @property
    def order(self) -> list[str]:
        """Group labels in table order."""
        return [s["label"] for s in self.summaries]

    def pairs_to_compare(self, metric: str) -> int:
        k = sum(s[f"{metric}_n"] > 0 for s in self.summaries)
        return k * (k - 1) // 2


def analyze(runs: Sequence[Run], by: Sequence[str] | None = None, sort: str = "best", reps: int = DEFAULT_REPS,
            seed: int = DEFAULT_SEED) -> list[EnvReport]:
    """One :class:`EnvReport` per env (sorted by env), each with its groups summarized and ranked by ``sort``."""
    out = []
    for env, env_runs in split_by_env(runs).items():
        groups = group_runs(env_runs, by)
        summaries = sort_summaries([summarize(g, label, reps, seed) for label, g in groups.items()], sort)
        out.append(EnvReport(env, env_runs, groups, summaries))
    return out
