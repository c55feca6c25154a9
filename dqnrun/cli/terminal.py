"""The terminal as the command line uses it: writes that survive a closed pipe, signals that end in one line.

``dqnrun train ... | tee log`` and Ctrl-C: tee dies first, and every later write to the pipe raised
BrokenPipeError, which turned an interrupt into a failed run and cost it its last checkpoint. The streams here
drop output to a closed pipe instead (the run's files are unaffected), and a SIGTERM or SIGINT before a run
installs its own handling becomes `dqnrun.errors.Interrupted`, which the command line reports in one line.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, TextIO

from dqnrun.errors import Interrupted


class PipeSafe:
    """A text stream whose writes to a reader that went away (a closed pipe) are dropped, not raised."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.closed_pipe = False

    def _guard(self, op: str, *args: Any) -> Any:
        if self.closed_pipe:
            return len(args[0]) if args and isinstance(args[0], str) else None
        try:
            return getattr(self._stream, op)(*args)
        except (BrokenPipeError, ConnectionResetError):
            self.closed_pipe = True
            try:  # the interpreter flushes the real stream at exit too: point its descriptor at /dev/null
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self._stream.fileno())
                os.close(devnull)
            except (OSError, ValueError):
                pass
            return len(args[0]) if args and isinstance(args[0], str) else None

    def write(self, text: str) -> int:
        return self._guard("write", text)

    def flush(self) -> None:
        self._guard("flush")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def guard_streams() -> None:
    """Wrap sys.stdout and sys.stderr (before Hydra and tqdm pick them up)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not isinstance(stream, PipeSafe):
            setattr(sys, name, PipeSafe(stream))


def _raise(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def interrupt_on_signals() -> dict[int, Any]:
    """SIGTERM (and SIGINT) raise Interrupted until a run installs its own handling (`run.session.StopFlag`).
    Returns the handlers they replace."""
    return {s: signal.signal(s, _raise) for s in (signal.SIGTERM, signal.SIGINT)}
