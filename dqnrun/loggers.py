"""Where scalars go: TensorBoard, a CSV file, Weights & Biases, or several at once.

The loop and the run lifecycle write through the small interface every logger here has:

    log(scalars: {name: value}, step)      step = env steps summed over the vector envs
    log_hparams(hparams, metrics, step)     once, when a run finishes (TensorBoard's HParams tab)
    close()

Scalar names are the constants in ``dqnrun.metrics`` for every backend. A logger is chosen by the config
group ``logger`` (``logger=csv``, ``logger=[tensorboard,csv]``); each option is one ``_target_`` here, built
by ``dqnrun.builders.build_logger`` with the run's directory, its label and the step from which a resumed run
rewrites history (``purge_step``).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Protocol

from dqnrun import metrics as M

log = logging.getLogger(__name__)


class Logger(Protocol):
    def log(self, scalars: dict[str, float], step: int) -> None: ...

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoardLogger:
    """TensorBoard event files under ``run_dir/tb/<label>``: the label names the TensorBoard run (env, name,
    seed and a sweep job's overrides) instead of only a date.

    Written with tensorboard's own ``EventFileWriter``, the writer behind ``torch.utils.tensorboard``'s
    SummaryWriter, whose package also imports torch's ONNX exporter. Events are the same protos, so TensorBoard
    (and its EventAccumulator) reads both the same.

    ``purge_step`` (on resume) drops any events at or after that step left by the interrupted run, as
    SummaryWriter(purge_step=...) does, so a resumed curve has neither duplicated nor missing points.

    Each ``log`` call writes one event holding all its scalars, which is what ``add_scalar`` writes one by
    one. The queue is long enough that the loop's burst of episode records at each log point never waits for
    the writer thread: with SummaryWriter's default of 10, that handoff cost ~60 µs per record
    (docs/benchmarks.md, section 5).
    """

    def __init__(self, run_dir: str | Path, label: str = "run", purge_step: int | None = None,
                 run_config: dict[str, Any] | None = None) -> None:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.log_dir = Path(run_dir) / "tb" / label
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._events = EventFileWriter(str(self.log_dir), max_queue_size=4096, flush_secs=30)
        if purge_step is not None:  # TensorBoard drops earlier-written events at steps >= purge_step
            self._events.add_event(Event(step=purge_step, file_version="brain.Event:2"))
            self._events.add_event(Event(step=purge_step, session_log=SessionLog(status=SessionLog.START)))

    def log(self, scalars: dict[str, float], step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=name, simple_value=float(value)) for name, value in scalars.items()]
        self._add(Summary(value=values), step)

    def _add(self, summary: Any, step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        self._events.add_event(Event(summary=summary, step=int(step), wall_time=time.time()))

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        """The HParams plugin's three records (experiment, session start, session end) in this run's own
        event file, beside the metric scalars they refer to."""
        for record in hparams_summaries(hparams, list(metrics)):
            self._add(record, 0)
        self.log({k: v for k, v in metrics.items() if math.isfinite(v)}, step)

    def close(self) -> None:
        self._events.close()


def hparams_summaries(hparams: dict[str, Any], metric_tags: list[str]) -> list[Any]:
    """The Summary protos of TensorBoard's HParams plugin for one session: its experiment (the hyperparameter and
    metric names), its start (the values) and its end (success); the metrics are the run's scalars of those tags.
    What ``torch.utils.tensorboard.summary.hparams`` builds, without importing it."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    infos, start = [], plugin_data_pb2.SessionStartInfo()
    for key, value in hparams.items():
        if value is None:
            continue
        if isinstance(value, bool):
            start.hparams[key].bool_value, kind = value, "DATA_TYPE_BOOL"
        elif isinstance(value, int | float):
            start.hparams[key].number_value, kind = float(value), "DATA_TYPE_FLOAT64"
        else:
            start.hparams[key].string_value, kind = str(value), "DATA_TYPE_STRING"
        infos.append(api_pb2.HParamInfo(name=key, type=api_pb2.DataType.Value(kind)))
    experiment = api_pb2.Experiment(hparam_infos=infos,
                                    metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=t))
                                                  for t in metric_tags])
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value("STATUS_SUCCESS"))
    records = []
    for tag, data in ((metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)),
                      (metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start)),
                      (metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end))):
        data.version = metadata.PLUGIN_DATA_VERSION
        meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME,
                                                                      content=data.SerializeToString()))
        records.append(Summary(value=[Summary.Value(tag=tag, metadata=meta)]))
    return records


