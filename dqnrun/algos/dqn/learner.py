"""DQN's learner: the online and target networks, the optimizer, gradient updates and target sync."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dqnrun.algos.dqn.targets import LOSSES, categorical_projection, td_target
from dqnrun.errors import UsageError
from dqnrun.fastpath import FusedAdamStep, ManualMLPGradient, NumpyGreedyActor, clip_grad_norm, mlp_forward, supports
from dqnrun.replay import Batch


class Learner:
    """Owns the online and target networks and the optimizer, and performs updates.

    The target network is frozen for a whole burst of gradient steps (syncs happen between bursts, on
    env-step boundaries, as in SB3), so the target values of all G batches are computed in one batched
    forward before the burst. Plain MLPs take a hand-written backward pass (``dqnrun.fastpath``, tested
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
        distributional: bool = False,
        compile: bool = False,
    ) -> None:
        self.online, self.target, self.optimizer = online, target, optimizer
        self.gamma, self.tau, self.double = float(gamma), float(tau), bool(double)
        self.distributional = bool(distributional)
        self.noisy = any(hasattr(m, "reset_noise") for m in online.modules() if m is not online)
        self.loss_name = loss
        self.loss_fn = LOSSES[loss]
        self.max_grad_norm = max_grad_norm
        self.target.requires_grad_(False)
        # compile=true: torch.compile the autograd loss (forward and, through AOTAutograd, backward) instead
        # of taking the hand-written MLP path; tests/test_compile.py checks it against eager step by step.
        self.compiled = bool(compile)
        self._loss = torch.compile(self._loss_terms, dynamic=False) if self.compiled else self._loss_terms
        manual_ok = fast_mlp and not self.compiled and supports(online) and loss in ("huber", "mse")
        self.manual = ManualMLPGradient(online, loss) if manual_ok else None
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
        """TD targets for a whole (G, B) burst from one target forward (the target net is frozen within a
        burst); None where each step needs the current online net (Double DQN) or a distribution (C51)."""
        if self.double or self.distributional:
            return None
        g, b = batch.action.shape
        next_q = self._q(self.target, batch.next_obs.flatten(0, 1)).view(g, b, -1)
        gamma = self.gamma if batch.discount is None else batch.discount
        return td_target(batch.reward, batch.terminated, next_q, gamma)  # type: ignore[arg-type]

    def update(self, batch: Batch) -> list[tuple[np.ndarray, np.ndarray]]:
        """Run G gradient steps on a (G, B) burst sampled before it.

        Returns (rows, |TD error|) per step for prioritized replay (empty list otherwise).
        """
        if batch.action.shape[-1] == 0:  # `latest` replay after a reset-only vector step: nothing to learn
            return []
        y_all = self.targets(batch)
        priorities: list[tuple[np.ndarray, np.ndarray]] = []
        for g in range(batch.action.shape[0]):
            b = Batch(*(None if x is None else x[g] for x in batch))
            if self.noisy:  # NoisyNet: fresh parameter noise for every gradient step
                self.online.reset_noise()  # type: ignore[operator]
                self.target.reset_noise()  # type: ignore[operator]
            gamma = self.gamma if b.discount is None else b.discount
            if y_all is not None:
                y: torch.Tensor | None = y_all[g]
            elif self.distributional:
                y = None  # C51 projects a distribution instead (in `_c51_loss`)
            else:
                with torch.no_grad():  # Double DQN: a* from the current online weights
                    y = td_target(b.reward, b.terminated, self._q(self.target, b.next_obs), gamma,
                                  self._q(self.online, b.next_obs))  # type: ignore[arg-type]
            if self.manual is not None:  # plain MLP, scalar Q: the hand-written backward
                loss, q_mean, diff = self.manual(b.obs, b.action, y, b.weights)  # type: ignore[arg-type]
                if self.max_grad_norm is not None:
                    clip_grad_norm(self.manual.flat_grad, self.max_grad_norm)
                self._finish_step(loss, q_mean)
                if b.indices is not None:
                    priorities.append((b.indices, diff.abs().cpu().numpy()))
                continue
            try:
                loss, q_mean, td_abs = self._loss(b.obs, b.action, b.reward, b.next_obs, b.terminated, gamma,
                                                  b.weights, y)
            except torch._dynamo.exc.BackendCompilerFailed as exc:  # e.g. no C++ compiler for inductor
                cause = str(exc.inner_exception).strip().splitlines() or [type(exc.inner_exception).__name__]
                raise UsageError(f"compile=true: torch.compile failed ({cause[0][:200]}); "
                                 "run with compile=false") from None
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(self.online.parameters(), self.max_grad_norm, foreach=True)
            self._finish_step(loss.detach(), q_mean)
            if b.indices is not None:
                priorities.append((b.indices, td_abs.cpu().numpy()))
        return priorities

    def _loss_terms(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        next_obs: torch.Tensor,
        terminated: torch.Tensor,
        gamma: float | torch.Tensor,
        weights: torch.Tensor | None,
        y: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The autograd step's loss: (scalar loss, mean Q(s,a), per-sample priority (B,)).

        ``y`` is the TD target; None for C51, which projects a target distribution instead. This is the
        function that ``compile=true`` hands to ``torch.compile``.
        """
        if self.distributional:
            per_sample, q_mean, td_abs = self._c51_loss(obs, action, reward, next_obs, terminated, gamma)
        else:
            q_sa = self.online(obs).gather(1, action.unsqueeze(1)).squeeze(1)
            per_sample = self.loss_fn(q_sa, y)
            q_mean, td_abs = q_sa.detach().mean(), (q_sa.detach() - y).abs()
        if weights is not None:
            per_sample = per_sample * weights
        loss = per_sample.sum() if self.loss_name == "half_sse" else per_sample.mean()
        return loss, q_mean, td_abs

    def _finish_step(self, loss: torch.Tensor, q_mean: torch.Tensor) -> None:
        self.step_optimizer()
        self.updates += 1
        self._loss_sum += loss
        self._q_sum += q_mean
        self._n += 1

    def _c51_loss(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, next_obs: torch.Tensor,
                  terminated: torch.Tensor, gamma: float | torch.Tensor,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample cross-entropy to the projected target distribution; (loss (B,), mean Q, priority (B,))."""
        support = self.online.support  # type: ignore[union-attr]
        rows = torch.arange(action.shape[0], device=action.device)
        with torch.no_grad():
            next_probs = self.target.dist_logits(next_obs).softmax(-1)  # type: ignore[operator]
            next_q = self.online(next_obs) if self.double else (next_probs * support).sum(-1)
            target_dist = categorical_projection(next_probs[rows, next_q.argmax(1)], reward, terminated,
                                                 gamma, support)
        logits = self.online.dist_logits(obs)[rows, action]  # type: ignore[operator]
        per_sample = -(target_dist * logits.log_softmax(-1)).sum(-1)
        q_mean = (logits.detach().softmax(-1) * support).sum(-1).mean()
        return per_sample, q_mean, per_sample.detach()

    @torch.no_grad()
    def sync_target(self, hard: bool = False) -> None:
        """Hard copy (tau == 1, or ``hard``) or polyak step target <- tau * online + (1 - tau) * target."""
        src, dst = list(self.online.parameters()), list(self.target.parameters())
        if hard or self.tau >= 1.0:
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
        """Mean loss and Q since the last call (one host sync): ``td_loss``, ``q_values``; None if no update ran.

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
        """Everything but the online weights (the algorithm's policy, saved on their own)."""
        return {
            "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "updates": self.updates,
            # metric sums since the last log write, so a resumed run logs the same interval means
            "metric_sums": {"loss": self._loss_sum.clone(), "q": self._q_sum.clone(), "n": self._n},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict` (the online weights are loaded before it)."""
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
