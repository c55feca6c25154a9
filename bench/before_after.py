"""Before/after: run one benchmark script of bench/ in two checkouts, taking turns, and compare its dqnrun/SB3 ratios.

A refactoring should not change speed. Absolute steps/s on a shared machine move by 25% or more between runs, so
this compares what the scripts already compute inside one process with the tools alternating: dqnrun's steps/s over
SB3's. Each round runs the script once in the "before" checkout (with that checkout's own .venv) and once in the
"after" one (default: this tree), in that order (``--order abba`` flips it on odd rounds). Every run writes its
``--json`` output (the driver adds the flag) into ``--out``, and at the end the driver prints, for every comparison
found there, the ratio, dqnrun's absolute steps/s, the script's CPU-time ratio where it has one, and dqnrun's
steps and updates per round and tree, then the medians per tree.

A comparison is any object in the script's JSON with a numeric ``ratio`` and ``dqnrun_sps``: throughput.py's
``summary`` entries (one per config), pixels.py's ``acting`` and ``minatar`` sections. Sections without an SB3
counterpart (pixels.py's ``pong``) have none and are not tabulated.

Example (the script path is relative to each checkout; everything after it goes to the script unchanged)::

    git worktree add /tmp/before 76442bf                    # any checkout of the old commit ...
    make -C /tmp/before install EXTRAS=atari,minatar,bench  # ... with its own .venv and stable-baselines3
    .venv/bin/python bench/before_after.py --before /tmp/before --rounds 3 \\
        bench/throughput.py --configs a,b --repeats 1
    .venv/bin/python bench/before_after.py --before /tmp/before --rounds 2 --json ba_pixels.json \\
        bench/pixels.py --sections acting,minatar --repeats 1

``--after DIR`` compares against another checkout instead of this tree (e.g. a pinned commit while this one is being
edited). Before the first run the driver checks that each checkout's interpreter imports dqnrun from that checkout.

Each run's stdout and stderr go to ``<out>/round<k>-<tree>.log`` beside its JSON; a run that fails stops the driver
with the end of its log.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TREES = ("before", "after")
METRICS = ("ratio", "dqnrun_sps", "cpu_ratio")  # read from each comparison; cpu_ratio only where the script has it


def tree_python(tree: Path) -> Path:
    """The interpreter of a checkout: its own .venv."""
    python = tree / ".venv" / "bin" / "python"
    if not python.exists():
        sys.exit(f"{tree}: no .venv/bin/python (each checkout runs with its own environment)")
    return python


def check_imports_own_dqnrun(tree: Path) -> None:
    """Refuse a checkout whose interpreter imports dqnrun from elsewhere (e.g. a venv installed from another tree)."""
    res = subprocess.run([str(tree_python(tree)), "-c", "import dqnrun; print(dqnrun.__file__)"], cwd=tree,
                         capture_output=True, text=True, check=False)
    where = Path(res.stdout.strip() or "?").resolve()
    if res.returncode != 0 or not where.is_relative_to(tree):
        sys.exit(f"{tree}: its .venv imports dqnrun from {where} {res.stderr.strip()[-300:]}".rstrip())


def run_once(tree: Path, script: str, script_args: list[str], json_path: Path, log_path: Path) -> dict[str, Any]:
    """Run ``script`` in ``tree`` with its own interpreter; return its JSON output plus the driver's own record."""
    cmd = [str(tree_python(tree)), script, *script_args, "--json", str(json_path)]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with log_path.open("w") as log:
        rc = subprocess.run(cmd, cwd=tree, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    wall = time.perf_counter() - t0
    if rc != 0 or not json_path.exists():
        tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-30:])
        sys.exit(f"\n{' '.join(cmd)}\n(in {tree}) failed with exit status {rc}; end of {log_path}:\n{tail}")
    return {"data": json.loads(json_path.read_text()), "wall_s": wall, "load_at_start": load, "cmd": cmd}


