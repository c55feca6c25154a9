"""One process per run directory: a lock file that holds on shared filesystems (NFS) and never outlives its owner.

``<run dir>/.lock`` is created with ``link(2)``, which is atomic on local filesystems and on NFS (v2 and later),
where ``O_EXCL`` and ``flock`` are not dependable: the owner writes its record to a uniquely named file and links
it to ``.lock``; the link fails if the lock exists. The record (JSON) names the owner: host, boot id, pid, SLURM
job id, start time. While a run holds the lock, a thread touches it every `HEARTBEAT_S` seconds.

A lock left by a process that is gone never blocks a new owner. It is stale when:

- its host is this host (same boot) and its pid is gone (or a zombie), or the host was rebooted since;
- it carries this process's SLURM job id: a requeued job finds the lock of its own previous incarnation;
- its heartbeat is older than `STALE_S` seconds (an owner on another host, which cannot be asked directly).

Standard library only (`dqnrun report` reads locks to tell a live run from a dead one).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

LOCK_NAME = ".lock"
HEARTBEAT_S = 10.0
STALE_S = 90.0  # 9 missed heartbeats: an NFS client's attribute cache (60 s at most by default) is below it


class RunDirBusy(Exception):
    """The run directory is owned by a live process (the message says which)."""


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (a zombie, killed but not yet reaped, is gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read_lock(run_dir: str | Path) -> dict[str, Any] | None:
    """The owner record of a run directory's lock, with its heartbeat age (``age_s``); None if unlocked."""
    path = Path(run_dir) / LOCK_NAME
    try:
        record = json.loads(path.read_text())
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"corrupt": True, "age_s": 0.0}
    return {**record, "age_s": age} if isinstance(record, dict) else {"corrupt": True, "age_s": 0.0}


def owner_alive(record: dict[str, Any]) -> bool:
    """Whether the owner of a lock record still runs (see the module docstring for the rules)."""
    if record.get("corrupt"):
        return record["age_s"] < STALE_S
    if record.get("host") == socket.gethostname():
        if record.get("boot") and record.get("boot") != boot_id():
            return False
        if record.get("pid") == os.getpid():
            return True
        return pid_alive(int(record.get("pid", -1)))
    job = os.environ.get("SLURM_JOB_ID")
    if job and record.get("slurm_job") == job:
        return False
    return record["age_s"] < STALE_S


def describe(record: dict[str, Any]) -> str:
    if record.get("corrupt"):
        return "an unreadable lock"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("started", 0)))
    return f"pid {record.get('pid')} on {record.get('host')} (since {since})"


class RunLock:
    """``with RunLock(run_dir):`` -- own the run directory (created if missing), or raise RunDirBusy.

    Re-entrant within a process: acquiring a directory this process already holds is a no-op (the command line
    locks a run's directory before Hydra writes into it; the run then locks it again)."""

    _held: dict[Path, RunLock] = {}

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.path = self.run_dir / LOCK_NAME
        self.token = uuid.uuid4().hex
        self._depth = 0
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self) -> RunLock:
        held = RunLock._held.get(self.run_dir)
        if held is not None:
            held._depth += 1
            return held
        self.run_dir.mkdir(parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "boot": boot_id(), "started": time.time(),
                  "slurm_job": os.environ.get("SLURM_JOB_ID"), "token": self.token}
        tmp = self.run_dir / f"{LOCK_NAME}.{self.token}"
        tmp.write_text(json.dumps(record))
        try:
            for _ in range(5):
                if self._link(tmp):
                    break
                owner = read_lock(self.run_dir)
                if owner is not None and owner_alive(owner):
                    raise RunDirBusy(f"{self.run_dir} is in use by {describe(owner)}; wait for that run to end, or "
                                     "write this one elsewhere (hydra.run.dir=...)")
                self._break(owner)
            else:
                raise RunDirBusy(f"{self.run_dir}: could not take its lock ({self.path}); try again")
        finally:
            tmp.unlink(missing_ok=True)
        self._depth = 1
        RunLock._held[self.run_dir] = self
        self._beat = threading.Thread(target=self._heartbeat, name="dqnrun-lock", daemon=True)
        self._beat.start()
        return self

    def _link(self, tmp: Path) -> bool:
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            # NFS may retry a link whose reply was lost and report EEXIST for our own link: check the count.
            return tmp.stat().st_nlink == 2

    def _break(self, owner: dict[str, Any] | None) -> None:
        """Remove a stale lock, unless another process replaced it meanwhile (then it is left alone)."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale-{self.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
            moved = None
        if owner is not None and not owner.get("corrupt") and (moved or {}).get("token") != owner.get("token"):
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)  # a fresh lock taken meanwhile: put it back
        aside.unlink(missing_ok=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        self._depth -= 1
        if self._depth > 0:
            return
        RunLock._held.pop(self.run_dir, None)
        self._stop.set()
        try:
            if json.loads(self.path.read_text()).get("token") == self.token:
                self.path.unlink()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def holds_run(run_dir: str | Path) -> bool:
    """Whether a directory holds a run's files (its record, checkpoints or Hydra's record of its config)."""
    d = Path(run_dir)
    return (d / "results.json").exists() or (d / "checkpoints").is_dir() or (d / ".hydra" / "config.yaml").exists()


def remove_stale_temp_files(run_dir: str | Path) -> list[Path]:
    """Temp files of atomic writes (``.<name>.tmp-<pid>``) that a killed save left in the run directory and its
    checkpoints/ folder; call it only while holding the lock (no other writer exists). Returns what it removed."""
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / "checkpoints"):
        for p in folder.glob(".*.tmp-*") if folder.is_dir() else []:
            pid = p.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) == os.getpid():
                continue
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
