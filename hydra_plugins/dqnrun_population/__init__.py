"""dqnrun's population launcher: ``hydra/launcher=population`` trains a multirun's jobs together, in lockstep.

A thin shell (Hydra loads launchers only from the ``hydra_plugins`` namespace): the engine is
`dqnrun.population` (imported when a sweep launches; torch is not loaded for ``--help``). docs/populations.md.
"""

# No `from __future__ import annotations` here: Hydra's plugin scan runs this module before putting it in
# sys.modules, and a dataclass with string annotations looks its module up there.
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

__all__ = ["PopulationLauncher", "PopulationLauncherConf"]


class PopulationLauncher(Launcher):
    """Groups a batch of jobs into populations and trains each in one process (`dqnrun.population.launch`)."""

    def __init__(self, **params: Any) -> None:
        self.params = params
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from dqnrun.config.derive import deriving
        from dqnrun.population.launch import Options

        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context
        deriving(hydra_context.config_loader)  # the sweeper checking the batch, the launcher: each shape composed once
        params = {k: (OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v)
                  for k, v in self.params.items()}
        try:
            self.options = Options.of(params)
        except ValueError as exc:  # bad input: one line, as the CLI says any other (dqnrun.errors.UsageError)
            print(f"dqnrun train: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from dqnrun.population.launch import launch

        return launch(self, job_overrides, initial_job_idx)


@dataclass
class PopulationLauncherConf:
    _target_: str = "hydra_plugins.dqnrun_population.PopulationLauncher"
    max_members: int = 64  # members per population at most; a larger group becomes several populations
    n_jobs: int = -1  # populations side by side (processes), each with its share of the cores; -1: one per core
    seeds_per_job: int = 1  # each job trained as this many seeds (seed .. seed+S-1); its value: their IQM
    torch_threads: int | None = None  # the batched update's threads; default: members' torch_threads within the share
    submitit: Any | None = None  # {cluster: local|slurm, <submitit parameters>}: each population one job
    autograd: Any = "auto"  # batch dueling, C51, Nature CNN...: auto (where a GPU is) | true | false


ConfigStore.instance().store(group="hydra/launcher", name="population", node=PopulationLauncherConf,
                             provider="dqnrun")
