"""DQN's targets and losses as pure functions of tensors: the TD target (Double DQN is a branch), Munchausen's target,
C51's projection, the per-sample losses. Tested on hand-computed values (`tests/unit/test_td_target.py`,
`tests/unit/test_munchausen.py`); QR-DQN's and IQN's are in `dqnrun.algos.dqn.quantile`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def legal(q: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``q`` (..., A) with -inf at the illegal actions of ``mask`` (..., A) bool (``env.action_mask``), so a max or
    an argmax runs over the legal ones; ``q`` itself without a mask."""
    return q if mask is None else q.masked_fill(~mask, -torch.inf)


def no_legal_action_zero(value: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``value`` (...,) with 0 where ``mask`` (..., A) holds no legal action (the max there is -inf, and
    -inf * 0 would make a terminal row's target NaN)."""
    return value if mask is None else torch.where(mask.any(-1), value, torch.zeros_like(value))


def dead_end(terminated: torch.Tensor, next_mask: torch.Tensor | None) -> torch.Tensor:
    """The same rule for a target distribution (C51, QR, IQN): ``terminated`` (B,), also 1 where s' has no legal
    action, so nothing is bootstrapped there."""
    return terminated if next_mask is None else torch.maximum(terminated, (~next_mask.any(-1)).to(terminated.dtype))


def td_target(
    reward: torch.Tensor,
    terminated: torch.Tensor,
    next_q_target: torch.Tensor,
    gamma: float,
    next_q_online: torch.Tensor | None = None,
    next_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The one-step TD target.

        y = r + gamma * (1 - terminated) * Q_target(s', a*)
        a* = argmax_a Q_target(s', a)             (DQN)
        a* = argmax_a Q_online(s', a)             (Double DQN, when next_q_online is given)

    Truncation is not termination: a time-limited transition still bootstraps, so only ``terminated``
    masks the bootstrap.

    Args:
        reward: (...,) float32.
        terminated: (...,) float32, 1.0 for a terminal transition.
        next_q_target: (..., A) target-network Q-values at s'.
        gamma: discount in [0, 1].
        next_q_online: (..., A) online-network Q-values at s', for Double DQN.
        next_mask: (..., A) bool, the legal actions at s' (``env.action_mask``): the max (Double DQN's argmax)
            runs over them only; an s' with no legal action (a finished game) bootstraps nothing.
    Returns:
        (...,) float32 targets, with no gradient attached.
    """
    if next_q_online is None:
        next_v = legal(next_q_target, next_mask).amax(dim=-1)  # the max's values (~2 us less than .max().values)
    else:
        a_star = legal(next_q_online, next_mask).argmax(dim=-1, keepdim=True)
        next_v = next_q_target.gather(-1, a_star).squeeze(-1)
    next_v = no_legal_action_zero(next_v, next_mask)
    not_done = torch.rsub(terminated, 1.0)  # 1 - terminated, without Tensor.__rsub__'s Python wrapper
    if isinstance(gamma, torch.Tensor):  # per-sample discounts (n-step windows)
        return torch.addcmul(reward, gamma * not_done, next_v).detach()
    # not_done is 0 or 1, so gamma * (not_done * next_v) rounds exactly like (gamma * not_done) * next_v
    return torch.addcmul(reward, not_done, next_v, value=gamma).detach()


def scaled_log_policy(q: torch.Tensor, tau: float) -> torch.Tensor:
    """tau * log pi(.|s) for pi = softmax(q / tau), (..., A): Munchausen's softmax policy of the target network's
    Q-values. log_softmax subtracts the max first, so a small temperature (0.03) never overflows."""
    return tau * torch.log_softmax(q / tau, dim=-1)


def munchausen_target(
    reward: torch.Tensor,
    terminated: torch.Tensor,
    gamma: float | torch.Tensor,
    q: torch.Tensor,
    action: torch.Tensor,
    next_q: torch.Tensor,
    alpha: float,
    tau: float,
    clip: float,
    next_z: torch.Tensor | None = None,
) -> torch.Tensor:
    """Munchausen DQN's target (Vieillard et al. 2020, eq. 2): the reward plus the scaled, clipped log-policy of the
    action taken, and the soft (entropy-regularized) value of s'.

        y = r + alpha * clip(tau log pi(a|s), clip, 0)
              + gamma (1 - terminated) sum_a' pi(a'|s') [q(s', a') - tau log pi(a'|s')]
        pi = softmax(q_target / tau)

    The clipping applies to tau log pi, as in the paper and its reference code (l0 = -1). With quantiles
    (M-IQN, ``next_z``), each target quantile j replaces q(s', a') by z_j(s', a'), pi staying that of Q.
    With n-step rows the bonus is the first action's (the window's later actions are not stored).

    Args:
        reward, terminated: (...,).
        gamma: scalar or (...,) per-sample discount.
        q: (..., A) target-network Q-values at s; action: (...,) int64, the action taken there.
        next_q: (..., A) target-network Q-values at s'.
        alpha, tau, clip: the scale, the temperature and l0 (the paper's 0.9, 0.03 and -1).
        next_z: (..., A, N') target-network quantile values at s' (M-IQN), or None.
    Returns:
        (...,) targets, or (..., N') target samples with ``next_z``; no gradient attached.
    """
    log_pi_a = scaled_log_policy(q, tau).gather(-1, action.unsqueeze(-1)).squeeze(-1)
    r = reward + alpha * log_pi_a.clamp(clip, 0.0)
    next_log_pi = scaled_log_policy(next_q, tau)
    pi = torch.softmax(next_q / tau, dim=-1)
    not_done = torch.rsub(terminated, 1.0)  # 1 - terminated, without Tensor.__rsub__'s Python wrapper
    if next_z is None:
        return (r + gamma * not_done * (pi * (next_q - next_log_pi)).sum(-1)).detach()
    soft = (pi.unsqueeze(-1) * (next_z - next_log_pi.unsqueeze(-1))).sum(-2)  # (..., N')
    g = gamma.unsqueeze(-1) if isinstance(gamma, torch.Tensor) else gamma
    return (r.unsqueeze(-1) + g * not_done.unsqueeze(-1) * soft).detach()


def categorical_projection(
    next_probs: torch.Tensor,
    reward: torch.Tensor,
    terminated: torch.Tensor,
    gamma: float | torch.Tensor,
    support: torch.Tensor,
) -> torch.Tensor:
    """C51's target: project the distribution of r + gamma (1 - terminated) Z(s', a*) onto the support.

    Each shifted atom Tz_j = clip(r + gamma (1 - d) z_j, v_min, v_max) splits its probability between
    the two neighbouring atoms l = floor(b), u = ceil(b), b = (Tz_j - v_min) / dz, in proportion to
    closeness; an atom that lands exactly on a support point keeps all of it.

    Args:
        next_probs: (B, N) probabilities of Z(s', a*).
        reward, terminated: (B,).
        gamma: scalar or (B,) per-sample discount (n-step windows).
        support: (N,) atoms z_0 < ... < z_{N-1}, evenly spaced.
    Returns:
        (B, N) target probabilities.
    """
    n = support.numel()
    v_min, v_max = float(support[0]), float(support[-1])
    dz = (v_max - v_min) / (n - 1)
    g = gamma.unsqueeze(-1) if isinstance(gamma, torch.Tensor) else gamma
    tz = (reward.unsqueeze(-1) + g * (1.0 - terminated.unsqueeze(-1)) * support).clamp(v_min, v_max)
    b = (tz - v_min) / dz
    lower, upper = b.floor().long().clamp(0, n - 1), b.ceil().long().clamp(0, n - 1)
    m = torch.zeros_like(next_probs)
    m.scatter_add_(-1, lower, next_probs * (upper.float() - b + (lower == upper).float()))
    m.scatter_add_(-1, upper, next_probs * (b - lower.float()))
    return m


# Per-sample losses (B,); `half_sse` is summed, not averaged, so that with SGD one step on one transition is
# the textbook tabular update Q += alpha * (y - Q) (a mean squared error would double the step).
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "huber": lambda q, y: nn.functional.smooth_l1_loss(q, y, reduction="none"),
    "mse": lambda q, y: (q - y) ** 2,
    "half_sse": lambda q, y: 0.5 * (q - y) ** 2,
}
