"""PQN populations: K PQN runs in lockstep, one batched forward acting for all of them and one batched update.

PQN (`dqnrun.algos.pqn`) has no replay and no target network: each run acts for a rollout of T vector steps,
computes Q(lambda) returns over it and makes ``epochs x minibatches`` updates, with RAdam. In a population every
member keeps its own envs, RNG, rollout, returns and minibatch shuffles (its solo run's), and:

- one forward over every member's observations gives each its Q-values (its greedy actions and the values its
  returns are computed from), through batched products over the stacked parameters (`StackedQ`: every network a
  PQN population takes, LayerNorm MLPs and CNNs);
- each minibatch is one update of all members, one backward through those products (`grouped_gradients`): each
  member's loss is its solo loss (the mean over its own
  minibatch; members' minibatches differ in size by the autoreset steps each rollout drops, so shorter ones are
  padded with samples of weight 0), its gradient capped at its own norm and RAdam stepped with its own
  (decaying) learning rate, all on stacked ``(K, P)`` parameters (`BatchedRAdam`).

A member's checkpoint is its solo run's (`PQNMember` exports weights, RAdam's state, the learning rate, counters
and metric sums into its own PQN before the lifecycle reads it). Over an MLP a population measured 1.47x faster
than joblib on this CPU and joins by default; over MinAtar's CNN 0.81x (the convolutions are the CPU's arithmetic
either way), so there it joins on a CPU only with ``hydra.launcher.autograd=true`` (`dqnrun.population.grouping`).
On a GPU the batched update is the point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from dqnrun import metrics as M
from dqnrun.acting import epsilon_greedy
from dqnrun.algos.pqn.loop import LOSSES
from dqnrun.algos.pqn.returns import q_lambda_returns
from dqnrun.population.engine import Member, Population
from dqnrun.population.functional import StackedParams, StackedQ, grouped_gradients, q_of
from dqnrun.population.member import MemberOf
from dqnrun.population.stacked import count_update, subset_of
from dqnrun.run import faults

if TYPE_CHECKING:
    from dqnrun.algos.pqn import PQN
    from dqnrun.run.session import Session


class BatchedRAdam:
    """``torch.optim.RAdam`` (L2 weight decay, not decoupled) for K members' flat ``(K, P)`` parameters, each with its
    own learning rate and step count. State as torch keeps it per parameter: ``exp_avg``, ``exp_avg_sq``, ``step``."""

    def __init__(self, k: int, size: int, betas: tuple[float, float], eps: float, weight_decay: float,
                 device: torch.device) -> None:
        self.exp_avg = torch.zeros(k, size, device=device)
        self.exp_avg_sq = torch.zeros(k, size, device=device)
        self.steps = np.zeros(k, dtype=np.float64)
        self.betas, self.eps, self.weight_decay = (float(betas[0]), float(betas[1])), float(eps), float(weight_decay)

    def keep(self, members: Sequence[int]) -> None:
        idx = list(members)
        self.exp_avg, self.exp_avg_sq = self.exp_avg[idx].contiguous(), self.exp_avg_sq[idx].contiguous()
        self.steps = self.steps[idx]

    @torch.no_grad()
    def step(self, params: torch.Tensor, grads: torch.Tensor, lr: Sequence[float], active: Sequence[bool]) -> None:
        """One RAdam step of the ``active`` rows of ``params`` (K, P) with ``grads`` (K, P)."""
        rows = [m for m, on in enumerate(active) if on]
        if not rows:
            return
        every = len(rows) == params.shape[0]
        idx = None if every else torch.tensor(rows, device=params.device)
        p = params if every else params[idx]
        g = grads if every else grads[idx]
        m_avg = self.exp_avg if every else self.exp_avg[idx]
        m_sq = self.exp_avg_sq if every else self.exp_avg_sq[idx]
        if self.weight_decay:
            g = g.add(p, alpha=self.weight_decay)
        beta1, beta2 = self.betas
        m_avg.lerp_(g, 1 - beta1)
        m_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        t = self.steps[rows] + 1.0
        self.steps[rows] = t
        bc1, bc2 = 1.0 - beta1 ** t, 1.0 - beta2 ** t
        rho_inf = 2.0 / (1.0 - beta2) - 1.0
        rho_t = rho_inf - 2.0 * t * beta2 ** t / bc2
        on = rho_t > 5.0
        rect = np.where(on, np.sqrt(np.maximum((rho_t - 4) * (rho_t - 2) * rho_inf, 0.0)
                                    / ((rho_inf - 4) * (rho_inf - 2) * np.maximum(rho_t, 1e-12))), 0.0)
        lrs = np.asarray([lr[m] for m in rows], dtype=np.float64)
        col = {"dtype": p.dtype, "device": p.device}
        update = m_avg * torch.tensor(lrs / bc1, **col).unsqueeze(1)  # (bias-corrected exp_avg) * lr
        if on.any():  # rectified rows: times sqrt(bc2) / (sqrt(exp_avg_sq) + eps) * rect
            scale = torch.tensor(np.sqrt(bc2) * rect, **col).unsqueeze(1)
            adaptive = scale / (m_sq.sqrt() + self.eps)
            update = torch.where(torch.tensor(on, device=p.device).unsqueeze(1), update * adaptive, update)
        p.sub_(update)
        if not every:
            params.index_copy_(0, idx, p)  # type: ignore[arg-type]
            self.exp_avg.index_copy_(0, idx, m_avg)  # type: ignore[arg-type]
            self.exp_avg_sq.index_copy_(0, idx, m_sq)  # type: ignore[arg-type]


class PQNPopulationLearner:
    """K members' PQN networks stacked, with their RAdam states, learning rates, returns' settings and metric sums.

    Args:
        pqns: the members' own PQNs (built or restored); member 0's network is the template every row runs through.
    """

    def __init__(self, pqns: Sequence[PQN]) -> None:
        self.members = list(pqns)
        first = pqns[0]
        self.net = first.policy
        stacked = StackedQ.of(first.policy)
        if stacked is None:  # grouping keeps such networks out (NoisyNet layers stand alone)
            raise ValueError(f"a PQN population batches plain Q-networks, not {type(first.policy).__name__} with "
                             "noise or a distributional head")
        self._stacked_q = stacked
        self.online = StackedParams.stack([p.policy for p in pqns])
        self.device = self.online.flat.device
        group = first.optimizer.param_groups[0]
        if group.get("decoupled_weight_decay", False):
            raise ValueError("a PQN population steps RAdam without decoupled weight decay")
        self.radam = BatchedRAdam(self.k, self.online.size, tuple(group["betas"]), group["eps"],  # type: ignore[arg-type]
                                  group["weight_decay"], self.device)
        self.grad = self.online.like(torch.zeros_like(self.online.flat))
        self.loss = {fn: name for name, fn in LOSSES.items()}[first.loss_fn]
        self.updates = np.zeros(self.k, dtype=np.int64)
        self.loss_sum = torch.zeros(self.k, device=self.device)
        self.q_sum = torch.zeros(self.k, device=self.device)
        self.n = np.zeros(self.k, dtype=np.int64)
        self.lr = [0.0] * self.k
        for slot, pqn in enumerate(pqns):
            import_pqn(self, slot, pqn)

    @property
    def k(self) -> int:
        return self.online.k

    def keep(self, members: Sequence[int]) -> None:
        idx = list(members)
        self.members = [self.members[m] for m in idx]
        self.online.keep(idx)
        self.grad.keep(idx)
        self.radam.keep(idx)
        self.lr = [self.lr[m] for m in idx]
        self.updates, self.n = self.updates[idx], self.n[idx]
        self.loss_sum, self.q_sum = self.loss_sum[idx].clone(), self.q_sum[idx].clone()

    # --- acting -----------------------------------------------------------------------------------------
    def q_values(self, obs: np.ndarray, rows: Sequence[int] | None = None, cache: dict | None = None) -> np.ndarray:
        """obs ``(K, E, *obs_shape)`` -> Q ``(K, E, A)`` float32, each member's its solo network's forward; with
        ``rows`` (slots) only those members, in that order (``cache`` as for `PopulationLearner.greedy`)."""
        full = rows is None or list(rows) == list(range(self.k))
        params = self.online if full else subset_of(  # type: ignore[arg-type]
            cache, "params", rows, lambda: self.online.like(self.online.flat[list(rows)]))  # type: ignore[arg-type]
        with torch.inference_mode():
            return q_of(self.net, self._stacked_q, params, obs, self.device).float().cpu().numpy()

    def greedy(self, obs: np.ndarray, rows: Sequence[int] | None = None, cache: dict | None = None) -> np.ndarray:
        """argmax_a Q ``(K, E)``: what evaluations act on (`dqnrun.population.evaluation`)."""
        return self.q_values(obs, rows, cache).argmax(-1)

    def evaluation(self) -> AbstractContextManager[None]:
        return nullcontext()  # PQN's networks act alike in training and evaluation

    # --- learning ---------------------------------------------------------------------------------------
    def _each(self, d: torch.Tensor) -> torch.Tensor:
        """The per-sample loss of TD errors ``d``: ``mse``, or smooth_l1 with beta 1."""
        if self.loss == "mse":
            return d * d
        a = d.abs()
        return torch.where(a < 1.0, 0.5 * d * d, a - 0.5)

    @torch.no_grad()
    def update(self, obs: torch.Tensor, action: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
               count: torch.Tensor, active: Sequence[bool]) -> None:
        """One gradient step of every ``active`` member on its minibatch (``(K, B, ...)``, padded; ``count`` (K,) the
        real samples of each)."""
        def loss_of(q: torch.Tensor) -> torch.Tensor:  # the solo loss: the mean over each member's own samples
            return (self._each(q - target) * weight).sum(1) / count

        loss, q = grouped_gradients(self._stacked_q, self.online, self.grad, obs, action, loss_of)
        q_mean = (q * weight).sum(1) / count
        caps = torch.tensor([math.inf if m.max_grad_norm is None else float(m.max_grad_norm) for m in self.members],
                            device=self.device)
        flat = self.grad.flat
        total = torch.linalg.vector_norm(flat, dim=1)
        flat.mul_((caps / (total + 1e-6)).clamp_(max=1.0).unsqueeze(1))  # as clip_grad_norm_ scales
        self.radam.step(self.online.flat, flat, self.lr, active)
        count_update(self, loss, q_mean, active)

    def learn(self, members: Sequence[tuple[int, Session]]) -> None:
        """Each of ``members`` (slot, its session), whose rollout is full: Q(lambda) returns from its own values,
        its learning rate for this rollout, then ``epochs x minibatches`` batched updates over its own shuffles."""
        slots = [s for s, _ in members]
        q_last = self.q_values(np.stack([session.cursor.obs for _, session in members]), rows=slots)
        data: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for i, (slot, session) in enumerate(members):
            pqn = self.members[slot]
            r = pqn.rollout
            last_value = q_last[i][np.arange(q_last.shape[1]), q_last[i].argmax(-1)]
            returns = q_lambda_returns(r.reward, r.terminated, r.ended, r.valid, r.value, last_value, pqn.gamma,
                                       pqn.q_lambda)
            keep = np.flatnonzero(r.valid.reshape(-1))
            data[slot] = (torch.as_tensor(r.obs.reshape(-1, *r.obs.shape[2:])[keep], device=self.device),
                          torch.as_tensor(r.action.reshape(-1)[keep], device=self.device),
                          torch.as_tensor(returns.reshape(-1)[keep], dtype=torch.float32, device=self.device))
            if pqn.lr_decay_steps is not None:  # as `PQN.learn`: in absolute env steps
                start = session.step - r.pos * pqn.num_envs
                self.lr[slot] = pqn.base_lr * max(0.0, 1.0 - start / pqn.lr_decay_steps)
        active = [s in data for s in range(self.k)]
        first = self.members[slots[0]]
        for _ in range(first.epochs):
            splits = {s: torch.randperm(len(d[0]), generator=self.members[s].shuffle).to(self.device)
                      .tensor_split(first.minibatches) for s, d in data.items()}
            for j in range(first.minibatches):
                self.update(*self._stack({s: tuple(t[splits[s][j]] for t in d) for s, d in data.items()}),
                            active=active)
        for slot, _ in members:
            self.members[slot].rollout.clear()

    def _stack(self, parts: dict[int, tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
        """Members' minibatches -> ``(K, B, ...)`` tensors padded to the longest, weights and counts."""
        ref = next(iter(parts.values()))
        b = max(1, max(len(p[0]) for p in parts.values()))
        obs = torch.zeros((self.k, b, *ref[0].shape[1:]), dtype=ref[0].dtype, device=self.device)
        action = torch.zeros((self.k, b), dtype=ref[1].dtype, device=self.device)
        target = torch.zeros((self.k, b), device=self.device)
        weight = torch.zeros((self.k, b), device=self.device)
        count = torch.ones(self.k, device=self.device)
        for s, (o, a, y) in parts.items():
            n = len(o)
            obs[s, :n], action[s, :n], target[s, :n] = o, a, y
            weight[s, :n] = 1.0
            count[s] = n  # an empty minibatch: 0 / 0, the NaN its solo run's mean over nothing gives (it fails)
        return obs, action, target, weight, count

    # --- metrics ----------------------------------------------------------------------------------------
    def read_metrics(self, m: int) -> dict[str, float] | None:
        if self.n[m] == 0:
            return None
        out = {M.TD_LOSS: float(self.loss_sum[m]) / int(self.n[m]), M.Q_VALUES: float(self.q_sum[m]) / int(self.n[m])}
        self.loss_sum[m] = 0.0
        self.q_sum[m] = 0.0
        self.n[m] = 0
        return out


