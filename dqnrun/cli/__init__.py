"""The `dqnrun` console script (also `python -m dqnrun`). Nothing imports this package; it imports the rest.

It picks the subcommand, rewrites the overrides (old key spellings, open env.kwargs; `dqnrun.config.compose`),
checks the composed config(s) before any run directory exists (`dqnrun.config.preflight`: bad input costs one
clear line and exit code 2, and touches no files), then hands the arguments to that subcommand's Hydra app
(`dqnrun.cli.train`, `dqnrun.cli.eval`) or parser (`report`, `export`).
"""

from __future__ import annotations

import difflib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dqnrun import __version__
from dqnrun.cli.terminal import guard_streams, interrupt_on_signals
from dqnrun.errors import Interrupted, UsageError

if TYPE_CHECKING:
    from dqnrun.config.preflight import Checked

USAGE = f"""dqnrun {__version__}: train and evaluate DQN agents on Gymnasium environments

usage:
  dqnrun train [key=value ...]          train one run (Hydra overrides, e.g. env=acrobot seed=3)
  dqnrun train -m key=a,b [key=c,d ...] a sweep: one run per combination (Hydra multirun)
  dqnrun eval ckpt=PATH [episodes=N] [video=true] [render=human]
  dqnrun report DIR [--compare]         statistics of a sweep: IQM, bootstrap CIs, curves.png
  dqnrun export ckpt=PATH format=torchscript|onnx [out=PATH]
  dqnrun train --cfg job                print the composed config and exit
  dqnrun train --help                   config groups, options and the important keys

examples:
  dqnrun train env=cartpole seed=3 optimizer.lr=5e-4
  dqnrun train -m optimizer.lr=1e-3,3e-4 seed=0,1,2,3,4 hydra/launcher=joblib
  dqnrun report outputs/multirun/<date>/<time>-<id>
  dqnrun eval ckpt=outputs/<date>/<time>-<id>/checkpoints/best.pt episodes=100
"""

COMMANDS = ("train", "eval", "report", "export")
# Flags that make Hydra print something instead of running: skip the preflight for them.
_INFO_FLAGS = {"--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help", "--shell-completion", "-sc",
               "--resolve", "--package", "-p", "--version"}
_CONFIG_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun"}


def sweep_dir_of(resume: str) -> Path | None:
    """The sweep directory that ``resume=DIR`` names in a multirun (it holds multirun.yaml or optuna.db)."""
    path = Path(resume).expanduser()
    if path.is_dir() and ((path / "multirun.yaml").exists() or (path / "optuna.db").exists()):
        return path
    return None


def continue_sweep(args: list[str]) -> list[str]:
    """In a multirun, ``resume=SWEEP_DIR`` continues that sweep in place: ``hydra.sweep.dir=SWEEP_DIR`` and
    ``resume=auto``, so every job resumes its own run (a finished one has nothing left to do) and the Optuna
    sweeper reopens the study in SWEEP_DIR/optuna.db."""
    from dqnrun.config.preflight import quote

    out = []
    for a in args:
        sweep = sweep_dir_of(a.split("=", 1)[1]) if a.startswith("resume=") else None
        out += [f'hydra.sweep.dir="{quote(sweep.resolve())}"', "resume=auto"] if sweep is not None else [a]
    return out


def explain_spellings(message: str, typed: dict[str, str]) -> str:
    """A message about a canonical key the user typed in its old spelling says so (validation stays truthful:
    it names the key that exists, and the spelling the user knows)."""
    notes = [f"{old} is now spelled {new}" for new, old in typed.items() if new in message]
    return message + (f" ({'; '.join(notes)})" if notes else "")


def print_sweep_configs(command: str, overrides: list[str]) -> int:
    """``-m ... --cfg job``: validate every job of the sweep as a real one would be, print each job's config."""
    from omegaconf import OmegaConf

    from dqnrun.config.preflight import expand, preflight

    overrides = [a for a in overrides if not a.startswith("-") and a not in ("job", "hydra", "all")]
    checked = preflight(command, overrides, multirun=True)
    for i, (job, cfg) in enumerate(zip(expand(overrides, True), checked.configs, strict=False)):
        print(f"# job {i}: {' '.join(job)}")
        print(OmegaConf.to_yaml(cfg, resolve=True))
    return 0


def print_job_config(command: str, overrides: list[str]) -> int:
    """``--cfg job``: the config the run would use, values resolved (what it will really run with)."""
    from omegaconf import OmegaConf

    from dqnrun.config.compose import Composer

    overrides = [a for a in overrides if not a.startswith("-") and a not in ("job", "hydra", "all")]
    with Composer() as c:
        print(OmegaConf.to_yaml(c.task(command, overrides), resolve=True), end="")
    return 0


