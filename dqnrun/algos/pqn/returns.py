"""PQN's targets: Q(lambda) returns computed backward over a rollout, from the online network's own values.

For step t of env e (all arrays (T, E), time first)::

    G_t = r_t + gamma (1 - terminated_t) [lambda G_{t+1} + (1 - lambda) V_{t+1}]   the episode goes on at t+1
    G_t = r_t + gamma (1 - terminated_t) V_{t+1}                                    it ended at t, or t = T-1

with V_{t+1} = max_a Q(s_{t+1}, a): ``values[t+1]``, recorded when the agent acted on s_{t+1}, and for the last
step the current network's value of the observation after the rollout (``last_value``). A truncation bootstraps
(from the true final observation, which the env returned and the agent then saw, NEXT_STEP autoreset); a
termination does not. The step after an episode's end is Gymnasium's autoreset step, not a transition: it is
invalid (``valid`` False), gets G = 0 and carries no return backward.
"""

from __future__ import annotations

import numpy as np


def q_lambda_returns(reward: np.ndarray, terminated: np.ndarray, ended: np.ndarray, valid: np.ndarray,
                     values: np.ndarray, last_value: np.ndarray, gamma: float, lam: float) -> np.ndarray:
    """Q(lambda) targets (T, E) float64.

    Args:
        reward: (T, E) rewards of each step (what the learner sees: clipped where the algorithm clips).
        terminated: (T, E) bool, the step ended its episode in a terminal state (no bootstrap).
        ended: (T, E) bool, the step ended its episode (terminated or truncated): no lambda continuation.
        valid: (T, E) bool, False for autoreset steps (not transitions).
        values: (T, E) max_a Q(s_t, a) when acting at t.
        last_value: (E,) max_a Q(s_T, a) of the observation after the rollout.
        gamma, lam: discount and lambda.
    """
    T = reward.shape[0]
    out = np.zeros(reward.shape, dtype=np.float64)
    g_next = np.zeros(reward.shape[1], dtype=np.float64)
    for t in range(T - 1, -1, -1):
        v_next = values[t + 1] if t + 1 < T else last_value
        continues = ~ended[t] & (t + 1 < T)  # the next step is the same episode's
        blend = np.where(continues, lam * g_next + (1.0 - lam) * v_next, v_next)
        g = reward[t] + gamma * (1.0 - terminated[t]) * blend
        g_next = np.where(valid[t], g, 0.0)
        out[t] = g_next
    return out
