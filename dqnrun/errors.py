"""Errors that reach the user as one line, never as a traceback.

The CLI prints ``dqnrun <command>: error: <message>`` and exits with ``exit_code``; the Python API raises the
same exception, whose ``str`` is that one-line message.
"""

from __future__ import annotations


class DqnrunError(Exception):
    """Base class of dqnrun's one-line errors."""

    exit_code = 1


class UsageError(DqnrunError):
    """Bad input: a config value, an override, an env id or a checkpoint. Exit code 2."""

    exit_code = 2


class TrainingError(DqnrunError):
    """The run itself went wrong (e.g. a non-finite loss). Exit code 3; the last checkpoint stays intact."""

    exit_code = 3
