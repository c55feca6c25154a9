"""`dqnrun report DIR`: the argument parser and `main`, which reads the runs, prints the report and writes
report.md, report.csv and curves.png (only over files an earlier report wrote)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import dqnrun.run.artifacts as artifacts
from dqnrun.report.plot import SOFTWARE, make_figure, png_bytes, png_info
from dqnrun.report.render import MD_MARK, format_terminal, is_report_csv_header, render_csv, render_markdown
from dqnrun.report.runs import Run, has_key, load_runs, varying_keys
from dqnrun.report.stats import DEFAULT_REPS, DEFAULT_SEED, METRICS, EnvReport, analyze, compare

PROG = "dqnrun report"
MD, CSV, PNG = "report.md", "report.csv", "curves.png"
# The figure an earlier dqnrun report wrote before PNGs carried the report's mark: 12 x 7 inches at 100 dpi.
LEGACY_PNG_SIZE = (1200, 700)


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
                    "final eval returns per configuration (rliable; Agarwal et al. 2021), one table per env. Prints "
                    "the tables and writes report.md, report.csv and curves.png into DIR.",
        epilog="Runs are grouped by their overrides other than seed, hydra* keys and bookkeeping keys "
               f"({', '.join(sorted(artifacts.BOOKKEEPING_KEYS))}); runs of different envs are never grouped, "
               "ranked or compared together. Only finished runs enter the statistics. The report overwrites only "
               "report files it wrote itself.",
    )
    p.add_argument("dir", metavar="DIR", help="a multirun directory, or any directory holding run directories")
    p.add_argument("--group-by", metavar="KEY[,KEY...]",
                   help="group by these keys only: override keys (e.g. optimizer.lr) or name, tags, env_id, seed")
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


def _say(text: str) -> bool:
    """Print ``text`` to stdout; False if the reader has gone (``dqnrun report DIR | head -1``). Then stdout
    points at devnull from here on, so that Python's flush at exit raises no second BrokenPipeError."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # stdout without a file descriptor (e.g. captured in a test)
            pass
        return False
    return True


# --------------------------------------------------------------------------------------------- outputs


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.readline(4096).rstrip("\r\n")


def is_own_output(path: Path) -> bool:
    """Did `dqnrun report` write this file? report.md by its first line, report.csv by its header row,
    curves.png by its ``Software`` text chunk (or, from reports that predate that mark, by its size beside a
    report.md of ours)."""
    if not path.is_file():
        return False
    try:
        if path.name == MD:
            return _first_line(path).startswith(MD_MARK)
        if path.name == CSV:
            return is_report_csv_header(_first_line(path))
        info = png_info(path.read_bytes())
    except OSError:
        return False
    if info is None:
        return False
    width, height, texts = info
    if texts.get("Software") == SOFTWARE:
        return True
    legacy = texts.get("Software", "").startswith("Matplotlib") and (width, height) == LEGACY_PNG_SIZE
    return legacy and is_own_output(path.with_name(MD))


def foreign_output(out_dir: Path, names: Sequence[str]) -> Path | None:
    """The first of ``names`` in ``out_dir`` that exists and was not written by the report, or None."""
    for name in names:
        path = out_dir / name
        if (path.exists() or path.is_symlink()) and not is_own_output(path):
            return path
    return None


def _write(path: Path, data: bytes) -> None:
    artifacts.atomic_write(path, lambda f: f.write(data))


# ------------------------------------------------------------------------------------------------ main


def _parse_group_by(text: str | None) -> list[str] | None:
    return None if text is None else [k.strip() for k in text.split(",") if k.strip()]


def _unknown_group_keys(runs: Sequence[Run], by: Sequence[str]) -> str | None:
    unknown = [k for k in by if not any(has_key(r, k) for r in runs)]
    if not unknown:
        return None
    vary = varying_keys(runs)
    what = f"the runs vary in: {', '.join(vary)}" if vary else "the runs do not vary in any key"
    names = ", ".join(unknown)
    return (f"--group-by {names}: no run has {'this key' if len(unknown) == 1 else 'these keys'} in its "
            f"overrides or results.json; {what}")


def _compare_all(reports: Sequence[EnvReport], metric: str, reps: int, seed: int) -> None:
    pairs = sum(rep.pairs_to_compare(metric) for rep in reports)
    if pairs > 45:
        print(f"{PROG}: comparing {pairs} pairs of groups ({reps} bootstrap replicates each; fewer with --reps)...",
              file=sys.stderr)
    for rep in reports:
        rep.cmp = compare(rep.groups, rep.order, metric, reps, seed)


def main(argv: list[str]) -> int:
    """`dqnrun report` with ``argv`` (no program name or subcommand). Returns the exit code: 0 if a report was
    produced (even if some runs failed, and also when stdout's reader left early), 2 for bad usage, a missing
    DIR, no run directories, an unknown --group-by key, or a file in the way that the report did not write; 1 if
    the report files cannot be written."""
    try:
        args = build_parser().parse_args(argv)
    except _ParserExit as e:
        return e.code
    if args.reps < 1:
        return _error("--reps must be at least 1")
    by = _parse_group_by(args.group_by)
    if by is not None and not by:
        return _error("--group-by needs at least one key, e.g. --group-by optimizer.lr")
    root = Path(args.dir)
    if not root.exists():
        return _error(f"{root} does not exist")
    if not root.is_dir():
        return _error(f"{root} is not a directory")
    runs = load_runs(root)
    if not runs:
        return _error(f"no run directories under {root} (a run directory holds the results.json of dqnrun train, "
                      "or the .hydra/ record of a training run)")
    if by and (problem := _unknown_group_keys(runs, by)):
        return _error(problem)
    reports = analyze(runs, by, args.sort, args.reps, args.seed)
    out_dir = Path(args.out) if args.out else root
    fig = make_figure("/".join(root.resolve().parts[-2:]), reports, args.reps, args.seed)
    names = [MD, CSV] + ([PNG] if fig is not None else [])
    if (blocked := foreign_output(out_dir, names)) is not None:
        return _error(f"{blocked} was not written by {PROG}; not overwriting it (write the report elsewhere with "
                      "--out DIR)")
    if args.compare:
        _compare_all(reports, args.metric, args.reps, args.seed)
    width = max(100, shutil.get_terminal_size((120, 24)).columns)
    listening = _say(format_terminal(root, reports, args.sort, args.reps, args.seed, args.metric, width))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write(out_dir / MD, render_markdown(root, reports, args.sort, args.reps, args.seed, args.metric).encode())
        _write(out_dir / CSV, render_csv(reports).encode())
        if fig is not None:
            _write(out_dir / PNG, png_bytes(fig))
        elif is_own_output(out_dir / PNG):
            # A curves.png left from an earlier report would contradict this one.
            (out_dir / PNG).unlink()
    except OSError as e:
        print(f"{PROG}: error: cannot write the report into {out_dir}: {e}", file=sys.stderr)
        return 1
    written = [MD, CSV] + ([PNG] if fig is not None else [])
    why = "" if fig is not None else " (no curves.png: no run has eval points yet)"
    if listening:
        _say(f"\nwrote {', '.join(written)} into {out_dir}{why}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
