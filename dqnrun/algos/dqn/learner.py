"""DQN's learner: the online and target networks, the optimizer, gradient updates and target sync.

The update is one of four heads (``learner.distributional``: none, C51, QR-DQN, IQN), optionally with Munchausen's
target (``learner.munchausen``); the targets and losses are pure functions (`targets`, `quantile`), and the Learner
picks and feeds them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dqnrun.algos.dqn.heads import head_of
from dqnrun.algos.dqn.quantile import quantile_huber_loss, quantile_target
from dqnrun.algos.dqn.targets import LOSSES, categorical_projection, dead_end, legal, munchausen_target, td_target
from dqnrun.errors import UsageError
from dqnrun.fastpath import (
    LeanStep,
    ManualMLPGradient,
    MLPPlan,
    NumpyGreedyActor,
    clip_grad_norm,
    mlp_forward,
    supports,
)
from dqnrun.networks import fixed_taus
from dqnrun.replay import Batch


class Learner:
    """Owns the online and target networks and the optimizer, and performs updates.

    The target network is frozen for a whole burst of gradient steps (syncs happen between bursts, on
    env-step boundaries, as in SB3), so the target values of all G batches are computed in one batched
    forward before the burst. Plain MLPs take a hand-written backward pass (``dqnrun.fastpath``, tested
    equal to autograd); other networks use autograd. Metrics stay on the device and are read only at
    logging time: no host sync in the hot path.

    ``distributional``: False (Q-learning), True or ``"c51"`` (C51), ``"qr"`` (QR-DQN: the quantile Huber loss
    at fixed fractions), ``"iqn"`` (IQN: ``iqn_n`` online and ``iqn_n_prime`` target fractions tau ~ U(0, 1) per
    sample and step, from a generator seeded with ``seed`` and saved in `state_dict`, so resume is exact; the
    greedy action at s' and acting use the network's fixed grid). ``munchausen``: Munchausen's target with
    ``munchausen_alpha``, ``munchausen_tau`` (the temperature; ``tau`` is polyak's) and ``munchausen_clip``, on
    Q-learning, QR and IQN.
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
        distributional: bool | str = False,
        compile: bool = False,
        munchausen: bool = False,
        munchausen_alpha: float = 0.9,
        munchausen_tau: float = 0.03,
        munchausen_clip: float = -1.0,
        iqn_n: int = 64,
        iqn_n_prime: int = 64,
        seed: int = 0,
    ) -> None:
        self.online, self.target, self.optimizer = online, target, optimizer
        self.gamma, self.tau, self.double = float(gamma), float(tau), bool(double)
        self.head = head_of(distributional)
        self.distributional = self.head != "q"
        if munchausen and (double or self.head == "c51"):
            raise ValueError("Munchausen's target has no argmax to decouple (double) and no C51 form")
        self.munchausen = (float(munchausen_alpha), float(munchausen_tau), float(munchausen_clip)) if munchausen \
            else None
        self.iqn_n, self.iqn_n_prime = int(iqn_n), int(iqn_n_prime)
        device = next(online.parameters()).device
        self.device = device
        # IQN's fractions come from the learner's own stream (never the global one, which acting and noise share)
        self.tau_gen = torch.Generator(device=device).manual_seed(int(seed)) if self.head == "iqn" else None
        self.qr_taus = fixed_taus(online.n_quantiles).to(device) if self.head == "qr" else None
        self.noisy = any(hasattr(m, "reset_noise") for m in online.modules() if m is not online)
        self.loss_name = loss
        self.loss_fn = LOSSES[loss]
        self.max_grad_norm = max_grad_norm
        self.target.requires_grad_(False)
        # compile=true: torch.compile the autograd loss (forward and, through AOTAutograd, backward) instead
        # of taking the hand-written MLP path; tests/test_compile.py checks it against eager step by step.
        self.compiled = bool(compile)
        self._loss = torch.compile(self._loss_terms, dynamic=False) if self.compiled else self._loss_terms
        # The hand-written backward is a scalar-Q regression: a distributional head never takes it (its structure
        # already says so: tests/unit/test_quantile.py), and the head is checked here too.
        manual_ok = (fast_mlp and not self.compiled and self.head == "q" and supports(online)
                     and loss in ("huber", "mse"))
        self.manual = ManualMLPGradient(online, loss) if manual_ok else None
        # each network's structure for the lean forward, read once (the modules live as long as the learner)
        self._plans = {online: self.manual.plan, self.target: MLPPlan(self.target)} if self.manual is not None else {}
        # optimizer.step() without its per-call bookkeeping (fused Adam, RAdam, RMSprop; any other falls back to
        # step()), bit-identical to it, on the hand-written path and autograd's alike
        self.step_optimizer = LeanStep(optimizer)
        self.updates = 0
        self.np_actor = NumpyGreedyActor(online) if self.manual is not None and device.type == "cpu" else None
        # Running sums since the last read, as device tensors. A NaN or inf anywhere makes a sum non-finite,
        # so checking the sums at read time catches every bad step without a per-step check.
        self._loss_sum = torch.zeros((), device=device)
        self._q_sum = torch.zeros((), device=device)
        self._n = 0

    def greedy_actions(self, obs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """obs (E, *obs_shape) -> argmax_a Q_online(obs, a), (E,) int64; over the legal actions of ``mask`` (E, A)
        bool (``env.action_mask``) when given."""
        if self.np_actor is not None:
            return self.np_actor(obs, mask)
        with torch.inference_mode():
            q = self._q(self.online, torch.as_tensor(obs, device=self.device))
            if mask is not None:
                q = legal(q, torch.as_tensor(mask, device=self.device))
            return q.argmax(1).cpu().numpy()

    def _q(self, net: nn.Module, obs: torch.Tensor) -> torch.Tensor:
        """No-grad Q-values (B, A), through the lean MLP forward where it applies."""
        if self.manual is None:
            return net(obs)
        return mlp_forward(net, obs, plan=self._plans.get(net))  # type: ignore[arg-type]

    @torch.no_grad()
    def targets(self, batch: Batch) -> torch.Tensor | None:
        """TD targets for a whole (G, B) burst from one target forward (the target net is frozen within a
        burst); None where each step needs the current online net (Double DQN) or a distribution (C51, QR, IQN).
        Munchausen's target needs only the target net, at s and s', so it is a burst target too."""
        if self.double or self.distributional:
            return None
        g, b = batch.action.shape
        next_q = self._q(self.target, batch.next_obs.flatten(0, 1)).view(g, b, -1)
        gamma = self.gamma if batch.discount is None else batch.discount
        if self.munchausen is not None:
            q = self._q(self.target, batch.obs.flatten(0, 1)).view(g, b, -1)
            return munchausen_target(batch.reward, batch.terminated, gamma, q, batch.action, next_q, *self.munchausen)
        return td_target(batch.reward, batch.terminated, next_q, gamma,  # type: ignore[arg-type]
                         next_mask=batch.next_mask)

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
                y = None  # a target distribution instead (in `_c51_loss`, `_quantile_loss`)
            else:
                with torch.no_grad():  # Double DQN: a* from the current online weights
                    y = td_target(b.reward, b.terminated, self._q(self.target, b.next_obs), gamma,
                                  self._q(self.online, b.next_obs), b.next_mask)  # type: ignore[arg-type]
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
                                                  b.weights, y, self._sample_taus(b.action.shape[0]), b.next_mask)
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
        taus: tuple[torch.Tensor, torch.Tensor] | None = None,
        next_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The autograd step's loss: (scalar loss, mean Q(s,a), per-sample priority (B,)).

        ``y`` is the TD target; None for the distributional heads, whose targets are distributions. ``taus``:
        IQN's sampled fractions (drawn outside, so a compiled loss holds no random stream). This is the
        function that ``compile=true`` hands to ``torch.compile``.
        """
        if self.head == "c51":
            per_sample, q_mean, td_abs = self._c51_loss(obs, action, reward, next_obs, terminated, gamma, next_mask)
        elif self.distributional:
            per_sample, q_mean, td_abs = self._quantile_loss(obs, action, reward, next_obs, terminated, gamma, taus,
                                                             next_mask)
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
                  terminated: torch.Tensor, gamma: float | torch.Tensor, next_mask: torch.Tensor | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample cross-entropy to the projected target distribution; (loss (B,), mean Q, priority (B,)).
        With ``next_mask`` the greedy a* at s' is among its legal actions; an s' without one bootstraps nothing."""
        support = self.online.support  # type: ignore[union-attr]
        rows = torch.arange(action.shape[0], device=action.device)
        with torch.no_grad():
            next_probs = self.target.dist_logits(next_obs).softmax(-1)  # type: ignore[operator]
            next_q = self.online(next_obs) if self.double else (next_probs * support).sum(-1)
            target_dist = categorical_projection(next_probs[rows, legal(next_q, next_mask).argmax(1)], reward,
                                                 dead_end(terminated, next_mask), gamma, support)
        logits = self.online.dist_logits(obs)[rows, action]  # type: ignore[operator]
        per_sample = -(target_dist * logits.log_softmax(-1)).sum(-1)
        q_mean = (logits.detach().softmax(-1) * support).sum(-1).mean()
        return per_sample, q_mean, per_sample.detach()

    def _sample_taus(self, b: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """IQN: fresh fractions tau ~ U(0, 1) for the online (B, N) and the target (B, N') quantiles; else None."""
        if self.tau_gen is None:
            return None
        u = torch.rand(b, self.iqn_n + self.iqn_n_prime, generator=self.tau_gen, device=self.device)
        return u[:, : self.iqn_n], u[:, self.iqn_n :]

    def _quantile_loss(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, next_obs: torch.Tensor,
                       terminated: torch.Tensor, gamma: float | torch.Tensor,
                       taus: tuple[torch.Tensor, torch.Tensor] | None, next_mask: torch.Tensor | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """QR-DQN or IQN (with Munchausen's target if on): the quantile Huber loss between the online quantiles of
        Z(s, a) and the target samples; (loss (B,), mean Q, priority (B,))."""
        rows = torch.arange(action.shape[0], device=action.device)
        tau, tau_next = taus if taus is not None else (self.qr_taus, None)
        with torch.no_grad():
            next_z = self.target.quantiles(next_obs, tau_next)  # type: ignore[operator]  # (B, A, N')
            # the target net's Q at s' (greedy action, Munchausen's policy): QR's mean quantile, IQN's fixed grid
            next_q = next_z.mean(-1) if tau_next is None else self.target(next_obs)
            if self.munchausen is not None:
                y = munchausen_target(reward, terminated, gamma, self.target(obs), action, next_q, *self.munchausen,
                                      next_z=next_z)
            else:
                a_star = legal(self.online(next_obs) if self.double else next_q, next_mask).argmax(1)
                y = quantile_target(reward, dead_end(terminated, next_mask), gamma, next_z[rows, a_star])
        z = self.online.quantiles(obs, tau)[rows, action]  # type: ignore[operator]  # (B, N)
        per_sample = quantile_huber_loss(z, y, tau)  # type: ignore[arg-type]
        return per_sample, z.detach().mean(), per_sample.detach()

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
            # IQN: the fractions' stream, so a resumed run samples what the uninterrupted one would have
            **({"tau_rng": self.tau_gen.get_state()} if self.tau_gen is not None else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict` (the online weights are loaded before it)."""
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_optimizer.rebind()
        self.updates = int(state["updates"])
        sums = state.get("metric_sums")
        if sums is not None:
            self._loss_sum.copy_(sums["loss"])
            self._q_sum.copy_(sums["q"])
            self._n = int(sums["n"])
        if self.tau_gen is not None and "tau_rng" in state:
            self.tau_gen.set_state(state["tau_rng"].cpu())
