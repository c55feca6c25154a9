"""Errors that reach the user as one line, never as a traceback."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input: a config value, an override, an env id or a checkpoint. Exit code 2."""

    exit_code = 2


class TrainingError(Exception):
    """The run itself went wrong (e.g. a non-finite loss). Exit code 3; the last checkpoint stays intact."""

    exit_code = 3
