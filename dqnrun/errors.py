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


class EnvError(TrainingError):
    """The env raised or returned something it should not have (`where`: reset | step); the message names it."""

    def __init__(self, message: str, where: str = "step", cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.where, self.cause = where, cause


class WriteError(TrainingError):
    """A file could not be written (disk full, read-only, no permission): one line naming the path and the cause.
    What was on disk before stays intact (every write is atomic)."""


def write_failure(path: object, exc: BaseException) -> str:
    """Why writing ``path`` failed, in words: the errno's meaning, or for a failure inside torch.save (which
    reports a full disk as "unexpected pos ...") the free space of the filesystem."""
    import errno
    import shutil
    from pathlib import Path

    reasons = {errno.ENOSPC: "the disk is full (no space left on the device)",
               errno.EDQUOT: "the disk quota is used up", errno.EROFS: "the filesystem is read-only",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied"}
    if isinstance(exc, OSError) and exc.errno in reasons:
        return f"cannot write {path}: {reasons[exc.errno]}"
    folder = Path(str(path)).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if shutil.disk_usage(folder).free < 64 * 2**20:
            return f"cannot write {path}: {reasons[errno.ENOSPC]}"
    except OSError:
        pass
    first = (str(getattr(exc, "strerror", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"cannot write {path}: {first}"


class Interrupted(BaseException):  # noqa: N818 - it is a signal, not an error
    """A signal (SIGTERM, SIGINT) outside a run's own handling (while starting up): leave, saying so in one line.
    A BaseException, like KeyboardInterrupt, so that nothing catching Exception swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
