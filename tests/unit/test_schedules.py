"""Epsilon schedules: tables of (step, expected epsilon) worked out by hand."""

from __future__ import annotations

import math

import pytest

from dqnrun.schedules import ExponentialSchedule, LinearSchedule

# LinearSchedule(start=1.0, end=0.05, decay_steps=100): epsilon = 1 - 0.95 * step / 100 until step 100.
LINEAR_DECREASING = [
    (0, 1.0),
    (1, 0.9905),
    (10, 0.905),
    (50, 0.525),
    (99, 0.0595),
    (100, 0.05),  # reaches end exactly at decay_steps
    (101, 0.05),  # held at end afterwards
    (1_000_000, 0.05),
]

# LinearSchedule(start=0.2, end=0.6, decay_steps=8): an increasing path, 0.05 per step.
LINEAR_INCREASING = [(0, 0.2), (2, 0.3), (4, 0.4), (6, 0.5), (8, 0.6), (9, 0.6), (80, 0.6)]


@pytest.mark.parametrize(("step", "expected"), LINEAR_DECREASING)
def test_linear_schedule_interpolates_then_holds_end(step: int, expected: float) -> None:
    sched = LinearSchedule(start=1.0, end=0.05, decay_steps=100)
    assert sched(step) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("step", "expected"), LINEAR_INCREASING)
def test_linear_schedule_also_interpolates_upwards(step: int, expected: float) -> None:
    sched = LinearSchedule(start=0.2, end=0.6, decay_steps=8)
    assert sched(step) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("step", [0, 1, 5, 10_000])
def test_linear_schedule_with_zero_decay_steps_is_end_from_the_start(step: int) -> None:
    assert LinearSchedule(start=1.0, end=0.05, decay_steps=0)(step) == 0.05


def test_linear_schedule_can_decay_to_zero() -> None:
    sched = LinearSchedule(start=1.0, end=0.0, decay_steps=4)
    assert [sched(s) for s in range(6)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0], abs=1e-12)


# ExponentialSchedule(start=1.0, end=0.01, decay_steps=100): epsilon = 0.01 ** (step / 100) = 10 ** (-step / 50).
EXPONENTIAL_1_TO_001 = [
    (0, 1.0),
    (25, math.sqrt(0.1)),  # 10 ** -0.5 = 0.316227766...
    (50, 0.1),
    (75, 0.1 * math.sqrt(0.1)),  # 10 ** -1.5
    (100, 0.01),
    (101, 0.01),
    (10_000, 0.01),
]

# ExponentialSchedule(start=0.5, end=0.125, decay_steps=30): halves every 15 steps.
EXPONENTIAL_HALVING = [(0, 0.5), (15, 0.25), (30, 0.125), (45, 0.125)]


@pytest.mark.parametrize(("step", "expected"), EXPONENTIAL_1_TO_001)
def test_exponential_schedule_decays_geometrically_then_holds_end(step: int, expected: float) -> None:
    sched = ExponentialSchedule(start=1.0, end=0.01, decay_steps=100)
    assert sched(step) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("step", "expected"), EXPONENTIAL_HALVING)
def test_exponential_schedule_halves_every_half_decay(step: int, expected: float) -> None:
    sched = ExponentialSchedule(start=0.5, end=0.125, decay_steps=30)
    assert sched(step) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("step", [0, 1, 5, 10_000])
def test_exponential_schedule_with_zero_decay_steps_is_end_from_the_start(step: int) -> None:
    assert ExponentialSchedule(start=1.0, end=0.05, decay_steps=0)(step) == 0.05


def test_exponential_schedule_is_monotone_between_endpoints() -> None:
    sched = ExponentialSchedule(start=1.0, end=0.05, decay_steps=1000)
    values = [sched(s) for s in range(0, 1201, 7)]
    assert all(a > b or b == 0.05 for a, b in zip(values, values[1:], strict=False))
    assert all(0.05 <= v <= 1.0 for v in values)


@pytest.mark.parametrize(("start", "end"), [(0.0, 0.0), (1.0, 0.0)])
def test_validation_rejects_an_exponential_schedule_that_would_reach_zero(start: float, end: float) -> None:
    """The rule lives in the validator (one place); the schedule itself trusts validated values."""
    from dqnrun.config.rules import validate_train_config
    from dqnrun.errors import UsageError
    from tests.conftest import compose_train

    cfg = compose_train(["schedule=exponential", f"schedule.start={start}", f"schedule.end={end}"])
    with pytest.raises(UsageError, match="start > 0 and schedule.end > 0"):
        validate_train_config(cfg)
