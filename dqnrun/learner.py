"""The DQN learner: a pure TD target, gradient updates and target-network sync."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from dqnrun.mlp_update import (
    FusedAdamStep,
    ManualMLPGradient,
    NumpyGreedyActor,
    clip_grad_norm,
    mlp_forward,
    supports,
)
from dqnrun.replay import Batch


def td_target(
    reward: torch.Tensor,
    terminated: torch.Tensor,
    next_q_target: torch.Tensor,
    gamma: float,
    next_q_online: torch.Tensor | None = None,
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
    Returns:
        (...,) float32 targets, with no gradient attached.
    """
    if next_q_online is None:
        next_v = next_q_target.max(dim=-1).values
    else:
        a_star = next_q_online.argmax(dim=-1, keepdim=True)
        next_v = next_q_target.gather(-1, a_star).squeeze(-1)
    return (reward + gamma * (1.0 - terminated) * next_v).detach()


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "huber": nn.functional.smooth_l1_loss,
    "mse": nn.functional.mse_loss,
}


class Learner:
    """Owns the online and target networks and the optimizer, and performs updates.

    The target network is frozen for a whole burst of gradient steps (syncs happen between bursts, on
    env-step boundaries, as in SB3), so the target values of all G batches are computed in one batched
    forward before the burst. Plain MLPs take a hand-written backward pass (``dqnrun.mlp_update``, tested
    equal to autograd); other networks use autograd. Metrics stay on the device and are read only at
    logging time: no host sync in the hot path.
    """

    def __init__(
        self,
        online: nn.Module,
        target: nn.Module,
        optimizer: torch.optim.Optimizer,
        gamma: float = 0.99,
        loss: str = "huber",
        max_grad_norm: float | None = 10.0,
        tau: float = 1.0,
        double: bool = False,
        fast_mlp: bool = True,
    ) -> None:
        self.online, self.target, self.optimizer = online, target, optimizer
        self.gamma, self.tau, self.double = float(gamma), float(tau), bool(double)
        self.loss_name = loss
        self.loss_fn = LOSSES[loss]
        self.max_grad_norm = max_grad_norm
        self.target.requires_grad_(False)
        self.manual = ManualMLPGradient(online, loss) if fast_mlp and supports(online) else None
        # The lean Adam step needs grads that persist between steps, which only the manual path keeps.
        self.step_optimizer = FusedAdamStep(optimizer) if self.manual is not None else optimizer.step
        self.updates = 0
        device = next(online.parameters()).device
        self.device = device
        self.np_actor = NumpyGreedyActor(online) if self.manual is not None and device.type == "cpu" else None
        # Running sums since the last read, as device tensors. A NaN or inf anywhere makes a sum non-finite,
        # so checking the sums at read time catches every bad step without a per-step check.
        self._loss_sum = torch.zeros((), device=device)
        self._q_sum = torch.zeros((), device=device)
        self._n = 0

    def greedy_actions(self, obs: np.ndarray) -> np.ndarray:
        """obs (E, *obs_shape) -> argmax_a Q_online(obs, a), (E,) int64."""
        if self.np_actor is not None:
            return self.np_actor(obs)
        with torch.inference_mode():
            return self._q(self.online, torch.as_tensor(obs, device=self.device)).argmax(1).cpu().numpy()

    def _q(self, net: nn.Module, obs: torch.Tensor) -> torch.Tensor:
        """No-grad Q-values (B, A), through the lean MLP forward where it applies."""
        return mlp_forward(net, obs) if self.manual is not None else net(obs)  # type: ignore[arg-type]

    @torch.no_grad()
    def targets(self, batch: Batch) -> torch.Tensor | None:
        """TD targets for a (G, B) burst in one target forward; None for Double DQN (needs online net)."""
        if self.double:
            return None
        g, b = batch.action.shape
        next_q = self._q(self.target, batch.next_obs.flatten(0, 1)).view(g, b, -1)
        return td_target(batch.reward, batch.terminated, next_q, self.gamma)

    def update(self, batch: Batch) -> None:
        """Run G gradient steps on a (G, B) burst sampled before it."""
        y_all = self.targets(batch)
        for g in range(batch.action.shape[0]):
            obs, action = batch.obs[g], batch.action[g]
            if y_all is None:
                with torch.no_grad():  # Double DQN: a* from the current online weights
                    next_obs = batch.next_obs[g]
                    y = td_target(batch.reward[g], batch.terminated[g], self._q(self.target, next_obs),
                                  self.gamma, self._q(self.online, next_obs))
            else:
                y = y_all[g]
            if self.manual is not None:
                loss, q_mean = self.manual(obs, action, y)
                if self.max_grad_norm is not None:
                    clip_grad_norm(self.manual.grads, self.max_grad_norm)
            else:
                q_sa = self.online(obs).gather(1, action.unsqueeze(1)).squeeze(1)
                loss = self.loss_fn(q_sa, y)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(self.online.parameters(), self.max_grad_norm, foreach=True)
                loss, q_mean = loss.detach(), q_sa.detach().mean()
            self.step_optimizer()
            self.updates += 1
            self._loss_sum += loss
            self._q_sum += q_mean
            self._n += 1

    @torch.no_grad()
    def sync_target(self) -> None:
        """Hard copy (tau == 1) or polyak step target <- tau * online + (1 - tau) * target."""
        src, dst = list(self.online.parameters()), list(self.target.parameters())
        if self.tau >= 1.0:
            torch._foreach_copy_(dst, src)
        else:
            torch._foreach_lerp_(dst, src, self.tau)
        for b_src, b_dst in zip(self.online.buffers(), self.target.buffers(), strict=True):
            b_dst.copy_(b_src)

    def check_finite(self) -> None:
        """Raise FloatingPointError if any loss or Q-value since the last read was NaN or inf (one sync)."""
        if not bool(torch.isfinite(self._loss_sum + self._q_sum)):
            raise FloatingPointError("non-finite loss or Q-value")

    def read_metrics(self) -> dict[str, float] | None:
        """Mean loss and Q since the last call (one host sync), or None if no update ran.

        Raises FloatingPointError if any loss or Q-value since the last read was NaN or inf.
        """
        self.check_finite()
        if self._n == 0:
            return None
        out = {"td_loss": float(self._loss_sum) / self._n, "q_values": float(self._q_sum) / self._n}
        self._loss_sum.zero_()
        self._q_sum.zero_()
        self._n = 0
        return out

    def state_dict(self) -> dict:
        return {
            "online": self.online.state_dict(),
            "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "updates": self.updates,
            # metric sums since the last log write, so a resumed run logs the same interval means
            "metric_sums": {"loss": self._loss_sum.clone(), "q": self._q_sum.clone(), "n": self._n},
        }

    def load_state_dict(self, state: dict) -> None:
        self.online.load_state_dict(state["online"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        if isinstance(self.step_optimizer, FusedAdamStep):
            self.step_optimizer.rebind()
        self.updates = int(state["updates"])
        sums = state.get("metric_sums")
        if sums is not None:
            self._loss_sum.copy_(sums["loss"])
            self._q_sum.copy_(sums["q"])
            self._n = int(sums["n"])
