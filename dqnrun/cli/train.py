"""`dqnrun train`: the Hydra task. It hands the composed config to the run lifecycle (`dqnrun.run.lifecycle`).

In a multirun (sweep), a job that fails is recorded (its results.json says ``"status": "failed"``, its
train.log holds the error) and returns NaN, so Hydra goes on with the other jobs and Optuna marks the trial
failed; `dqnrun.sweep.SweepSummary` then says how many jobs failed and the sweep exits non-zero. A single run
prints its error in one line and exits with the error's code.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from dqnrun.errors import DqnrunError
from dqnrun.run.artifacts import runnable
from dqnrun.sweep import cpu_share, ensure_plugins, limit_threads

log = logging.getLogger("dqnrun.train")
ensure_plugins()  # before Hydra composes hydra/sweeper=dqnrun_optuna


@hydra.main(config_path="pkg://dqnrun.conf", config_name="train", version_base=None)
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point. Returns the sweep objective (``objective=``; NaN for a failed job)."""
    from dqnrun.config.compose import as_typed_overrides, normalize  # torch and gymnasium: not for --help/--cfg
    from dqnrun.run.lifecycle import Job, execute

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir = Path(hc.runtime.output_dir)
    overrides = as_typed_overrides(hc.overrides.task)
    if overrides != list(hc.overrides.task) and hc.output_subdir is not None:
        # Hydra recorded the overrides it composed (canonical keys); the run records them as the user typed them
        (run_dir / hc.output_subdir / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    job = Job(run_dir, overrides, multirun=multirun, cpu_share=cpu_share(hc.launcher) if multirun else None)
    limit_threads(job.cpu_share)
    try:
        results = execute(normalize(cfg), job)
    except DqnrunError as exc:
        if multirun:
            return math.nan
        print(f"dqnrun train: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception:
        if multirun:  # recorded in results.json and train.log by `execute`; the other jobs go on
            return math.nan
        raise
    if "exit_code" in results:
        print(f"dqnrun train: stopped by signal; saved {Path(results['run_dir']) / 'checkpoints' / 'last.pt'}"
              f" (continue it: {runnable('dqnrun')} train resume={results['run_dir']})", file=sys.stderr)
        sys.exit(results["exit_code"])
    value = results["objective"]["value"]
    return math.nan if value is None else float(value)
