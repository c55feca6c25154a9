"""The report as text: the terminal table, report.md and report.csv.

One list of column specs (:data:`COLUMNS`) drives all three: each column's header in report.md, its header in
the terminal, the text of its cells, and the plain values it contributes to report.csv. Each env gets its own
table, ranking and comparison (runs of different envs are never ranked against each other).
"""

from __future__ import annotations

import csv
import io
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dqnrun.report.runs import FAILED, FINISHED, UNFINISHED, Run
from dqnrun.report.stats import EnvReport

Summary = dict[str, Any]
Comparison = dict[tuple[str, str], tuple[float, float, float]]
FEW_SEEDS = 5
MD_MARK = "# dqnrun report:"  # report.md's first line starts with it: how the report knows a report.md is its own


# --------------------------------------------------------------------------------------------- cell texts


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


def _with_ci(s: Summary, m: str) -> str:
    if s[f"{m}_iqm"] is None:
        return "-"
    return f"{fmt(s[f'{m}_iqm'])} [{fmt(s[f'{m}_ci_low'])}, {fmt(s[f'{m}_ci_high'])}]"


def _solved(s: Summary) -> str:
    return "-" if s["solve_rate"] is None else f"{s['solved']}/{s['n']}"


def _rank(s: Summary) -> str:
    return f"{'*' if s.get('is_best') else ''}{s.get('rank', '')}"


def _key(name: str) -> Callable[[Summary], Any]:
    return lambda s: s.get(name)


# ----------------------------------------------------------------------------------------------- columns


@dataclass(frozen=True)
class Column:
    """One column of the report, in all three outputs."""

    head: str  # header in report.md ("" for a column that is in report.csv only)
    short: str  # header in the terminal, which stays narrow
    cell: Callable[[Summary], str]  # the text of a cell, in the terminal and report.md
    csv: tuple[tuple[str, Callable[[Summary], Any]], ...]  # report.csv: (field, plain value) pairs
    over: str = ""  # terminal: a header over this column and the next
    label: bool = False  # the group label: wraps (between overrides) in the terminal, code in report.md

    @property
    def in_table(self) -> bool:
        return bool(self.head)


def _stat_fields(m: str) -> tuple[tuple[str, Callable[[Summary], Any]], ...]:
    return tuple((f"{m}_{k}", _key(f"{m}_{k}")) for k in ("iqm", "ci_low", "ci_high", "n"))


COLUMNS: list[Column] = [
    # The env is each table's heading; report.csv holds all envs in one file, so it is a column there.
    Column("", "", _key("env"), (("env_id", _key("env")),)),
    Column("#", "#", _rank, (("rank", _key("rank")), ("best", lambda s: int(bool(s.get("is_best")))))),
    Column("group", "group", _key("label"), (("group", _key("label")),), label=True),
    Column("n", "n", lambda s: str(s["n"]), (("n", _key("n")),)),
    Column("failed", "fail", lambda s: str(s["failed"]), (("failed", _key("failed")),)),
    Column("unfinished", "unf", lambda s: str(s["unfinished"]), (("unfinished", _key("unfinished")),)),
    Column("best IQM [95% CI]", "IQM [95% CI]", lambda s: _with_ci(s, "best"), _stat_fields("best"),
           over="best eval return"),
    Column("best mean", "mean", lambda s: fmt(s["best_mean"]), (("best_mean", _key("best_mean")),)),
    Column("final IQM [95% CI]", "IQM [95% CI]", lambda s: _with_ci(s, "final"), _stat_fields("final"),
           over="final eval return"),
    Column("final mean", "mean", lambda s: fmt(s["final_mean"]), (("final_mean", _key("final_mean")),)),
    Column("solved", "solved", _solved, (("solved", _key("solved")), ("solve_rate", _key("solve_rate")))),
    Column("median steps to solve", "to solve", lambda s: fmt_steps(s["median_steps_to_solve"]),
           (("median_steps_to_solve", _key("median_steps_to_solve")),)),
    Column("median SPS", "SPS", lambda s: "-" if s["median_sps"] is None else f"{s['median_sps']:.0f}",
           (("median_sps", _key("median_sps")),)),
]
CSV_HEADER = [name for c in COLUMNS for name, _ in c.csv]


# ------------------------------------------------------------------------------------------------ labels


def common_overrides(token_lists: Sequence[Sequence[str]]) -> list[str]:
    """The overrides (group tokens) every one of several groups shares (none for a single group)."""
    if len(token_lists) < 2:
        return []
    return sorted(set.intersection(*(set(t) for t in token_lists)))