def own(run_dir: Path) -> object:
    """Lock a run's directory (creating it), or raise UsageError naming its owner and what to do."""
    from dqnrun.run.lock import RunDirBusy, RunLock

    try:
        return RunLock(run_dir).acquire()
    except RunDirBusy as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        from dqnrun.errors import write_failure

        what = "cannot create the run directory" if not run_dir.is_dir() else write_failure(run_dir / ".lock", exc)
        reason = f" ({exc.strerror or exc})" if not run_dir.is_dir() else ""
        raise UsageError(f"hydra.run.dir={run_dir}: {what}{reason}; pick a writable place") from None


def _cfg_section(args: list[str]) -> str:
    """What ``--cfg``/``-c`` asks for (job | hydra | all); job when it names nothing."""
    for i, a in enumerate(args):
        if a in ("--cfg", "-c"):
            return args[i + 1] if i + 1 < len(args) and args[i + 1] in ("job", "hydra", "all") else "job"
        if a.startswith(("--cfg=", "-c=")):
            return a.split("=", 1)[1]
    return "job"


def _app(command: str) -> Callable[[], object]:
    if command == "train":
        from dqnrun.cli.train import main as app
    else:
        from dqnrun.cli.eval import main as app
    return app


def _fail(command: str, exc: UsageError, typed: dict[str, str]) -> None:
    print(f"dqnrun {command}: error: {explain_spellings(str(exc), typed)}", file=sys.stderr)
    sys.exit(exc.exit_code)


