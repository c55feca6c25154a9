"""Epsilon-greedy acting, batched over envs: the one definition that training, evaluation and the API use."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

# greedy(obs (E, *obs_shape)) -> actions (E,); with action masks (env.action_mask) greedy(obs, mask (E, A) bool)
Greedy = Callable[..., np.ndarray]


def legal_random(u: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The action each uniform draw ``u`` (E,) in [0, 1) picks uniformly among its env's legal actions ``mask``
    (E, A) bool: the k-th legal action, k = floor(u * legal count). Without a mask the draw picks
    floor(u * A), so the two agree where every action is legal."""
    k = (u * np.count_nonzero(mask, axis=1)).astype(np.int64)
    return np.count_nonzero(np.cumsum(mask, axis=1) <= k[:, None], axis=1).astype(np.int64)


def masked_argmax(q: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """argmax_a over the legal actions (all actions without a mask), (E,) int64."""
    return (q if mask is None else np.where(mask, q, -np.inf)).argmax(1)


def epsilon_greedy(obs: np.ndarray, greedy: Greedy, epsilon: float, rng: np.random.Generator,
                   n_actions: int, mask: np.ndarray | None = None) -> np.ndarray:
    """obs (E, *obs_shape) -> actions (E,) int64: a uniform random action with probability ``epsilon``, else
    ``greedy(obs)``. With ``mask`` (E, A) bool (the legal actions of each observation), the random action is
    uniform over the legal ones and the greedy one is ``greedy(obs, mask)``.

    One uniform draw per env and purpose, ``u = rng.random(2E)`` (`actions_from_draws` says what each decides;
    one array call: ``Generator.integers`` costs ~4x more per call on tiny arrays). The draws do not depend on
    ``epsilon`` or the mask, so the stream of a run is the same whatever its schedule.
    """
    u = rng.random(2 * len(obs))
    return actions_from_draws(u, epsilon, n_actions, (lambda: greedy(obs)) if mask is None else (
        lambda: greedy(obs, mask)), mask)


def actions_from_draws(u: np.ndarray, epsilon: float | np.ndarray, n_actions: int, greedy: Callable[[], np.ndarray],
                       mask: np.ndarray | None = None) -> np.ndarray:
    """Uniform draws ``u`` (..., 2E) in [0, 1) -> actions (..., E) int64: ``u[..., :E] < epsilon`` decides which
    envs explore, ``u[..., E:] * n_actions`` picks their random action (among the legal ones of ``mask`` (E, A)),
    and ``greedy()`` (..., E) gives the others'. ``epsilon`` is a float, or an array broadcasting against (..., E)
    (a population's members, each with its own). ``greedy`` (a Q forward) runs only if some env acts greedily, so
    ``epsilon=1`` (uniform random acting before learning starts) costs no forward."""
    n = u.shape[-1] // 2
    actions = (u[..., n:] * n_actions).astype(np.int64) if mask is None else legal_random(u[n:], mask)
    if not isinstance(epsilon, np.ndarray) and epsilon >= 1.0:  # every draw in [0, 1) explores: nothing to compare
        return actions
    explore = u[..., :n] < epsilon
    # np.count_nonzero: ~0.4 us against ~1.5 us for ndarray.all()/.any() on a tiny array
    if np.count_nonzero(explore) < explore.size:
        actions = np.where(explore, actions, greedy())
    return actions


def torch_greedy(net: nn.Module) -> Greedy:
    """(obs (E, *obs_shape), mask (E, A) or None) -> argmax over the legal a of Q(obs, a) (E,) int64, through
    ``net`` on its own device."""
    device = next(net.parameters()).device

    def greedy(obs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        with torch.inference_mode():
            q = net(torch.as_tensor(obs, device=device))
            if mask is not None:
                q = q.masked_fill(~torch.as_tensor(mask, device=device), -torch.inf)
            return q.argmax(1).cpu().numpy()

    return greedy


def greedy_actor(net: nn.Module, epsilon: float = 0.0, rng: np.random.Generator | None = None,
                 n_actions: int = 0) -> Greedy:
    """(obs (E, *obs_shape)[, mask (E, A)]) -> actions (E,): greedy in ``net``'s Q-values over the legal actions,
    or epsilon-greedy with ``rng`` (its own generator, so evaluation never perturbs the training streams)."""
    greedy = torch_greedy(net)
    if epsilon <= 0.0:
        return greedy
    if rng is None:
        raise ValueError("epsilon-greedy acting needs an rng")
    return lambda obs, mask=None: epsilon_greedy(obs, greedy, epsilon, rng, n_actions, mask)