def shown_tokens(tokens: Sequence[str], common: Sequence[str], label: str = "(defaults)") -> list[str]:
    """A group's ``tokens`` without the ``common`` ones (``[label]`` if nothing is left)."""
    return [t for t in tokens if t not in common] or [label]


def strip_common(tokens: Sequence[str], common: Sequence[str], label: str = "(defaults)") -> str:
    """A group's ``tokens`` without the ``common`` ones, joined by spaces (``label`` if nothing is left)."""
    # Tokens, not label.split(): an override value may hold spaces (network.hidden_sizes=[64, 64]).
    return " ".join(shown_tokens(tokens, common, label))


def wrap_tokens(tokens: Sequence[str], width: int) -> list[str]:
    """Tokens (overrides) joined by spaces into lines of at most ``width``, breaking only between tokens: a token
    longer than ``width`` gets a line of its own and is never cut (``learning_starts=1000`` stays whole)."""
    lines: list[str] = []
    for t in tokens:
        if lines and len(lines[-1]) + 1 + len(t) <= width:
            lines[-1] += " " + t
        else:
            lines.append(t)
    return lines or [""]


def _wrap_prose(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)


# ---------------------------------------------------------------------------------------- terminal table


def format_table(summaries: Sequence[Summary], width: int = 120, common: Sequence[str] = ()) -> str:
    """The terminal table, at most ``width`` columns where the labels allow; labels lose the ``common`` tokens
    (printed above the table by the caller), and labels that still do not fit wrap between their overrides."""
    cols = [c for c in COLUMNS if c.in_table]
    li = next(i for i, c in enumerate(cols) if c.label)
    shown = [shown_tokens(s["tokens"], common, s["label"]) for s in summaries]
    cells = [[c.cell(s) for c in cols] for s in summaries]
    heads = [c.short for c in cols]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(heads)]

    def span(i: int) -> int:  # a header over column i and the next
        return widths[i] + 2 + widths[i + 1]

    for i, c in enumerate(cols):
        if c.over:
            widths[i] += max(0, len(c.over) - span(i))
    fixed = sum(w for i, w in enumerate(widths) if i != li) + 2 * (len(widths) - 1)
    longest_token = max((len(t) for tokens in shown for t in tokens), default=0)
    longest_label = max([len("group")] + [len(" ".join(t)) for t in shown])
    widths[li] = max(20, longest_token, min(longest_label, width - fixed))

    def line(row: Sequence[str]) -> str:
        return "  ".join(x.ljust(w) if i == li else x.rjust(w)
                         for i, (x, w) in enumerate(zip(row, widths, strict=True))).rstrip()

    # A header over two columns starts where the first starts and covers the second.
    sup: list[str] = []
    skip = False
    for i, c in enumerate(cols):
        if skip:
            skip = False
            continue
        sup.append(c.over.center(span(i)) if c.over else " " * widths[i])
        skip = bool(c.over)
    out = ["  ".join(sup).rstrip(), line(heads), "-" * min(width, fixed + widths[li])]
    blank = [""] * len(cols)
    for tokens, row in zip(shown, cells, strict=True):
        wrapped = wrap_tokens(tokens, widths[li])
        out.append(line(row[:li] + [wrapped[0]] + row[li + 1:]))
        out += [line(blank[:li] + [part] + blank[li + 1:]) for part in wrapped[1:]]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------- shared text


def census(runs: Sequence[Run], n_groups: int) -> str:
    counts = {st: sum(r.state == st for r in runs) for st in (FINISHED, FAILED, UNFINISHED)}
    return (f"{len(runs)} run{'s' * (len(runs) != 1)} in {n_groups} group{'s' * (n_groups != 1)} "
            f"({counts[FINISHED]} finished, {counts[FAILED]} failed, {counts[UNFINISHED]} unfinished)")


def _envs_census(reports: Sequence[EnvReport]) -> str:
    runs = [r for rep in reports for r in rep.runs]
    counts = {st: sum(r.state == st for r in runs) for st in (FINISHED, FAILED, UNFINISHED)}
    return (f"{len(runs)} runs of {len(reports)} envs ({counts[FINISHED]} finished, {counts[FAILED]} failed, "
            f"{counts[UNFINISHED]} unfinished); each env is ranked on its own")


def problem_runs(runs: Sequence[Run]) -> list[Run]:
    return [r for r in runs if r.state != FINISHED]


def method_note(reps: int, seed: int, sort: str) -> str:
    return (f"Statistics over finished runs only (one score per seed): IQM = interquartile mean (25% trimmed mean); "
            f"95% CIs are stratified-bootstrap percentile intervals ({reps} replicates, seed {seed}) via rliable, "
            f"following Agarwal et al. 2021, \"Deep RL at the Edge of the Statistical Precipice\". "
            f"Rows sorted by the IQM of the {sort} eval return; * marks the best.")


