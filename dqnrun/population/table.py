"""K Q-tables stacked: tabular Q-learning (``network=tabular``) for a population of members.

Member k's table (S, A) is slice k of one ``(K, S, A)`` tensor, a view of a flat ``(K, S*A)`` one whose rows are
the members' parameters (`StackedParams`, as the batched autograd path stacks any network's), so target syncs, the
gradient cap and the optimizer are `PopulationLearner`'s. A step gathers every member's Q(s, .) rows at once,
computes the TD errors, and scatters each member's gradient into its own table with one accumulating
``index_put_``: what autograd does for a solo run's ``table[obs]`` (an accumulating ``index_put_`` into zeros),
for all members together. The optimizer is SGD (momentum 0: Q(s,a) += alpha * TD error, with ``half_sse``),
stepped per distinct learning rate (`BatchedSGD`).

The tabular presets learn from the rows of the last vector step only (``replay=latest``): after an episode's end
an env's next step stores no row, so members' batches differ in width. They are padded to the widest (`widths`
gives each member's own), and a padded row adds exactly zero to its member's gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from dqnrun.algos.dqn.targets import td_target
from dqnrun.population.functional import StackedParams
from dqnrun.population.stacked import PopulationLearner
from dqnrun.replay import Batch


class StackedTable(StackedParams):
    """K tables ``(S, A)``: `StackedParams` of one tensor, ``table``, so ``flat (K, S*A)``, ``rows``, ``like``,
    ``keep`` and ``member_tensors`` are its; with the view ``table (K, S, A)`` and the Q rows of given states."""

    def __init__(self, flat: torch.Tensor, states: int, actions: int) -> None:
        self.states, self.actions = int(states), int(actions)
        super().__init__(flat, ["table"], [torch.Size((self.states, self.actions))])

    @classmethod
    def stack(cls, tables: Sequence[torch.Tensor]) -> StackedTable:  # type: ignore[override]
        """From each member's (S, A) table: a fresh (K, S*A) tensor holding copies."""
        return cls(StackedParams.from_rows(["table"], [[t] for t in tables]).flat, *tables[0].shape)

    @property
    def table(self) -> torch.Tensor:
        return self.views[0]

    def like(self, flat: torch.Tensor) -> StackedTable:
        return StackedTable(flat, self.states, self.actions)

    def q(self, states: torch.Tensor) -> torch.Tensor:
        """State indices ``(K, N)`` -> each member's Q rows ``(K, N, A)``."""
        idx = states.long().unsqueeze(2).expand(-1, -1, self.actions)
        return self.table.gather(1, idx)


class BatchedSGD:
    """SGD without momentum for stacked parameters with a learning rate per member: ``p -= lr * (g + wd * p)``,
    `torch.optim.SGD`'s step element for element, over the members' (P,) rows once per distinct learning rate.
    It keeps no state (neither does ``torch.optim.SGD`` without momentum)."""

    has_state = False

    def __init__(self, lr: Sequence[float], weight_decay: float) -> None:
        self.lr = [float(x) for x in lr]
        self.weight_decay = float(weight_decay)
        self._bind()

    def _bind(self) -> None:
        self.groups: dict[float, list[int]] = {}
        for m, lr in enumerate(self.lr):
            self.groups.setdefault(lr, []).append(m)

    def keep(self, members: Sequence[int]) -> None:
        self.lr = [self.lr[m] for m in members]
        self._bind()

    @torch.no_grad()
    def step(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], active: Sequence[bool]) -> None:
        for lr, members in self.groups.items():
            ms = [m for m in members if active[m]]
            if not ms:
                continue
            p = [params[m] for m in ms]
            g = [grads[m] for m in ms]
            if self.weight_decay:
                g = torch._foreach_add(g, p, alpha=self.weight_decay)
            torch._foreach_add_(p, g, alpha=-lr)


