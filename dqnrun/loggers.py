"""Where scalars go: TensorBoard, a CSV file, Weights & Biases, or several at once.

The loop and the run lifecycle write through the small interface every logger here has:

    log(scalars: {name: value}, step)      step = env steps summed over the vector envs
    log_hparams(hparams, metrics, step)     once, when a run finishes (TensorBoard's HParams tab)
    close()
    flush()                                 optional: what was logged reaches the disk (at every log point and
                                            before every checkpoint, so a killed run's files hold all it saved)

Scalar names are the constants in ``dqnrun.metrics`` for every backend. A logger is chosen by the config
group ``logger`` (``logger=csv``, ``logger=[tensorboard,csv]``); each option is one ``_target_`` here, built
by ``dqnrun.builders.build_logger`` with the run's directory, its label and the step from which a resumed run
rewrites history (``purge_step``).
"""

from __future__ import annotations

import csv
import itertools
import logging
import math
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any, Protocol

import google_crc32c

from dqnrun import metrics as M

log = logging.getLogger(__name__)


class Logger(Protocol):
    def log(self, scalars: dict[str, float], step: int) -> None: ...

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoardLogger:
    """TensorBoard event files under ``run_dir/tb/<label>``: the label names the TensorBoard run (env, name,
    seed and a sweep job's overrides) instead of only a date.

    Written by `EventFile` (the same records as tensorboard's ``EventFileWriter``, the writer behind
    ``torch.utils.tensorboard``'s SummaryWriter, without its writer thread), so TensorBoard and its
    EventAccumulator read them as they read SummaryWriter's.

    ``purge_step`` (on resume) drops any events at or after that step left by the interrupted run, as
    SummaryWriter(purge_step=...) does, so a resumed curve has neither duplicated nor missing points.

    Each ``log`` call writes one event holding all its scalars, which is what ``add_scalar`` writes one by
    one.
    """

    def __init__(self, run_dir: str | Path, label: str = "run", purge_step: int | None = None,
                 run_config: dict[str, Any] | None = None) -> None:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        self.log_dir = Path(run_dir) / "tb" / label
        self._events = EventFile(self.log_dir)
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

    def flush(self) -> None:
        self._events.flush()

    def close(self) -> None:
        self._events.close()


class EventFile:
    """A TensorBoard event file written in the caller's thread: ``add_event(event)`` frames the serialized
    ``Event`` as a TFRecord (length, masked CRC-32C of the length, data, masked CRC-32C of the data) into a buffered
    file, which reaches the disk at ``flush``/``close`` (the session flushes at every log point and before every
    checkpoint) and at the first record ``flush_s`` seconds or more after the oldest one waiting. The file name and
    the first record (``file_version``) are tensorboard's ``EventFileWriter``'s.

    Why not ``EventFileWriter``: it hands every record to a writer thread that computes both CRCs in pure Python
    (tensorboard's stub of TensorFlow's ``masked_crc32c``), holding the GIL for tens of microseconds per record. A
    run logs a record per finished episode (thousands in a CartPole run), so that thread kept taking the GIL
    whenever the training loop released it (every torch op, every numpy random draw): a 30k-step CartPole run
    spent a third of its time waiting for it (docs/benchmarks.md, section 14). Here the CRCs come from
    ``google_crc32c`` (C; well under a microsecond a record) and a record costs the loop a few microseconds.
    """

    _uid = itertools.count()  # distinct names for several files opened in one process within the same second

    def __init__(self, log_dir: str | Path, flush_s: float = 5.0) -> None:
        from tensorboard.compat.proto.event_pb2 import Event, SourceMetadata

        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.log_dir / (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                                    f"{os.getpid()}.{next(EventFile._uid)}")
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self.flush_s = float(flush_s)
        self._flush_at: float | None = None  # when buffered records must reach the file, None if none wait
        self.add_event(Event(wall_time=time.time(), file_version="brain.Event:2",
                             source_metadata=SourceMetadata(writer="dqnrun.loggers.EventFile")))
        self.flush()

    def add_event(self, event: Any) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._file.write(b"".join((header, struct.pack("<I", masked_crc32c(header)), data,
                                   struct.pack("<I", masked_crc32c(data)))))
        now = time.monotonic()
        if self._flush_at is None:  # the oldest record waiting in the buffer
            self._flush_at = now + self.flush_s
        if now >= self._flush_at:
            self.flush()

    def flush(self) -> None:
        self._file.flush()
        self._flush_at = None

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()


def flush_logger(logger: Any) -> None:
    """``logger.flush()`` where the logger has one (a user's own logger need not: W&B's buffers itself)."""
    flush = getattr(logger, "flush", None)
    if flush is not None:
        flush()


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C rotated right by 15 bits plus a constant (TensorFlow's ``crc32c::Mask``)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


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

    def flush(self) -> None:
        self._file.flush()

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

    def flush(self) -> None:
        for logger in self.loggers:
            flush_logger(logger)

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

