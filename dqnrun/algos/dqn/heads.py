"""What ``learner.distributional`` asks of the network: its head (no torch here: validation reads it too)."""

from __future__ import annotations

# learner.distributional -> the network's head: false (a Q-value per action), true or c51 (C51), qr, iqn
HEADS = {False: "q", True: "c51", "c51": "c51", "qr": "qr", "iqn": "iqn"}


def head_of(distributional: bool | str) -> str:
    """The network head ``learner.distributional`` asks for: ``q`` | ``c51`` | ``qr`` | ``iqn``."""
    return HEADS[distributional]
