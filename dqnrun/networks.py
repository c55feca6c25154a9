"""Q-networks. Every network maps obs (B, *obs_shape) -> Q-values (B, A)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}


class MLP(nn.Module):
    """Fully connected Q-network.

    Args:
        obs_shape: shape of one observation; ``()`` for a Discrete observation space.
        n_actions: number of discrete actions A.
        hidden: sizes of the hidden layers.
        activation: one of ``relu | tanh | elu | gelu``.
        n_obs_categories: for a Discrete observation space, its size n; observations are then int64
            indices ``(B,)`` and are one-hot encoded to ``(B, n)`` here.
    """

    def __init__(
        self,
        obs_shape: Sequence[int],
        n_actions: int,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
        n_obs_categories: int | None = None,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        self.n_obs_categories = n_obs_categories
        self.activation = activation
        in_dim = n_obs_categories if n_obs_categories else int(torch.Size(obs_shape).numel())
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, int(width)), ACTIVATIONS[activation]()]
            in_dim = int(width)
        layers.append(nn.Linear(in_dim, n_actions))
        self.net = nn.Sequential(*layers)

    @property
    def linears(self) -> list[nn.Linear]:
        return [m for m in self.net if isinstance(m, nn.Linear)]

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """obs (B, *obs_shape) -> the float input of the first layer, (B, in_dim)."""
        if self.n_obs_categories:
            return nn.functional.one_hot(obs.long(), self.n_obs_categories).float()
        return obs.flatten(1).float()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """obs: (B, *obs_shape) in the observation dtype -> Q: (B, A) float32."""
        return self.net(self.features(obs))


def greedy_actor(
    net: nn.Module, epsilon: float = 0.0, rng: np.random.Generator | None = None, n_actions: int = 0
) -> Callable[[np.ndarray], np.ndarray]:
    """obs (E, *obs_shape) -> actions (E,): greedy in ``net``'s Q-values, or epsilon-greedy using ``rng``
    (its own generator, so evaluation never perturbs the training streams)."""
    device = next(net.parameters()).device
    if epsilon > 0.0 and rng is None:
        raise ValueError("epsilon-greedy acting needs an rng")

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            a = net(torch.as_tensor(obs, device=device)).argmax(1).cpu().numpy()
        if epsilon > 0.0:
            explore = rng.random(len(a)) < epsilon  # type: ignore[union-attr]
            a = np.where(explore, rng.integers(0, n_actions, len(a)), a)  # type: ignore[union-attr]
        return a

    return act
