"""Scalar names (CleanRL's convention, the same for every logger) and the progress bar."""

from __future__ import annotations

from tqdm import tqdm

EPISODIC_RETURN = "charts/episodic_return"
EPISODIC_LENGTH = "charts/episodic_length"
EPSILON = "charts/epsilon"
SPS = "charts/SPS"
TD_LOSS = "losses/td_loss"
Q_VALUES = "losses/q_values"
EVAL_RETURN = "eval/episodic_return"

ALL_SCALARS = (EPISODIC_RETURN, EPISODIC_LENGTH, EPSILON, SPS, TD_LOSS, Q_VALUES, EVAL_RETURN)

# Written once when a run finishes, with its hyperparameters (TensorBoard's HParams tab compares sweep jobs
# on these columns).
HP_BEST_EVAL = "hparams/best_eval_return"
HP_FINAL_EVAL = "hparams/final_eval_return"
HP_OBJECTIVE = "hparams/objective"
HP_SOLVED_AT = "hparams/solved_at_step"
HP_SPS = "hparams/sps"
HPARAM_METRICS = (HP_BEST_EVAL, HP_FINAL_EVAL, HP_OBJECTIVE, HP_SOLVED_AT, HP_SPS)


def progress_bar(total: int, initial: int = 0, enabled: bool = True) -> tqdm:
    return tqdm(
        total=total, initial=initial, disable=not enabled, unit="step", unit_scale=True,
        dynamic_ncols=True, smoothing=0.1, mininterval=0.5,
    )
