"""Checkpoints: atomic save, safe load (``weights_only=True``, never executes code from the file)."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from dqnrun import __version__
from dqnrun.errors import UsageError

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "online", "target", "optimizer", "step", "config")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Write to a temp file in the same directory, fsync, then ``os.replace``: a crash at any moment
    leaves either the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a dqnrun checkpoint, turning every failure into a one-line UsageError."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"ckpt={path}: no such file. Pass a checkpoint written by `dqnrun train`, "
                         "e.g. outputs/<date>/<time>/checkpoints/best.pt")
    if path.is_dir():
        raise UsageError(f"ckpt={path} is a directory; pass a .pt file inside its checkpoints/ folder")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"ckpt={path} was refused by the safe loader (it holds objects other than tensors and plain "
            f"data, so loading it could run code): {first}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UsageError(
            f"ckpt={path} is truncated or corrupt and cannot be read ({type(exc).__name__}); "
            "use another checkpoint, e.g. checkpoints/last.pt or best.pt"
        ) from None
    if not isinstance(obj, dict) or "format_version" not in obj:
        raise UsageError(f"ckpt={path} is not a dqnrun checkpoint (no format_version)")
    version = obj["format_version"]
    if version != FORMAT_VERSION:
        raise UsageError(
            f"ckpt={path} has checkpoint format {version}, but dqnrun {__version__} reads format "
            f"{FORMAT_VERSION}; evaluate it with the dqnrun version that wrote it "
            f"({obj.get('dqnrun_version', 'unknown')})"
        )
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise UsageError(f"ckpt={path} is not a complete dqnrun checkpoint (missing {', '.join(missing)})")
    return obj
