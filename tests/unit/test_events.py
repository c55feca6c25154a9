"""What a run writes as it goes, on the path every env step takes: TensorBoard's event files (written without a
writer thread) and the session's cadences (log, evaluate, checkpoint), which it checks only at the steps where
one may fall due."""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboard_masked_crc32c

from dqnrun import metrics as M
from dqnrun.envs import make_vector_env
from dqnrun.loggers import EventFile, TensorBoardLogger, masked_crc32c
from dqnrun.run.session import Cadence, EnvCursor, LoopState, Session, crossings


def records(path: Path) -> list[bytes]:
    """The TFRecord payloads of an event file, each checked against tensorboard's own (pure Python) checksum."""
    raw, out, at = path.read_bytes(), [], 0
    while at < len(raw):
        header = raw[at:at + 8]
        (n,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", raw[at + 8:at + 12])[0] == tensorboard_masked_crc32c(header)
        data = raw[at + 12:at + 12 + n]
        assert struct.unpack("<I", raw[at + 12 + n:at + 16 + n])[0] == tensorboard_masked_crc32c(data)
        out.append(data)
        at += 16 + n
    return out


def test_masked_crc32c_is_tensorboards() -> None:
    gen = np.random.default_rng(0)
    for n in (0, 1, 7, 8, 9, 64, 1000, 4097):
        data = gen.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert masked_crc32c(data) == tensorboard_masked_crc32c(data)


def test_tensorboard_logger_writes_what_tensorboard_reads_without_a_thread(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    logger = TensorBoardLogger(tmp_path, label="run", purge_step=7)
    for step in range(10, 60, 10):
        logger.log({M.EPISODIC_RETURN: step * 1.5, M.EPISODIC_LENGTH: step}, step)
    logger.log({M.SPS: 123.0}, 50)
    assert not set(threading.enumerate()) - before  # nothing runs beside the loop
    logger.close()
    (path,) = (tmp_path / "tb" / "run").glob("events.out.tfevents.*")
    events = [Event.FromString(r) for r in records(path)]
    assert events[0].file_version == "brain.Event:2"
    assert (events[1].step, events[1].file_version) == (7, "brain.Event:2")  # the purge marker
    acc = EventAccumulator(str(path.parent))
    acc.Reload()
    assert [(s.step, s.value) for s in acc.Scalars(M.EPISODIC_RETURN)] == [(s, s * 1.5) for s in range(10, 60, 10)]
    assert [(s.step, s.value) for s in acc.Scalars(M.SPS)] == [(50, 123.0)]


def test_event_file_reaches_the_disk_at_flush_and_close(tmp_path: Path) -> None:
    lazy = EventFile(tmp_path / "lazy", flush_s=3600.0)
    eager = EventFile(tmp_path / "eager", flush_s=0.0)
    assert len(records(lazy.path)) == len(records(eager.path)) == 1  # the file_version record, at once
    for step in range(5):
        for f in (lazy, eager):
            f.add_event(Event(step=step, wall_time=1.0))
    assert len(records(lazy.path)) == 1  # buffered until flush_s passed, a flush or close
    assert len(records(eager.path)) == 6  # flush_s=0: every record reaches the disk as it is added
    lazy.flush()
    assert len(records(lazy.path)) == 6
    late = EventFile(tmp_path / "late", flush_s=0.05)
    late.add_event(Event(step=1, wall_time=1.0))
    assert len(records(late.path)) == 1
    time.sleep(0.1)
    late.add_event(Event(step=2, wall_time=1.0))  # the first waited longer than flush_s: both reach the disk
    assert len(records(late.path)) == 3
    for f in (lazy, eager, late):
        f.close()
        f.close()  # closing twice is harmless
    assert [Event.FromString(r).step for r in records(eager.path)[1:]] == list(range(5))


class _Algo:
    def read_metrics(self, step: int) -> dict[str, float]:
        return {}

    def check_finite(self) -> None:
        pass


class _Logger:
    def __init__(self) -> None:
        self.logged: list[int] = []

    def log(self, scalars: dict[str, float], step: int) -> None:
        if M.SPS in scalars:
            self.logged.append(step)


def test_session_flushes_its_logs_at_log_points_and_before_checkpoints(tmp_path: Path) -> None:
    """A run killed after a checkpoint keeps, on disk, every record up to that checkpoint's step: the session
    flushes the logger at each log point, after each evaluation and before each periodic checkpoint."""
    envs = make_vector_env("CartPole-v1", 2)
    logger = TensorBoardLogger(tmp_path, label="run")
    logger._events.flush_s = 3600.0  # nothing reaches the disk by age: only the session's flushes
    on_disk: list[tuple[str, int, int]] = []

    def checkpoint(kind: str) -> None:
        steps = [Event.FromString(r).step for r in records(logger._events.path)[1:]]
        on_disk.append((kind, state.step, max(steps, default=-1)))

    state = LoopState()
    cadence = Cadence(total_steps=120, eval_every=50, log_every=20, checkpoint_every=30, progress=False)
    session = Session(envs, EnvCursor.start(envs.reset(seed=0)[0]), state, cadence, np.random.default_rng(0),
                      _Algo(), logger, lambda: 1.0, checkpoint)
    while session.running():
        t = session.env_step(np.zeros(2, dtype=np.int64))
        session.after_step(t.before)
    periodic = [(step, last) for kind, step, last in on_disk if kind == "periodic"]
    assert [s for s, _ in periodic] == [30, 60, 90, 120]
    assert all(last >= step - 10 for step, last in periodic)  # the last log point (every 20) is on disk
    best = [(step, last) for kind, step, last in on_disk if kind == "best"]
    assert best and all(last == step for step, last in best)  # the evaluation's own record, at its step
    logger.close()
    envs.close()


@pytest.mark.parametrize("n_envs, start", [(3, 0), (4, 0), (3, 57), (7, 1)])
def test_cadences_fire_where_the_crossings_say(n_envs: int, start: int) -> None:
    """Log, evaluation and checkpoints happen at exactly the steps that cross their intervals (and at the end),
    whatever the vector width and the step a run resumed at, though `after_step` looks only where one is due."""
    envs = make_vector_env("CartPole-v1", n_envs)
    total, every = 301, {"log": 10, "eval": 25, "ckpt": 40}
    cadence = Cadence(total_steps=total, eval_every=every["eval"], log_every=every["log"],
                      checkpoint_every=every["ckpt"], progress=False)
    logger, evals, ckpts = _Logger(), [], []
    state = LoopState(step=start)

    def evaluate() -> float:
        evals.append(state.step)
        return 0.0

    def checkpoint(kind: str) -> None:
        if kind == "periodic":
            ckpts.append(state.step)

    session = Session(envs, EnvCursor.start(envs.reset(seed=0)[0]), state, cadence, np.random.default_rng(0),
                      _Algo(), logger, evaluate, checkpoint)  # type: ignore[arg-type]
    expected: dict[str, list[int]] = {"log": [], "eval": [], "ckpt": []}
    while session.running():
        t = session.env_step(np.zeros(n_envs, dtype=np.int64))
        step = session.step
        for name, e in every.items():
            if crossings(t.before, step, e) or (name != "ckpt" and step >= total):
                expected[name].append(step)
        assert not session.after_step(t.before)
    assert (logger.logged, evals, ckpts) == (expected["log"], expected["eval"], expected["ckpt"])
    assert expected["eval"] and expected["ckpt"] and expected["log"][-1] >= total
    envs.close()