def comparisons(node: Any, path: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """Every object with a numeric ``ratio`` and ``dqnrun_sps`` in a script's JSON, by its key (its path if the
    key repeats)."""
    found: dict[tuple[str, ...], dict[str, Any]] = {}

    def walk(x: Any, p: tuple[str, ...]) -> None:
        if isinstance(x, dict):
            if isinstance(x.get("ratio"), (int, float)) and isinstance(x.get("dqnrun_sps"), (int, float)):
                found[p] = x
            for k, v in x.items():
                walk(v, (*p, str(k)))

    walk(node, path)
    last = [p[-1] if p else "(top)" for p in found]
    return {(p[-1] if p and last.count(p[-1]) == 1 else "/".join(p) or "(top)"): v for p, v in found.items()}


def dqnrun_work(entry: dict[str, Any]) -> str:
    """dqnrun's env steps / gradient updates in one comparison, to check that both trees did the same work."""
    if "dqnrun_steps" in entry and "dqnrun_updates" in entry:  # throughput.py: the sets over repeats
        steps, updates = entry["dqnrun_steps"], entry["dqnrun_updates"]
    elif isinstance(entry.get("dqnrun"), list):  # pixels.py: the runs themselves
        steps = sorted({r.get("steps") for r in entry["dqnrun"]})
        updates = sorted({r.get("updates") for r in entry["dqnrun"]})
    else:
        return "?"
    return f"{'/'.join(map(str, steps))} / {'/'.join(map(str, updates))}"


def commit_of(data: dict[str, Any]) -> str:
    """The git commit a script recorded about its own tree (throughput.py: env.git, pixels.py: environment.git)."""
    for v in data.values():
        if isinstance(v, dict) and "git" in v:
            return str(v["git"]) or "?"
    return "?"


def fmt(x: float | None, nd: int = 0, suffix: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{nd}f}{suffix}"


def median(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(statistics.median(xs)) if xs else None


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def pick(entry: dict[str, Any] | None) -> dict[str, float | None]:
    """The tabulated numbers of one comparison (None where a run lacks it)."""
    return {k: (entry or {}).get(k) for k in METRICS}


def table_row(name: str, vals: dict[str, dict[str, float | None]], cpu: bool) -> list[str]:
    """One table row: ratio, dqnrun steps/s (and CPU-time ratio) per tree, then after's ratio over before's."""
    out = [name]
    for t in TREES:
        v = vals[t]
        out += [fmt(v["ratio"], 2, "x"), fmt(v["dqnrun_sps"])] + ([fmt(v["cpu_ratio"], 2, "x")] if cpu else [])
    b, a = vals["before"]["ratio"], vals["after"]["ratio"]
    return [*out, fmt(a / b, 3) if a is not None and b is not None else "-"]


def report(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Print one table per comparison and return the same numbers for --json."""
    labels: list[str] = []
    for rec in records:
        labels += [k for k in rec["comparisons"] if k not in labels]
    has_cpu = {lab: any("cpu_ratio" in r["comparisons"].get(lab, {}) for r in records) for lab in labels}
    summary: dict[str, Any] = {}
    for lab in labels:
        cells: dict[str, dict[int, dict[str, Any]]] = {t: {} for t in TREES}
        for rec in records:
            if lab in rec["comparisons"]:
                cells[rec["tree"]][rec["round"]] = rec["comparisons"][lab]
        rounds = sorted({r for t in TREES for r in cells[t]})
        cpu = has_cpu[lab]
        headers = ["round"]
        for t in TREES:
            headers += [f"{t}: dqnrun/SB3", f"{t}: dqnrun SPS"] + ([f"{t}: CPU ratio"] if cpu else [])
        headers.append("after/before")
        rows = [table_row(str(r), {t: pick(cells[t].get(r)) for t in TREES}, cpu) for r in rounds]
        med = {t: {k: median([pick(cells[t].get(r))[k] for r in rounds]) for k in METRICS} for t in TREES}
        rows.append(table_row("**median**", med, cpu))
        print(f"\n### {lab}\n")
        print(md_table(headers, rows))
        work = {t: sorted({dqnrun_work(e) for e in cells[t].values()}) for t in TREES}
        same = "same" if work["before"] == work["after"] else "**DIFFERENT**"
        print(f"\ndqnrun steps / updates: before {', '.join(work['before'])}; after {', '.join(work['after'])} "
              f"({same})")
        summary[lab] = {"per_round": {t: {r: pick(cells[t][r]) for r in sorted(cells[t])} for t in TREES},
                        "median": med, "dqnrun_work": work}
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, required=True, help="the old checkout (with its own .venv)")
    p.add_argument("--after", type=Path, default=REPO, help="the new checkout (default: this tree)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of one run per tree (default 3)")
    p.add_argument("--order", choices=("ab", "abba"), default="ab",
                   help="ab: before then after in every round; abba: flipped on odd rounds (default ab)")
    p.add_argument("--out", type=Path, help="folder for each run's JSON and log "
                   "(default: outputs/bench/before_after/<script>-<time> in this tree)")
    p.add_argument("--json", metavar="PATH", help="also write the per-round and median numbers as JSON")
    p.add_argument("script", help="benchmark script, relative to each checkout (e.g. bench/throughput.py)")
    p.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments for the script (not --json)")
    args = p.parse_args()
    if any(a == "--json" or a.startswith("--json=") for a in args.script_args):
        p.error("the driver passes --json to the script itself; leave it out of the script's arguments")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    if trees["before"] == trees["after"]:
        p.error("--before and --after are the same folder")
    for t in trees.values():
        if not (t / args.script).is_file():
            p.error(f"{t / args.script} does not exist")
        check_imports_own_dqnrun(t)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = (args.out or REPO / "outputs" / "bench" / "before_after" / f"{Path(args.script).stem}-{stamp}").resolve()
    out.mkdir(parents=True, exist_ok=True)

    print(f"# before/after: {args.script} {' '.join(args.script_args)}\n")
    for name, t in trees.items():
        print(f"- {name}: {t} ({tree_python(t)})")
    print(f"- {args.rounds} rounds, order {args.order}; runs' JSON and logs in {out}\n")

    records: list[dict[str, Any]] = []
    for r in range(1, args.rounds + 1):
        order = TREES if args.order == "ab" or r % 2 == 1 else TREES[::-1]
        for name in order:
            base = out / f"round{r}-{name}"
            rec = run_once(trees[name], args.script, args.script_args, base.with_suffix(".json"),
                           base.with_suffix(".log"))
            rec |= {"round": r, "tree": name, "commit": commit_of(rec["data"]),
                    "comparisons": comparisons(rec["data"])}
            records.append(rec)
            ratios = ", ".join(f"{k}: {v['ratio']:.2f}x" for k, v in rec["comparisons"].items()) or "no comparisons"
            print(f"  round {r} {name:6s} (git {rec['commit']}, load {rec['load_at_start']:.2f}): "
                  f"{rec['wall_s']:.0f} s; {ratios}", flush=True)

    summary = report(records)
    commits = {t: sorted({rec["commit"] for rec in records if rec["tree"] == t}) for t in TREES}
    print(f"\ncommits: before {', '.join(commits['before'])}; after {', '.join(commits['after'])}. "
          f"Ratio = dqnrun steps/s over SB3's (medians over the script's repeats, within one run). "
          f"Load average (1 min) now: {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "script": args.script, "script_args": args.script_args, "trees": {k: str(v) for k, v in trees.items()},
            "rounds": args.rounds, "order": args.order, "out": str(out), "commits": commits, "summary": summary,
            "runs": [{k: rec[k] for k in ("round", "tree", "commit", "wall_s", "load_at_start", "cmd")}
                     | {"json": str(out / f"round{rec['round']}-{rec['tree']}.json")} for rec in records],
        }, indent=2, default=str) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