def _params(pqn: PQN) -> list[nn.Parameter]:
    return list(pqn.policy.parameters())


def import_pqn(learner: PQNPopulationLearner, slot: int, pqn: PQN) -> None:
    """A member's own state into row ``slot``: weights, RAdam's moments and step, learning rate, counters, sums."""
    with torch.no_grad():
        for dst, p in zip(learner.online.member_tensors(slot), _params(pqn), strict=True):
            dst.copy_(p.reshape(dst.shape))
        state = [pqn.optimizer.state.get(p) for p in _params(pqn)]
        avg, sq = learner.online.like(learner.radam.exp_avg), learner.online.like(learner.radam.exp_avg_sq)
        if all(s and "exp_avg" in s for s in state):
            for a, q, s in zip(avg.member_tensors(slot), sq.member_tensors(slot), state, strict=True):
                a.copy_(s["exp_avg"].reshape(a.shape))
                q.copy_(s["exp_avg_sq"].reshape(q.shape))
            learner.radam.steps[slot] = float(state[0]["step"])  # type: ignore[index]
        else:
            avg.flat[slot].zero_()
            sq.flat[slot].zero_()
            learner.radam.steps[slot] = 0.0
    learner.lr[slot] = float(pqn.optimizer.param_groups[0]["lr"])
    learner.updates[slot] = pqn.updates
    learner.loss_sum[slot] = float(pqn._loss_sum)
    learner.q_sum[slot] = float(pqn._q_sum)
    learner.n[slot] = pqn._n


