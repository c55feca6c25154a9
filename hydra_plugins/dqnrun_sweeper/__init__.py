"""dqnrun's Optuna sweeper: Hydra's Optuna sweeper with a study that survives its sweepers.

Hydra plugins must live in the ``hydra_plugins`` namespace package; this one registers
``hydra/sweeper=dqnrun_optuna`` (used by ``hparams_search=cartpole_optuna``). See `._sweeper` for what it adds.
"""

try:
    from hydra_plugins.dqnrun_sweeper._sweeper import DqnrunOptunaSweeper, register_configs
except ImportError:  # the sweeps extra is not installed (e.g. the Ray environment): no sweeper, no error
    pass
else:
    register_configs()
    __all__ = ["DqnrunOptunaSweeper"]