class TablePopulationLearner(PopulationLearner):
    """DQN's update for K Q-tables at once (`PopulationLearner`'s syncs, cap, metrics and members leaving; SGD).

    Args:
        online, target: the members' tables, stacked.
        gamma, tau, max_grad_norm, lr: (K,) per member, as `PopulationLearner`.
        weight_decay: SGD's, shared.
        loss: ``half_sse`` (summed: one SGD step is the textbook update), ``huber`` or ``mse`` (averaged).
        double: Double DQN.
    """

    LOSSES = ("huber", "mse", "half_sse")

    def __init__(self, online: StackedTable, target: StackedTable, gamma: Sequence[float], tau: Sequence[float],
                 max_grad_norm: Sequence[float], lr: Sequence[float], weight_decay: float = 0.0,
                 loss: str = "half_sse", double: bool = False) -> None:
        super().__init__(online, target, lambda x: x, gamma, tau, max_grad_norm, lr,  # type: ignore[arg-type]
                         weight_decay=weight_decay, loss=loss, double=double, obs_rank=0)

    def _optimizer(self, lr: Sequence[float], betas: tuple[float, float], eps: float,
                   weight_decay: float) -> BatchedSGD:  # type: ignore[override]
        return BatchedSGD(lr, weight_decay)

    @staticmethod
    def parameters_of(net: nn.Module) -> list[torch.Tensor]:
        """A member's parameters in the stack's order: its table."""
        return [net.table]  # type: ignore[list-item]

    def greedy(self, obs: np.ndarray, rows: Sequence[int] | None = None, cache: dict | None = None) -> np.ndarray:
        """States ``(K, E)`` -> argmax_a Q ``(K, E)`` (the first of tied actions, as a solo run's argmax); a table's
        rows are cheap to pick, so ``cache`` is not used."""
        subset = self._subset(rows)
        table = self.online.table if subset is None else self.online.table[subset]
        if self.device.type == "cpu":
            t = table.detach().numpy()
            return t[np.arange(t.shape[0])[:, None], np.asarray(obs, dtype=np.int64)].argmax(2)
        with torch.inference_mode():
            return self.online.like(table.reshape(table.shape[0], -1)).q(
                torch.as_tensor(obs, device=self.device)).argmax(2).cpu().numpy()

    def targets(self, batch: Batch) -> torch.Tensor | None:
        return None  # each step's target from the tables as they are at that step (the target syncs every step)

    @torch.no_grad()
    def update(self, batch: Batch, active: Sequence[bool] | None = None,
               widths: Sequence[int] | None = None) -> list[np.ndarray | None]:
        """G gradient steps on a ``(K, G, B)`` burst for the ``active`` members; ``widths``: each member's own
        number of rows (the rest of its B is padding), all B by default."""
        k, g_steps, b = batch.action.shape
        act = [True] * k if active is None else list(active)
        width = torch.tensor([b] * k if widths is None else list(widths), device=self.device)
        valid = (torch.arange(b, device=self.device) < width.unsqueeze(1)).float()  # (K, B)
        count = width.clamp(min=1).float()
        members = torch.arange(k, device=self.device).unsqueeze(1).expand(k, b)
        online, target = self.online, self.target
        out: list[np.ndarray | None] = []
        for g in range(g_steps):
            s, a, s2 = batch.obs[:, g].long(), batch.action[:, g], batch.next_obs[:, g].long()
            gamma = self._gamma.view(-1, 1) if batch.discount is None else batch.discount[:, g]
            y = td_target(batch.reward[:, g], batch.terminated[:, g], target.q(s2), gamma,  # type: ignore[arg-type]
                          online.q(s2) if self.double else None)
            q_sa = online.q(s).gather(2, a.unsqueeze(2)).squeeze(2)  # (K, B)
            diff = q_sa - y
            weights = None if batch.weights is None else batch.weights[:, g]
            if self.loss == "half_sse":  # d(0.5 d^2)/dq = d, summed over rows
                grad_q = diff * valid
                per_sample = 0.5 * diff ** 2
            elif self.loss == "huber":
                c = diff.clamp(-1.0, 1.0)
                grad_q = c / count.unsqueeze(1) * valid
                per_sample = c * torch.add(diff, c, alpha=-0.5)
            else:
                grad_q = diff.mul(2.0) / count.unsqueeze(1) * valid
                per_sample = diff * diff
            if weights is not None:
                grad_q.mul_(weights)
                per_sample = per_sample * weights
            per_sample = per_sample * valid
            loss = per_sample.sum(1) if self.loss == "half_sse" else per_sample.sum(1) / count
            self.grad.flat.zero_()
            self.grad.table.index_put_((members, s, a), grad_q, accumulate=True)
            self._step(loss, (q_sa * valid).sum(1) / count, act)
            out.append(diff.abs().cpu().numpy() if weights is not None else None)
        return out


def stack_tables(learners: Sequence[nn.Module], **shared: object) -> TablePopulationLearner:
    """The members' learners (built or restored) -> one `TablePopulationLearner`, member i in row i (tables
    only: `dqnrun.population.member.import_member` brings in the rest)."""
    first = learners[0]
    online = StackedTable.stack([ln.online.table for ln in learners])  # type: ignore[union-attr]
    target = StackedTable.stack([ln.target.table for ln in learners])  # type: ignore[union-attr]
    return TablePopulationLearner(online, target, loss=first.loss_name, double=first.double,  # type: ignore[arg-type]
                                  **shared)  # type: ignore[arg-type]
