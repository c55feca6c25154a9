"""Scalar names (CleanRL's convention, the same for every logger), the progress bar and the progress line."""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm

EPISODIC_RETURN = "charts/episodic_return"
EPISODIC_LENGTH = "charts/episodic_length"
EPSILON = "charts/epsilon"
LEARNING_RATE = "charts/learning_rate"
SPS = "charts/SPS"
TD_LOSS = "losses/td_loss"
Q_VALUES = "losses/q_values"
EVAL_RETURN = "eval/episodic_return"

ALL_SCALARS = (EPISODIC_RETURN, EPISODIC_LENGTH, EPSILON, LEARNING_RATE, SPS, TD_LOSS, Q_VALUES, EVAL_RETURN)

# Written once when a run finishes, with its hyperparameters (TensorBoard's HParams tab compares sweep jobs
# on these columns).
HP_BEST_EVAL = "hparams/best_eval_return"
HP_FINAL_EVAL = "hparams/final_eval_return"
HP_OBJECTIVE = "hparams/objective"
HP_SOLVED_AT = "hparams/solved_at_step"
HP_SPS = "hparams/sps"
HPARAM_METRICS = (HP_BEST_EVAL, HP_FINAL_EVAL, HP_OBJECTIVE, HP_SOLVED_AT, HP_SPS)

# The progress line of every log interval goes through this logger: into train.log always, onto the console
# only while no progress bar is drawn there (a bar and lines would interleave).
PROGRESS_LOGGER = "dqnrun.progress"


def progress_bar(total: int, initial: int = 0, enabled: bool = True, desc: str | None = None) -> tqdm:
    """The bar, drawn only on a terminal (without one, tqdm's redraws become one endless line in a log file).
    It shows the run's own throughput (env steps per second of training, as logged), not tqdm's rate."""
    return tqdm(
        total=total, initial=initial, disable=not (enabled and sys.stderr.isatty()), unit="step", unit_scale=True,
        dynamic_ncols=True, mininterval=0.5, desc=desc,
        bar_format="{desc}{desc_sep}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"
        .replace("{desc_sep}", ": " if desc else ""),
    )


class _NotOnConsole(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != PROGRESS_LOGGER


_QUIET = _NotOnConsole()


def quiet_console(on: bool) -> None:
    """While a bar is drawn, keep progress lines off the console handlers (train.log still gets them)."""
    for logger in (logging.getLogger(), logging.getLogger("dqnrun")):
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                (handler.addFilter if on else handler.removeFilter)(_QUIET)
