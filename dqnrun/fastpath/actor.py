"""Acting in numpy on views of the live weights: a handful of observations per env step, where a torch forward
is mostly dispatch overhead."""

from __future__ import annotations

import numpy as np

from dqnrun.acting import masked_argmax
from dqnrun.fastpath.mlp import activation_of, gather_patches_numpy, patch_index, single_conv
from dqnrun.networks import QNetwork


class NumpyGreedyActor:
    """Greedy actions for a CPU MLP computed in numpy on views of the live weights.

    Acting evaluates a handful of observations per env step, where a torch forward is mostly dispatch
    overhead (~35 µs); the same matmuls in numpy take a few µs. The views share memory with the parameters,
    which every update, target sync and checkpoint load modifies in place, so they never go stale.
    """

    def __init__(self, net: QNetwork) -> None:
        self.layers = [(layer.weight.detach().numpy().T, layer.bias.detach().numpy()) for layer in net.linears]
        self.relu = activation_of(net) == "relu"
        self.n_cat = net.n_obs_categories
        self._eye = np.eye(self.n_cat, dtype=np.float32) if self.n_cat else None
        self.conv = single_conv(net) if net.torso is not None else None
        if self.conv is not None:
            c = self.conv
            self.conv_w = c.weight.detach().numpy().reshape(c.out_channels, -1).T  # (C*kh*kw, F), a live view
            self.conv_b = c.bias.detach().numpy()
            self.channels_last, self.scale = net.channels_last, net.pixel_scale
            self._index: tuple | None = None

    def _conv(self, obs: np.ndarray) -> np.ndarray:
        """(E, *image) -> (E, F*P): the torso's output, flattened channel-major as the network does."""
        if self._index is None or self._index[0] != obs.shape[1:]:
            self._index = (obs.shape[1:], patch_index(obs.shape[1:], self.channels_last, self.conv))
        e = len(obs)
        patches = gather_patches_numpy(obs, self._index[1], self.conv_w.shape[0], self.scale)
        h = patches @ self.conv_w
        h += self.conv_b
        np.maximum(h, 0.0, out=h)
        return h.reshape(e, -1, h.shape[1]).transpose(0, 2, 1).reshape(e, -1)

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """obs (E, *obs_shape) -> Q (E, A) float32."""
        if self.conv is not None:
            h = self._conv(obs)
        elif self._eye is not None:
            h = self._eye[obs]
        else:
            h = obs.reshape(len(obs), -1).astype(np.float32, copy=False)
        for w_t, b in self.layers[:-1]:
            h = h @ w_t
            h += b
            np.maximum(h, 0.0, out=h) if self.relu else np.tanh(h, out=h)
        w_t, b = self.layers[-1]
        return h @ w_t + b

    def __call__(self, obs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Greedy actions (E,), over the legal actions of ``mask`` (E, A) bool when given (``env.action_mask``)."""
        with np.errstate(over="ignore", invalid="ignore"):  # diverged weights: the loop's finite check reports it
            return masked_argmax(self.q_values(obs), mask)