def _best_note(summaries: Sequence[Summary], sort: str) -> str | None:
    # A top row whose CI overlaps the runner-up's is not a clear winner: say so rather than let '*' overclaim.
    ranked = [s for s in summaries if s[f"{sort}_iqm"] is not None]
    if len(ranked) < 2:
        return None
    a, b = ranked[0], ranked[1]
    if a[f"{sort}_ci_low"] <= b[f"{sort}_ci_high"]:
        return (f"the 95% CI of #{a['rank']} overlaps that of #{b['rank']}: the ranking of the top groups is not "
                f"settled by these seeds (see --compare)")
    return None


def _few_seeds_note(summaries: Sequence[Summary]) -> str | None:
    # The percentile bootstrap resamples the seeds there are: with 2-4 of them it cannot see how spread out
    # other seeds would be, so its CIs come out too narrow. Say so where it applies.
    few = [s for s in summaries if 0 < s["n"] < FEW_SEEDS]
    if not few:
        return None
    return (f"{', '.join('#' + str(s['rank']) for s in few)} ha{'ve' if len(few) > 1 else 's'} fewer than "
            f"{FEW_SEEDS} finished runs: bootstrap CIs from so few seeds understate the uncertainty")


def _population_note(summaries: Sequence[Summary]) -> str | None:
    # A population member's SPS is its own steps over the population's wall clock, which K members shared:
    # beside a solo run's it would read as K times slower.
    pops = [s for s in summaries if (s.get("population_members") or 0) > 1]
    if not pops:
        return None
    most = max(s["population_members"] for s in pops)
    return (f"{', '.join('#' + str(s['rank']) for s in pops)} trained as population members (up to {most} per "
            f"population): their SPS is each member's env steps over its population's wall clock, which the "
            f"members shared")


def notes(summaries: Sequence[Summary], sort: str) -> list[str]:
    return [n for n in (_best_note(summaries, sort), _few_seeds_note(summaries), _population_note(summaries)) if n]


def _verdict(x: str, y: str, lo: float, hi: float) -> str:
    if lo > 0.5:
        return f"{x} better (CI above 0.5)"
    if hi < 0.5:
        return f"{y} better (CI below 0.5)"
    return ""


# -------------------------------------------------------------------------------------------- terminal


def _terminal_section(rep: EnvReport, sort: str, metric: str, width: int, method: str | None) -> list[str]:
    summaries = rep.summaries
    out: list[str] = []
    common = common_overrides([s["tokens"] for s in summaries])
    if common:
        out += wrap_tokens(["all groups:", *common], width)
    out += ["", format_table(summaries, width, common), ""]
    if method:
        out += _wrap_prose(method, width)
    for note in notes(summaries, sort):
        out += _wrap_prose(f"Note: {note}.", width)
    problems = problem_runs(rep.runs)
    if problems:
        out += ["", "Incomplete or failed runs (not in the statistics; unfinished runs' curves are plotted):"]
        pw = max(len(r.rel) for r in problems)
        rank = {s["label"]: s["rank"] for s in summaries}
        for r in problems:  # one line each, unwrapped: a path and its reason stay greppable and copyable
            out.append(f"  {r.rel.ljust(pw)}  {r.reason} (group #{rank.get(r.label, '?')})")
    if rep.cmp is not None:
        out += ["", *_format_compare_text(summaries, rep.cmp, metric, width)]
    return out


def format_terminal(root: Path, reports: Sequence[EnvReport], sort: str, reps: int, seed: int, metric: str,
                    width: int = 120) -> str:
    """Everything `dqnrun report` prints: header, and per env its table, notes, problem runs and comparison."""
    method = method_note(reps, seed, sort)
    if len(reports) == 1:
        [rep] = reports
        out = [f"{root} ({rep.env}): {census(rep.runs, len(rep.summaries))}"]
        return "\n".join(out + _terminal_section(rep, sort, metric, width, method))
    out = [f"{root}: {_envs_census(reports)}", "", *_wrap_prose(method, width)]
    for rep in reports:
        out += ["", f"== {rep.env}: {census(rep.runs, len(rep.summaries))} =="]
        out += _terminal_section(rep, sort, metric, width, None)
    return "\n".join(out)


