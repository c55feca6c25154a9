"""Epsilon schedules as pure functions of the env step (summed over vector envs)."""

from __future__ import annotations


class LinearSchedule:
    """epsilon(step) = start + (end - start) * min(step / decay_steps, 1)."""

    def __init__(self, start: float = 1.0, end: float = 0.05, decay_steps: int = 10_000) -> None:
        self.start, self.end, self.decay_steps = float(start), float(end), int(decay_steps)

    def __call__(self, step: int) -> float:
        if self.decay_steps <= 0:
            return self.end
        frac = min(step / self.decay_steps, 1.0)
        return self.start + (self.end - self.start) * frac


class ExponentialSchedule:
    """epsilon(step) = start * (end / start) ** (step / decay_steps), held at end after decay_steps.

    Both endpoints must be > 0 (a geometric path cannot reach 0); config validation enforces it.
    """

    def __init__(self, start: float = 1.0, end: float = 0.05, decay_steps: int = 10_000) -> None:
        self.start, self.end, self.decay_steps = float(start), float(end), int(decay_steps)

    def __call__(self, step: int) -> float:
        if self.decay_steps <= 0 or step >= self.decay_steps:
            return self.end
        return self.start * (self.end / self.start) ** (step / self.decay_steps)
