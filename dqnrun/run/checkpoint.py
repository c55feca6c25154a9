"""Checkpoints: atomic save, safe load (``weights_only=True``, never executes code from the file).

Format 2 (dqnrun 0.3)::

    format_version  2
    dqnrun_version  the version that wrote it
    algo            the registered name of the algorithm (`dqnrun.algos.ALGORITHMS`)
    config          the resolved config (plain data)
    policy          the policy network's state_dict: all that eval, export, the API and init_from need
    algo_state      the algorithm's state_dict (target network, optimizer, counters): what resume needs
    step, loop, rng counters, loop statistics and RNG states (resume)

Format 1 (dqnrun 0.2, DQN only, ``online``/``target``/``optimizer``/... at the top, old config key spellings)
is read by migrating it to format 2 on load (`migrate_v1`).
"""

from __future__ import annotations

import logging
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from dqnrun import __version__
from dqnrun.config.keys import migrate_config
from dqnrun.errors import UsageError, WriteError, write_failure
from dqnrun.run.artifacts import atomic_write

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
log = logging.getLogger(__name__)
REQUIRED_KEYS = ("format_version", "algo", "config", "policy", "step")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through `atomic_write`; a failed write (disk full, read-only) raises WriteError, one line,
    and leaves the file that was there."""
    try:
        atomic_write(path, lambda f: torch.save(obj, f))
    except (OSError, RuntimeError) as exc:
        raise WriteError(write_failure(path, exc) + "; the checkpoints written before are intact") from None


def _corrupt(path: Path, exc: BaseException) -> str:
    return (f"ckpt={path} is truncated or corrupt and cannot be read ({type(exc).__name__}); "
            "use another checkpoint, e.g. checkpoints/last.pt or best.pt")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a dqnrun checkpoint, turning every failure into a one-line UsageError."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"ckpt={path}: no such file. Pass a checkpoint written by `dqnrun train`, "
                         "e.g. outputs/<date>/<time>/checkpoints/best.pt")
    if path.is_dir():
        raise UsageError(f"ckpt={path} is a directory; pass a .pt file inside its checkpoints/ folder")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":  # torch.save writes a zip archive; anything else was never a checkpoint
        kind = "an empty file" if not head else "not a file written by torch.save"
        raise UsageError(f"ckpt={path} is not a checkpoint ({kind}); pass a .pt file written by `dqnrun train`, "
                         "e.g. <run dir>/checkpoints/best.pt")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text:  # a torch.save file whose contents the safe loader refuses
            culprit = re.search(r"GLOBAL (\S+) was not", text)
            what = f" ({culprit.group(1)})" if culprit else ""
            raise UsageError(
                f"ckpt={path} was refused by the safe loader: it holds Python objects{what} beyond tensors and "
                "plain data, so loading it could run code. dqnrun checkpoints never do; use one written by "
                "`dqnrun train`"
            ) from None
        raise UsageError(_corrupt(path, exc)) from None
    except Exception as exc:  # any parse failure of the file's bytes means it is damaged
        raise UsageError(_corrupt(path, exc)) from None
    if not isinstance(obj, dict) or "format_version" not in obj:
        raise UsageError(f"ckpt={path} is not a dqnrun checkpoint (no format_version)")
    version = obj["format_version"]
    if version not in READABLE_FORMATS:
        raise UsageError(
            f"ckpt={path} has checkpoint format {version}, but dqnrun {__version__} reads formats "
            f"{', '.join(map(str, READABLE_FORMATS))}; evaluate it with the dqnrun version that wrote it "
            f"({obj.get('dqnrun_version', 'unknown')})"
        )
    if version == 1:
        obj = migrate_v1(obj)
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise UsageError(f"ckpt={path} is not a complete dqnrun checkpoint (missing {', '.join(missing)})")
    return obj


def migrate_v1(obj: dict[str, Any]) -> dict[str, Any]:
    """A format-1 checkpoint (dqnrun 0.2: DQN's learner state at the top level) as format 2."""
    state = {k: obj[k] for k in ("target", "optimizer", "updates", "metric_sums") if k in obj}
    out = {k: v for k, v in obj.items() if k not in ("online", *state)}
    out.update(format_version=FORMAT_VERSION, algo="dqn")
    if "online" in obj:
        out["policy"] = obj["online"]
    if "config" in obj:
        out["config"] = migrate_config(obj["config"])
    if len(state) == 4:  # a resumable checkpoint; best.pt of 0.2 carried all of it too
        out["algo_state"] = state
    return out  # what is missing is named by the required-keys check


# --- resume state: the vector env and the experience, beside last.pt ------------------------------------
# last.pt is the commit point: the env and replay files are written first and carry the step they
# belong to, so a crash between the writes is detected (step mismatch) instead of resuming inconsistently.
ENV_STATE_NAME = "last.env.pt"
OLD_ENV_STATE_NAME = "last.env.pkl"  # dqnrun 0.2 pickled the env: never loaded (unpickling can run code)
REPLAY_STATE_NAME = "last.replay.pt"


def save_env_state(ckpt_dir: Path, step: int, envs: Any, cursor: Any) -> None:
    """The vector env as arrays and plain values (`dqnrun.envs.state`) and the session's env cursor. An env that
    cannot be captured exactly saves its RNGs (or nothing) and why, so a resume says so."""
    from dqnrun.envs import state as S

    blob: dict[str, Any] = {"step": step, "cursor": S.encode(vars(cursor))}
    try:
        blob["envs"] = S.capture(envs)
    except S.NotCapturable as exc:
        blob["why"], blob["rngs"] = str(exc), S.capture_rngs(envs)
    atomic_torch_save(blob, ckpt_dir / ENV_STATE_NAME)
    (ckpt_dir / OLD_ENV_STATE_NAME).unlink(missing_ok=True)


def load_env_state(ckpt_dir: Path, step: int) -> dict[str, Any] | None:
    """The env state saved with last.pt at ``step`` (``weights_only``: nothing in it can run code); None if it
    is missing, unreadable or from another step."""
    path = ckpt_dir / ENV_STATE_NAME
    if (ckpt_dir / OLD_ENV_STATE_NAME).exists() and not path.exists():
        log.warning("resume: %s is an older dqnrun's pickled env state; it is not loaded (unpickling can run "
                    "code)", ckpt_dir / OLD_ENV_STATE_NAME)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as exc:  # torn or foreign: the run resumes with new episodes
        log.warning("resume: %s is unreadable (%s); the envs start new episodes", path, type(exc).__name__)
        return None
    return state if isinstance(state, dict) and state.get("step") == step else None


def save_replay_state(ckpt_dir: Path, step: int, state: dict[str, Any] | None, max_gb: float) -> bool:
    """Write an algorithm's experience (its ``data_state``: tensors, no pickle) if it is under ``max_gb``."""
    path = ckpt_dir / REPLAY_STATE_NAME
    if state is None:
        path.unlink(missing_ok=True)
        return False
    nbytes = sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    if nbytes > max_gb * 2**30:
        path.unlink(missing_ok=True)
        return False
    atomic_torch_save({"step": step, "replay": state}, path)
    return True


def load_replay_state(ckpt_dir: Path, step: int) -> dict[str, Any] | None:
    path = ckpt_dir / REPLAY_STATE_NAME
    if not path.exists():
        return None
    # mmap: a large buffer (frames of 1M Atari transitions) is paged in as it is copied into the preallocated
    # replay, instead of being read whole first (which would need twice its size in memory)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torn, foreign or crafted: never unpickled beyond plain data; refilled instead
        log.warning("resume: %s is unreadable (%s); it is not used", path, type(exc).__name__)
        return None
    return obj["replay"] if isinstance(obj, dict) and obj.get("step") == step else None
