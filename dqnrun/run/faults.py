"""Fault injection for the reliability tests: a real signal or a real I/O error at a named point of a run.

``DQNRUN_TEST_FAULT`` holds comma-separated ``point[#n][@action]`` entries. A run that reaches ``point`` for the
n-th time (default: the first) performs the action: ``kill`` (SIGKILL, the default: nothing after it runs),
``term`` / ``int`` (SIGTERM / SIGINT, handled as a user's signal would be), ``enospc`` / ``erofs`` (an OSError:
disk full / read-only filesystem, raised where the write is). Points:

- ``<file>:written`` and ``<file>:replaced``: an atomic write's temp file is complete / has replaced ``<file>``
  (``last.pt``, ``last.replay.pt``, ``last.env.pt``, ``best.pt``, ``step_<n>.pt``, ``results.json``);
- ``<file>:writing``: inside the write of ``<file>``'s temp file (an I/O error there leaves a partial temp file);
- ``build``, ``restore``, ``evaluate``: a run's stages;
- ``act``: a population member about to act (counted over the members of the process, in slot order);
  ``learn``: a population about to make a batched update.

Unset (always, outside tests) it costs one dictionary lookup per point.
"""

from __future__ import annotations

import errno
import os
import signal
from collections import Counter

ENV = "DQNRUN_TEST_FAULT"
_ACTIONS = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT}
_ERRORS = {"enospc": errno.ENOSPC, "erofs": errno.EROFS}
_seen: Counter[str] = Counter()


def armed() -> bool:
    """Whether any fault is set (a hot loop asks once, then marks its points only if so)."""
    return bool(os.environ.get(ENV))


def point(name: str) -> None:
    """Mark that a run reached ``name``; performs the injected fault if one is set for it."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    _seen[name] += 1
    for entry in spec.split(","):
        target, _, action = entry.strip().partition("@")
        where, _, nth = target.partition("#")
        if where != name or _seen[name] != int(nth or 1):
            continue
        action = action or "kill"
        if action in _ERRORS:
            raise OSError(_ERRORS[action], os.strerror(_ERRORS[action]), name)
        os.kill(os.getpid(), _ACTIONS[action])
