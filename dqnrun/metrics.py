"""Scalar names (CleanRL's convention), the TensorBoard writer and the progress bar.

The loop logs through ``ScalarLogger.log(scalars, step)`` only, so other backends (CSV, wandb) can plug
in behind the same two methods.
"""

from __future__ import annotations

from pathlib import Path

from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

EPISODIC_RETURN = "charts/episodic_return"
EPISODIC_LENGTH = "charts/episodic_length"
EPSILON = "charts/epsilon"
SPS = "charts/SPS"
TD_LOSS = "losses/td_loss"
Q_VALUES = "losses/q_values"
EVAL_RETURN = "eval/episodic_return"

ALL_SCALARS = (EPISODIC_RETURN, EPISODIC_LENGTH, EPSILON, SPS, TD_LOSS, Q_VALUES, EVAL_RETURN)


class ScalarLogger:
    """TensorBoard scalars under ``run_dir/tb``. ``step`` is always the env step (summed over envs).

    ``purge_step`` (on resume) drops any events at or after that step left by the interrupted run, so a
    resumed curve has neither duplicated nor missing points.

    Each ``log`` call writes one event holding all its scalars, which is what ``add_scalar`` writes one by
    one (TensorBoard reads both the same). The queue is long enough that the loop's burst of episode records
    at each log point never waits for the writer thread: with SummaryWriter's default of 10, that handoff
    cost ~60 µs per record (docs/benchmarks.md, section 5).
    """

    def __init__(self, log_dir: str | Path, purge_step: int | None = None) -> None:
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step, max_queue=4096, flush_secs=30)
        self._events = self.writer._get_file_writer()  # the event writer behind add_scalar

    def log(self, scalars: dict[str, float], step: int) -> None:
        values = [Summary.Value(tag=name, simple_value=float(value)) for name, value in scalars.items()]
        self._events.add_summary(Summary(value=values), step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def progress_bar(total: int, initial: int = 0, enabled: bool = True) -> tqdm:
    return tqdm(
        total=total, initial=initial, disable=not enabled, unit="step", unit_scale=True,
        dynamic_ncols=True, smoothing=0.1, mininterval=0.5,
    )