class CSVLogger:
    """``run_dir/metrics.csv``: a ``step`` column and one column per scalar name (``dqnrun.metrics``), one row
    per ``log`` call with the columns it logged filled in. Readable by anyone (pandas, a spreadsheet).

    On resume (``purge_step``) the rows at or after that step, left by the interrupted run, are dropped, as
    TensorBoard's purge does, so the file never holds a step twice for the same scalar.
    """

    def __init__(self, run_dir: str | Path, label: str = "run", purge_step: int | None = None,
                 run_config: dict[str, Any] | None = None, filename: str = "metrics.csv") -> None:
        self.path = Path(run_dir) / filename
        self.columns = ["step", *M.ALL_SCALARS, *M.HPARAM_METRICS]
        kept: list[dict[str, str]] = []
        if self.path.exists() and purge_step is not None:
            with open(self.path, newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["step"]) < purge_step]
        fresh = not self.path.exists() or purge_step is not None
        self._file = open(self.path, "w" if fresh else "a", newline="")  # noqa: SIM115 - closed in close()
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="ignore")
        if fresh:
            self._writer.writeheader()
            self._writer.writerows(kept)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self._writer.writerow({"step": step, **{k: repr(float(v)) for k, v in scalars.items()}})

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        self.log({k: v for k, v in metrics.items() if math.isfinite(v)}, step)

    def close(self) -> None:
        self._file.close()


class WandbLogger:
    """Weights & Biases (``pip install 'dqnrun[wandb]'``). ``mode=offline`` (the preset's default) needs no
    network or account: the run is written under ``run_dir/wandb/`` and can be uploaded later with
    ``wandb sync``. ``mode=online`` logs live.

    W&B drops points logged at a step lower than one it has seen, so the loop logs each interval's episode
    records before the interval's own scalars, in step order.
    """

    def __init__(self, run_dir: str | Path, label: str = "run", purge_step: int | None = None,
                 run_config: dict[str, Any] | None = None, project: str = "dqnrun", entity: str | None = None,
                 mode: str = "offline", group: str | None = None, tags: list[str] | None = None) -> None:
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            import wandb
        except ImportError:
            from dqnrun.errors import UsageError

            raise UsageError("logger=wandb needs wandb: pip install 'dqnrun[wandb]' (make install does)") from None
        self._wandb = wandb
        run_dir = Path(run_dir)
        # One W&B run per dqnrun run: its id lives in the run directory, so a resume continues the same run.
        id_file = run_dir / "wandb" / "run_id"
        run_id = id_file.read_text().strip() if id_file.exists() else os.urandom(4).hex()
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            project=project, entity=entity, mode=mode, dir=str(run_dir), id=run_id, name=label, group=group,
            tags=list(tags or []) or None, config=run_config, resume="allow", reinit="create_new",
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(dict(scalars), step=step)

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        self.run.config.update(hparams, allow_val_change=True)
        for key, value in metrics.items():
            self.run.summary[key] = value

    def close(self) -> None:
        self.run.finish()


class MultiLogger:
    """Fans every call out to several loggers (``logger=[tensorboard,csv]``)."""

    def __init__(self, loggers: list[Logger]) -> None:
        self.loggers = loggers

    def log(self, scalars: dict[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log(scalars, step)

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_hparams(hparams, metrics, step)

    def close(self) -> None:
        errors = []
        for logger in self.loggers:
            try:
                logger.close()
            except Exception as exc:  # one backend failing to close must not lose the others' files
                errors.append(exc)
                log.warning("logger %s did not close cleanly: %s", type(logger).__name__, exc)
        if errors and len(errors) == len(self.loggers):
            raise errors[0]

