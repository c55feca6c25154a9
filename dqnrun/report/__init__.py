"""`dqnrun report DIR`: per-configuration statistics over the seeds of a sweep (IQM, 95% stratified-bootstrap
CIs and probability of improvement via rliable), one table per env, report.md, report.csv and curves.png.

The report reads run files only (results.json, .hydra/) and imports no training code: of dqnrun it imports only
`dqnrun.run.artifacts` and `dqnrun.config.keys` (both standard library only), so it keeps working on run
directories written by older versions of dqnrun.

    runs.py      finding and reading run directories, liveness, grouping
    stats.py     IQM, bootstrap CIs, probability of improvement, per-group summaries, curves, per-env analysis
    render.py    the column specs, the terminal table, report.md, report.csv
    plot.py      curves.png
    command.py   the argument parser and `main`
"""

from __future__ import annotations

from dqnrun.report.command import build_parser, main
from dqnrun.report.runs import (
    FAILED,
    FINISHED,
    UNFINISHED,
    Run,
    find_run_dirs,
    group_runs,
    load_run,
    load_runs,
    process_liveness,
)
from dqnrun.report.stats import (
    compare,
    group_curve,
    interval,
    iqm,
    probability_of_improvement,
    sort_summaries,
    summarize,
)

__all__ = [
    "FAILED", "FINISHED", "UNFINISHED", "Run", "build_parser", "compare", "find_run_dirs", "group_curve",
    "group_runs", "interval", "iqm", "load_run", "load_runs", "main", "probability_of_improvement",
    "process_liveness", "sort_summaries", "summarize",
]