def main(argv: list[str] | None = None) -> None:
    guard_streams()
    previous = interrupt_on_signals()
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args and args[0] in COMMANDS else "dqnrun"
    try:
        try:
            _main(args)
        except Exception as exc:  # a signal that landed in code which wrapped it (an import's class creation wraps
            cause = _interrupt_in(exc)  # it in RuntimeError("Error calling __set_name__ ..."))
            if cause is None:
                raise
            raise cause from None
    except (KeyboardInterrupt, Interrupted) as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        print(f"dqnrun {command}: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        sys.exit(128 + signum)
    finally:
        for s, handler in previous.items():  # main() called in-process (tests) leaves the signals as it found them
            signal.signal(s, handler)


def console() -> None:
    """The ``dqnrun`` command: `main`, then a quick exit. Once the work is done, Python's own teardown of an
    interpreter holding torch (its modules and their objects, torch's static state) takes another 0.2-0.45 s here,
    after every run file is closed; the command skips that part: the exit handlers run (logging's, multiprocessing's,
    Ray's), the standard streams are flushed, then ``os._exit`` with main's exit code. Where a thread that is not a
    daemon still runs, or main raised anything but SystemExit, Python exits as it always does."""
    import atexit
    import contextlib
    import threading

    try:
        main()
        code: int = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:  # sys.exit("message"): Python prints it and exits 1
            print(exc.code, file=sys.stderr)
            code = 1
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream: nothing more reaches it anyway
            stream.flush()
    os._exit(code)


def _interrupt_in(exc: BaseException) -> BaseException | None:
    """The Ctrl-C or signal (`Interrupted`) behind ``exc``, following its causes and contexts; None if none."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, (KeyboardInterrupt, Interrupted)):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _main(args: list[str]) -> None:
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        sys.exit(0 if args else 2)
    if args[0] == "--version":
        print(f"dqnrun {__version__}")
        sys.exit(0)
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        print(f"dqnrun: error: unknown command {command!r}{hint}; use one of: {', '.join(COMMANDS)}",
              file=sys.stderr)
        sys.exit(2)
    if command == "report":
        from dqnrun.report import main as report_main

        sys.exit(report_main(rest))
    if command == "export":
        from dqnrun.cli.export import main as export_main

        sys.exit(export_main(rest))
    run_app(command, rest)


# Hydra's flags that take a value as the next argument.
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir",
                "-cd", "--experimental-rerun", "--info", "-i", "--shell-completion", "-sc"}
_FLAGS = _INFO_FLAGS | _CONFIG_FLAGS | {"-m", "--multirun", "--resolve"}


def habits(command: str, args: list[str]) -> list[str]:
    """Arguments as other tools take them, as dqnrun takes them: an unquoted non-ASCII value gets quotes (Hydra's
    grammar would refuse it); ``--key value``, ``--key=value`` and a bare path or word get one line saying
    ``key=value``, with the user's own argument rewritten as the example."""
    out: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a in _VALUE_FLAGS or a.split("=", 1)[0] in _VALUE_FLAGS:
            out.append(a)
            if "=" not in a and i + 1 < len(args):
                out.append(args[i + 1])
                i += 1
        elif a.startswith("-") and a.split("=", 1)[0] not in _FLAGS:
            key, sep, value = a.lstrip("-").partition("=")
            if not sep and i + 1 < len(args) and not args[i + 1].startswith("-"):
                value = args[i + 1]
            raise UsageError(f"{a}: dqnrun takes key=value, not --key value; say: dqnrun {command} {key}="
                             f"{value or '...'}")
        elif "=" not in a and not a.startswith("-"):
            suggestion = f"ckpt={a}" if command == "eval" else _guess_key(a)
            raise UsageError(f"{a!r} is not key=value; say: dqnrun {command} {suggestion}")
        else:
            key, _, value = a.partition("=")
            simple = value and not any(ch in value for ch in "[]{}(),'\"")
            out.append(f'{key}="{value}"' if simple and not value.isascii() else a)
        i += 1
    return out


def _guess_key(word: str) -> str:
    """``cartpole`` -> ``env=cartpole`` (a group's option named alone); otherwise a generic example."""
    from importlib.resources import files

    conf = files("dqnrun.conf")
    for group in ("env", "algo", "network", "optimizer", "replay", "schedule", "experiment"):
        if conf.joinpath(group, f"{word}.yaml").is_file():
            return f"{group}={word}"
    return f"KEY={word} (e.g. env={word} or resume={word}; dqnrun train --help lists the keys)"


def run_app(command: str, rest: list[str]) -> None:
    """``dqnrun train|eval ARGS``: rewrite, check, then run the Hydra app."""
    from dqnrun.config.compose import remember_typed, rewrite

    try:
        rest = habits(command, rest)
    except UsageError as exc:
        _fail(command, exc, {})
    # Hydra rejects overrides on both sides of -m; let users put it anywhere.
    flags = [a for a in rest if a in ("-m", "--multirun")]
    rest, typed = rewrite([a for a in rest if a not in ("-m", "--multirun")])
    remember_typed(typed)
    multirun = bool(flags)
    if multirun and command == "train":
        rest = continue_sweep(rest)
    info = [a for a in rest if a.split("=")[0] in _INFO_FLAGS]
    try:
        _run_app(command, rest, flags, typed, info)
    finally:
        if multirun:  # a population sweep's workers (started early, kept between launches): killed at the end
            from dqnrun.population.workers import release

            release()


def hand_over_built_checks(checked: Checked) -> None:
    """A sweep's preflight checks that build the network (`dqnrun.config.preflight.check_built`): handed to a
    population's workers where they were started early and Hydra's basic sweeper writes nothing but multirun.yaml
    before the launcher waits for them (an Optuna study's storage would outlive a failure); here otherwise."""
    from functools import partial

    from dqnrun.config.preflight import check_built
    from dqnrun.population.workers import check_early

    basic = checked.sweeper == "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
    if not (basic and check_early(partial(check_built, checked.built), checked.undo_sweep_dir)):
        check_built(checked.built)


def _run_app(command: str, rest: list[str], flags: list[str], typed: dict[str, str], info: list[str]) -> None:
    from dqnrun.config.preflight import expand, preflight, quote

    multirun = bool(flags)
    lock = None
    try:
        if info and info[0] in ("--cfg", "-c") and _cfg_section(rest) == "job":
            # -m --cfg: Hydra cannot combine them; print every job's config (nothing runs, no directory). A single
            # run's: printed here too, so that bad input is one line and values are resolved.
            sys.exit(print_sweep_configs(command, rest) if multirun else print_job_config(command, rest))
        if not any(a.split("=")[0] in _INFO_FLAGS | _CONFIG_FLAGS for a in rest):
            overrides = [a for a in rest if not a.startswith("-")]
            if multirun and command == "train":  # a population sweep's workers import while the jobs are checked
                from dqnrun.population.workers import start_early
                from dqnrun.sweep import available_cores

                start_early(overrides, len(expand(overrides, True)), available_cores())
            checked = preflight(command, overrides, multirun, build=not multirun)
            if multirun and checked.built:
                hand_over_built_checks(checked)
            rest += checked.extra
            if checked.run_dir is not None:  # own the run's directory before Hydra writes into it
                lock = own(checked.run_dir)
                if not checked.extra:
                    rest.append(f'hydra.run.dir="{quote(checked.run_dir)}"')
    except UsageError as exc:
        _fail(command, exc, typed)
    if "COMP_LINE" in os.environ:  # shell completion: hide the subcommand from Hydra
        os.environ["COMP_LINE"] = os.environ["COMP_LINE"].replace(f" {command}", "", 1)
    sys.argv = [sys.argv[0], *flags[:1], *rest]
    try:
        _app(command)()
    finally:
        if lock is not None:
            lock.release()
    from dqnrun.sweep import LAST_SWEEP

    if LAST_SWEEP.get("failed"):  # the summary (N of M jobs failed) is printed; Hydra itself returns normally
        sys.exit(1)
