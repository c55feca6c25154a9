"""Loggers as a config group: the same scalar names in TensorBoard, metrics.csv and W&B (offline)."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import pytest

from dqnrun import metrics as M
from tests.conftest import TINY, run_cli, tb_dir


def _train(tmp_path: Path, *args: str) -> Path:
    run = tmp_path / "run"
    proc = run_cli(["train", "env=cartpole", *TINY, *args, f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    return run


def _csv(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_csv_logger_writes_a_step_column_and_one_column_per_scalar(tmp_path: Path) -> None:
    run = _train(tmp_path, "logger=csv")
    assert not (run / "tb").exists()
    rows = _csv(run)
    assert list(rows[0]) == ["step", *M.ALL_SCALARS, *M.HPARAM_METRICS]
    evals = [(int(r["step"]), float(r[M.EVAL_RETURN])) for r in rows if r[M.EVAL_RETURN]]
    history = json.loads((run / "results.json").read_text())["eval_history"]
    assert evals == [tuple(x) for x in history]
    losses = [int(r["step"]) for r in rows if r[M.TD_LOSS]]
    assert losses == list(range(600, 1201, 200))
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(steps)  # episodes are written before their interval's scalars: never back in time


def test_several_loggers_at_once_receive_the_same_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _train(tmp_path, "logger=[tensorboard,csv]")
    acc = EventAccumulator(str(tb_dir(run)), size_guidance={"scalars": 0})
    acc.Reload()
    rows = _csv(run)
    for tag in (M.TD_LOSS, M.EPISODIC_RETURN, M.EVAL_RETURN):
        from_csv = [(int(r["step"]), float(r[tag])) for r in rows if r[tag]]
        from_tb = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in from_csv] == [s for s, _ in from_tb]
        assert [v for _, v in from_csv] == pytest.approx([v for _, v in from_tb], rel=1e-6)


def test_csv_logger_on_resume_keeps_each_step_once(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "env=cartpole", *TINY, "logger=csv", "checkpoint.every=600", f"hydra.run.dir={run}"]
    stopped = run_cli(args, tmp_path, env={"DQNRUN_TEST_SIGNAL_AT_STEP": "900"})
    assert stopped.returncode == 143, stopped.stderr
    resumed = run_cli([*args, "resume=auto"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    losses = [int(r["step"]) for r in _csv(run) if r[M.TD_LOSS]]
    assert losses == list(range(600, 1201, 200))


def _wandb_records(run_file: Path) -> list:
    """Records of a W&B offline run file (a LevelDB-style log of protobuf records: 7-byte header, 32 KiB
    blocks, each chunk with crc32 (4), length (2) and type (1: full, 2: first, 3: middle, 4: last))."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    pos, block, chunks, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if length == 0 and kind == 0:
            break
        chunk, pos = data[pos:pos + length], pos + length
        if kind == 1:
            chunks.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            chunks.append(buf + chunk)
    records = []
    for chunk in chunks:
        record = pb.Record()
        record.ParseFromString(chunk)
        records.append(record)
    return records


@pytest.mark.thorough  # make test-thorough: the default tier stays under ~10 min on 2 cores
def test_wandb_logger_works_offline_with_the_same_scalar_names(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    run = _train(tmp_path, "logger=wandb", "name=wb", "tags=[t1]")
    (run_file,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    history = []
    summary: dict = {}
    for record in _wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    evals = [(h["_step"], h[M.EVAL_RETURN]) for h in history if M.EVAL_RETURN in h]
    results = json.loads((run / "results.json").read_text())
    assert evals == [tuple(x) for x in results["eval_history"]]
    assert any(M.EPISODIC_RETURN in h for h in history) and any(M.TD_LOSS in h for h in history)
    assert summary[M.HP_BEST_EVAL] == pytest.approx(results["best_eval_return"])
