"""dqnrun's Optuna sweeper: Hydra's Optuna sweeper with a study that survives its sweepers.

Hydra plugins must live in the ``hydra_plugins`` namespace package; this one registers ``hydra/sweeper=dqnrun_optuna``
(used by ``hparams_search=cartpole_optuna``). This module stays light (Hydra imports every plugin at startup, and
optuna costs seconds to import): the implementation, in `._sweeper`, is imported when a sweep starts.
"""

# No `from __future__ import annotations` here: Hydra's plugin scan runs this module before putting it in
# sys.modules, and a dataclass with string annotations looks its module up there.
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

try:
    from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
except ImportError:  # the sweeps extra is not installed (e.g. the Ray environment): no sweeper, no error
    OptunaSweeperConf = None

__all__ = ["DqnrunOptunaSweeper"]


class DqnrunOptunaSweeper(Sweeper):
    """Hydra's Optuna sweeper with a resumable, shareable study (see `._sweeper`)."""

    def __init__(self, sampler: Any, direction: Any, storage: Any, study_name: Any, n_trials: int, n_jobs: int,
                 max_failure_rate: float, search_space: DictConfig | None, custom_search_space: str | None,
                 params: DictConfig | None) -> None:
        from hydra_plugins.dqnrun_sweeper._sweeper import DqnrunOptunaSweeperImpl

        self.sweeper = DqnrunOptunaSweeperImpl(sampler, direction, storage, study_name, n_trials, n_jobs,
                                               max_failure_rate, search_space, custom_search_space, params)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self.sweeper.sweep(arguments)


if OptunaSweeperConf is not None:

    @dataclass
    class DqnrunOptunaSweeperConf(OptunaSweeperConf):
        _target_: str = "hydra_plugins.dqnrun_sweeper.DqnrunOptunaSweeper"
        storage: Any = "sqlite:///${hydra.sweep.dir}/optuna.db"
        study_name: Any = "dqnrun"
        direction: Any = "maximize"

    ConfigStore.instance().store(group="hydra/sweeper", name="dqnrun_optuna", node=DqnrunOptunaSweeperConf,
                                 provider="dqnrun")