def export_pqn(learner: PQNPopulationLearner, slot: int, pqn: PQN, policy_only: bool = False) -> None:
    """Row ``slot`` into the member's own PQN, so that its ``state_dict`` is a solo run's."""
    with torch.no_grad():
        for p, src in zip(_params(pqn), learner.online.member_tensors(slot), strict=True):
            p.copy_(src.reshape(p.shape))
        if policy_only:
            return
        opt, step = pqn.optimizer, float(learner.radam.steps[slot])
        if step == 0.0:
            opt.state.clear()
        else:
            avg, sq = learner.online.like(learner.radam.exp_avg), learner.online.like(learner.radam.exp_avg_sq)
            for p, a, q in zip(_params(pqn), avg.member_tensors(slot), sq.member_tensors(slot), strict=True):
                opt.state[p] = {"step": torch.tensor(step), "exp_avg": a.reshape(p.shape).clone(),
                                "exp_avg_sq": q.reshape(p.shape).clone()}
    pqn.optimizer.param_groups[0]["lr"] = learner.lr[slot]
    pqn._updates = int(learner.updates[slot])
    pqn._loss_sum, pqn._q_sum, pqn._n = float(learner.loss_sum[slot]), float(learner.q_sum[slot]), int(learner.n[slot])


class PQNMember(MemberOf):
    """A PQN member (`MemberOf`): its `PQN`, its learning state in a `PQNPopulationLearner`."""

    @property
    def pqn(self) -> PQN:
        return self.own

    def export_from(self, index: int, policy_only: bool = False) -> None:
        export_pqn(self.learner, index, self.own, policy_only=policy_only)

    def read_metrics(self, step: int) -> dict[str, float]:
        if self.slot.index is None:
            return self.own.read_metrics(step)
        self.check_finite()
        out = {M.EPSILON: self.own.schedule(step), M.LEARNING_RATE: self.learner.lr[self.slot.index]}
        out.update(self.learner.read_metrics(self.slot.index) or {})
        return out