def _format_compare_text(summaries: Sequence[Summary], cmp: Comparison, metric: str, width: int = 120) -> list[str]:
    order = [s["label"] for s in summaries]
    rank = {s["label"]: s["rank"] for s in summaries}
    pairs = [(a, b, cmp[(a, b)]) for i, a in enumerate(order) for b in order[i + 1:] if (a, b) in cmp]
    head = (f"Probability of improvement on the {metric} eval return, 95% stratified-bootstrap CI (rliable): "
            "P(#i > #j) = chance a seed of row i beats a seed of row j (ties count half):")
    out = _wrap_prose(head, width)
    if not pairs:
        return [*out, "  nothing to compare: fewer than two groups have finished runs"]
    for a, b, (p, lo, hi) in pairs:
        x, y = f"#{rank[a]}", f"#{rank[b]}"
        out.append(f"  P({x} > {y}) = {p:.2f} [{lo:.2f}, {hi:.2f}]  {_verdict(x, y, lo, hi)}".rstrip())
    return out


# -------------------------------------------------------------------------------------------- report.md


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "'")


def _md_table(summaries: Sequence[Summary]) -> list[str]:
    cols = [c for c in COLUMNS if c.in_table]
    out = ["| " + " | ".join(c.head for c in cols) + " |",
           "|" + "|".join(":---" if c.label else "---:" for c in cols) + "|"]
    for s in summaries:
        row = []
        for c in cols:
            if c.label:
                code = f"`{_md_escape(c.cell(s))}`"
                row.append(f"**{code}**" if s.get("is_best") else code)
            else:
                row.append(_md_escape(c.cell(s)))
        out.append("| " + " | ".join(row) + " |")
    return out


def _md_compare(summaries: Sequence[Summary], cmp: Comparison, metric: str, reps: int, level: str) -> list[str]:
    out = ["", f"{level} Probability of improvement ({metric} eval return)", "",
           f"P(row > column) with its 95% stratified-bootstrap CI (rliable, {reps} replicates): the probability "
           "that a random seed of the row's configuration beats a random seed of the column's (ties count "
           "half). A CI above 0.5 means the row is better with 95% confidence.", ""]
    order = [s for s in summaries if any(k[0] == s["label"] for k in cmp)]
    if len(order) < 2:
        return [*out, "Nothing to compare: fewer than two groups have finished runs."]
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
    return out


def _md_section(rep: EnvReport, sort: str, reps: int, metric: str, level: str,
                method: str | None) -> list[str]:
    out = _md_table(rep.summaries)
    if method:
        out += ["", method]
    for note in notes(rep.summaries, sort):
        out += ["", f"Note: {note}."]
    problems = problem_runs(rep.runs)
    out += ["", f"{level} Incomplete or failed runs", ""]
    if problems:
        out.append("Not in the statistics; unfinished runs' eval curves are part of curves.png.")
        out.append("")
        out += [f"- `{_md_escape(r.rel)}` ({_md_escape(r.label)}): {_md_escape(r.reason)}" for r in problems]
    else:
        out.append("None: every run finished.")
    if rep.cmp is not None:
        out += _md_compare(rep.summaries, rep.cmp, metric, reps, level)
    return out


def render_markdown(root: Path, reports: Sequence[EnvReport], sort: str, reps: int, seed: int, metric: str) -> str:
    """report.md: per env the table (full labels), notes, incomplete/failed runs and the comparison."""
    method = method_note(reps, seed, sort)
    out = [f"{MD_MARK} {root.resolve().name}", ""]
    if len(reports) == 1:
        [rep] = reports
        out += [f"`{_md_escape(str(root))}` ({_md_escape(rep.env)}): {census(rep.runs, len(rep.summaries))}.", ""]
        out += _md_section(rep, sort, reps, metric, "##", method)
        return "\n".join(out) + "\n"
    out += [f"`{_md_escape(str(root))}`: {_envs_census(reports)}.", "", method]
    for rep in reports:
        out += ["", f"## {_md_escape(rep.env)}", "", f"{census(rep.runs, len(rep.summaries))}.", ""]
        out += _md_section(rep, sort, reps, metric, "###", None)
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------- report.csv


def _csv_value(x: Any) -> Any:
    if x is None:
        return ""
    return repr(x) if isinstance(x, float) else x


def render_csv(reports: Sequence[EnvReport]) -> str:
    """report.csv: one row per group of each env (fields from :data:`COLUMNS`), plain numbers, empty cells for
    missing values."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_HEADER)
    for rep in reports:
        for s in rep.summaries:
            w.writerow([_csv_value(value(s)) for c in COLUMNS for _, value in c.csv])
    return buf.getvalue()


def is_report_csv_header(line: str) -> bool:
    """Is this the header row of a report.csv that `dqnrun report` wrote (this version or an earlier one)?"""
    try:
        fields = set(next(csv.reader([line])))
    except (StopIteration, csv.Error):
        return False
    return {"rank", "best", "group", "best_iqm", "final_iqm"} <= fields
