"""What the launcher hands a population for each member (`MemberSpec`): no torch here, as the command line that
composes the members never trains (`dqnrun.population.launch`)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from dqnrun.run.artifacts import Job


@dataclass
class MemberSpec:
    """One member to train: its config (normalized), its job (directory, overrides), how lines name it and the
    setting whose aggregate statistics it joins (its overrides without the seed)."""

    cfg: DictConfig
    job: Job
    label: str
    setting: str