def act_and_send(pqn: PQN, session: Session, q: np.ndarray) -> np.ndarray:
    """`PQN.train`'s acting for one member from its Q-values ``q`` (E, A): its own epsilon draws; the actions go
    to its envs. Returns max_a Q of the greedy actions (what its returns are computed from)."""
    faults.point("act")
    greedy = q.argmax(-1)
    actions = epsilon_greedy(session.cursor.obs, lambda _o, _m=None, g=greedy: g, pqn.schedule(session.step),
                             session.rng, pqn.n_actions)
    session.env_send(actions)
    return q[np.arange(len(greedy)), greedy]


def receive_and_store(pqn: PQN, session: Session, values: np.ndarray) -> Any:
    """The member's env step comes back; into its rollout, as `PQN.train` stores it."""
    t = session.env_recv()
    clip = pqn.reward_clip
    reward = t.reward if clip is None else np.clip(t.reward, -clip, clip)
    pqn.rollout.add(t.obs, t.action, reward, t.terminated, t.truncated, t.valid, values)
    return t


class PQNPopulation(Population):
    """`Population` for PQN members: the same lifecycle (start, sessions, evaluation side by side, members
    leaving, signals), with PQN's acting, storing and learning (`PQN.train`, one member at a time, batched)."""

    def _stack(self) -> None:
        live = self._live
        if not live:
            return
        pqns = [m.run.algo for m in live]  # type: ignore[union-attr]
        self.learner = learner = PQNPopulationLearner(pqns)  # type: ignore[arg-type,assignment]
        for i, (m, pqn) in enumerate(zip(live, pqns, strict=True)):
            m.slot.index = i
            m.run.algo = PQNMember(pqn, learner, m.slot)  # type: ignore[union-attr,arg-type]
        torch.set_num_threads(self.threads)

    def _act_and_step(self) -> list[tuple[Member, Any]]:
        live, learner, router = self._live, self.learner, self.router
        q = learner.q_values(np.stack([m.session.cursor.obs for m in live]))  # type: ignore[union-attr]
        sent: list[tuple[Member, np.ndarray]] = []
        for i, m in enumerate(list(live)):  # every member's actions go out before any member's step comes back;
            router.current = m.key            # over a copy: a member failing here leaves ``live``
            try:
                sent.append((m, act_and_send(m.run.algo.pqn, m.session, q[i])))  # type: ignore[union-attr]
            except Exception as exc:
                self._failed(m, exc)
        stepped: list[tuple[Member, Any]] = []
        for m, values in sent:
            router.current = m.key
            try:
                stepped.append((m, receive_and_store(m.run.algo.pqn, m.session, values)))  # type: ignore[union-attr]
            except Exception as exc:
                self._failed(m, exc)
        router.current = None
        return stepped

    def _learn(self, stepped: list[tuple[Member, Any]]) -> None:
        """The members whose rollout filled on this step learn from it, in one batched update per minibatch."""
        full = [(m.slot.index, m.session) for m, _ in stepped
                if m.training and m.run.algo.pqn.rollout.full]  # type: ignore[union-attr]
        if full:
            faults.point("learn")
            self.learner.learn(full)  # type: ignore[union-attr,arg-type]
