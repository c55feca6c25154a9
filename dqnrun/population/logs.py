"""Each member's log lines in its own train.log, though all members live in one process.

A solo job's lines go to its train.log through the file handler Hydra installs per job. A population runs its
members in lockstep in one loop, so the loop says whose work it is doing (`MemberLogs.member`) and one handler
routes every record emitted meanwhile into that member's file. On the console a member's INFO lines (its
progress lines every log interval) are held back: sixteen members would bury the population's own lines;
warnings and errors still show, prefixed with the member's directory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job_logging format


class MemberLogs(logging.Handler):
    """Routes log records to the train.log of the member being worked on (`member`), if any."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.files: dict[str, logging.FileHandler] = {}
        self.current: str | None = None
        self.labels: dict[str, str] = {}

    def open(self, key: str, path: Path, label: str) -> None:
        """Start member ``key``'s log file (appending, as a resumed run's train.log continues)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, mode="a", encoding="utf-8", delay=True)
        handler.setFormatter(logging.Formatter(FORMAT))
        self.files[key], self.labels[key] = handler, label

    def close_member(self, key: str) -> None:
        handler = self.files.pop(key, None)
        if handler is not None:
            handler.close()

    def emit(self, record: logging.LogRecord) -> None:
        handler = self.files.get(self.current) if self.current is not None else None
        if handler is not None:
            handler.handle(record)

    @contextmanager
    def member(self, key: str) -> Iterator[None]:
        """Records emitted inside go to member ``key``'s train.log."""
        previous, self.current = self.current, key
        try:
            yield
        finally:
            self.current = previous

    def console_filter(self) -> logging.Filter:
        """For console handlers: a member's INFO lines stay in its file; its warnings show, labelled."""
        router = self

        class _Filter(logging.Filter):
            def filter(self, record: logging.LogRecord) -> bool:
                if router.current is None:
                    return True
                if record.levelno < logging.WARNING:
                    return False
                label = router.labels.get(router.current, router.current)
                if not getattr(record, "_member_labelled", False):
                    record.msg = f"[{label}] {record.msg}"
                    record._member_labelled = True  # type: ignore[attr-defined]
                return True

        return _Filter()

    def close_all(self) -> None:
        for key in list(self.files):
            self.close_member(key)


@contextmanager
def routed(router: MemberLogs) -> Iterator[MemberLogs]:
    """Install ``router`` on the root logger (records at INFO and above), and its console filter on the root's
    stream handlers, for the duration of a population."""
    root = logging.getLogger()
    level = root.level
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    consoles = [h for h in root.handlers if isinstance(h, logging.StreamHandler)
                and not isinstance(h, logging.FileHandler)]
    flt = router.console_filter()
    for h in consoles:
        h.addFilter(flt)
    root.addHandler(router)
    try:
        yield router
    finally:
        root.removeHandler(router)
        for h in consoles:
            h.removeFilter(flt)
        root.setLevel(level)
        router.close_all()
