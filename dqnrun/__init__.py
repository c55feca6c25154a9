"""dqnrun: config-driven Deep Q-Network training and evaluation for Gymnasium environments."""

from __future__ import annotations

import os
import time

from omegaconf import OmegaConf

__version__ = "0.1.0"

# One short id per process, appended to run directory names so that jobs started in the same second
# (many sweep jobs, two shells) never share a directory. Hydra's ${now:} has one-second resolution.
_RUN_UID = f"{int(time.time_ns() // 1000) % 1_000_000:06d}{os.urandom(2).hex()}"

if not OmegaConf.has_resolver("dqnrun_uid"):
    # use_cache: the value is stored in the config it first resolves in, so a config pickled to a launcher's
    # job process (submitit, joblib), or to its requeued run, resolves to the same run directory there.
    OmegaConf.register_new_resolver("dqnrun_uid", lambda: _RUN_UID, use_cache=True)
