"""A population member as the run lifecycle sees it: an ordinary DQN run whose weights live in stacked tensors.

Each member is built exactly as its solo run (`dqnrun.run.lifecycle.Run`: its seed, envs, replay, schedule, the
networks its seed initializes), so it draws the same env seeds, exploration and replay indices. While it trains,
its online and target weights, Adam's moments and its counters live in row ``slot`` of the population's
`PopulationLearner`; `MemberAlgo` copies them into the member's own DQN objects whenever the lifecycle reads
them (its ``policy`` for an evaluation or best.pt, its ``state_dict`` for a checkpoint). So a member's
checkpoints are a solo run's, which ``dqnrun eval``, ``export``, ``dqnrun.load`` and ``resume`` read unchanged.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from dqnrun import metrics as M
from dqnrun.algos.base import Algorithm
from dqnrun.fastpath.mlp import single_conv, supports
from dqnrun.networks import QTable
from dqnrun.population.functional import stack_functional
from dqnrun.population.stacked import OneConv, PopulationLearner, StackedMLP
from dqnrun.population.table import stack_tables

if TYPE_CHECKING:
    from dqnrun.algos.dqn import DQN
    from dqnrun.run.session import Session


def _conv(net: nn.Module) -> nn.Conv2d | None:
    return single_conv(net) if getattr(net, "torso", None) is not None else None


def layers(net: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A network's ``[(weight, bias), ...]``: its fully connected layers, input layer first, then its one
    convolution's (MinAtar's torso) where it has one; the order of the solo hand-written update."""
    out = [(layer.weight, layer.bias) for layer in net.linears]  # type: ignore[attr-defined]
    conv = _conv(net)
    if conv is not None:
        out.append((conv.weight, conv.bias))
    return out


def _params(net: nn.Module) -> list[torch.Tensor]:
    return [p for wb in layers(net) for p in wb]


def _params_of(learner: PopulationLearner, net: nn.Module) -> list[torch.Tensor]:
    """``net``'s parameters in the order of ``learner``'s stack: the hand-written stack's layer order, or the
    network's own (the batched autograd path, `FuncPopulationLearner.parameters_of`)."""
    order = getattr(learner, "parameters_of", None)
    return order(net) if order is not None else _params(net)


def _into(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copy between a parameter and its stacked view (a conv's filters are (F, C, kh, kw) in the network and
    (F, C*kh*kw) in the stack)."""
    dst.copy_(src.reshape(dst.shape))


class Slot:
    """Where a member sits in the stacked tensors; ``index`` is None once it has left the population."""

    def __init__(self, index: int | None) -> None:
        self.index = index


def import_member(learner: PopulationLearner, slot: int, dqn: DQN) -> None:
    """A member's own state into row ``slot``: weights, Adam's moments and step (zeros where it never stepped),
    update count and metric sums (a resumed or initialized member continues from them)."""
    src = dqn.learner
    with torch.no_grad():
        for dst, p in zip(learner.online.member_tensors(slot), _params_of(learner, src.online), strict=True):
            _into(dst, p)
        for dst, p in zip(learner.target.member_tensors(slot), _params_of(learner, src.target), strict=True):
            _into(dst, p)
        if learner.adam.has_state:  # Adam's moments and step (SGD without momentum, the Q-table's, keeps none)
            _import_adam(learner, slot, [src.optimizer.state.get(p) for p in _params_of(learner, src.online)])
        learner.updates[slot] = src.updates
        learner.loss_sum[slot] = src._loss_sum
        learner.q_sum[slot] = src._q_sum
        learner.n[slot] = src._n


def _import_adam(learner: PopulationLearner, slot: int, state: list[dict | None]) -> None:
    avg, sq = learner.online.like(learner.adam.exp_avg), learner.online.like(learner.adam.exp_avg_sq)
    if all(s and "exp_avg" in s for s in state):
        for a, q, s in zip(avg.member_tensors(slot), sq.member_tensors(slot), state, strict=True):
            _into(a, s["exp_avg"])  # type: ignore[index]
            _into(q, s["exp_avg_sq"])  # type: ignore[index]
        learner.adam.steps[slot].fill_(float(state[0]["step"]))  # type: ignore[index]
    else:
        avg.flat[slot].zero_()
        sq.flat[slot].zero_()
        learner.adam.steps[slot].zero_()


def _export_adam(learner: PopulationLearner, slot: int, dst: Any) -> None:
    """Row ``slot``'s Adam moments and step into ``dst``'s optimizer, as ``torch.optim.Adam`` keeps them."""
    step, opt = learner.adam.steps[slot], dst.optimizer
    if float(step) == 0.0:
        opt.state.clear()  # never stepped: what a fresh Adam holds
        return
    avg, sq = learner.online.like(learner.adam.exp_avg), learner.online.like(learner.adam.exp_avg_sq)
    for p, a, q in zip(_params_of(learner, dst.online), avg.member_tensors(slot), sq.member_tensors(slot),
                       strict=True):
        opt.state[p] = {"step": step.clone(), "exp_avg": a.reshape(p.shape).clone(),
                        "exp_avg_sq": q.reshape(p.shape).clone()}


def torch_stream(device: torch.device) -> torch.Tensor:
    """The global torch RNG state that a run on ``device`` draws its NoisyNet noise from."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _generator(state: torch.Tensor, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.set_state(state)
    return gen


def stack_members(dqns: list[DQN], streams: list[torch.Tensor] | None = None) -> PopulationLearner:
    """One `PopulationLearner` holding the members' (built or restored) DQNs, member i in row i: their weights,
    optimizer states, counters and per-member hyperparameters (lr, gamma, tau, gradient cap). ``streams``: each
    member's torch RNG state as it was built or restored (`torch_stream`), which NoisyNet members draw from;
    by default the current one for all."""
    first = dqns[0].learner
    opt = [d.learner.optimizer.param_groups[0] for d in dqns]
    shared = {"gamma": [d.learner.gamma for d in dqns], "tau": [d.learner.tau for d in dqns],
              "max_grad_norm": [math.inf if d.learner.max_grad_norm is None else d.learner.max_grad_norm
                                for d in dqns],
              "lr": [g["lr"] for g in opt], "weight_decay": opt[0]["weight_decay"]}
    if isinstance(first.online, QTable):  # SGD over the members' tables
        table = stack_tables([d.learner for d in dqns], **shared)
        for i, dqn in enumerate(dqns):
            import_member(table, i, dqn)
        return table
    shared.update(betas=tuple(opt[0]["betas"]), eps=opt[0]["eps"])
    if first.head != "q" or first.munchausen is not None or not supports(first.online):  # the batched autograd path
        device = first.device
        gens = [_generator(st, device) for st in streams or [torch_stream(device)] * len(dqns)]
        learner: PopulationLearner = stack_functional([d.learner for d in dqns], gens, **shared)
        for i, dqn in enumerate(dqns):
            import_member(learner, i, dqn)
        return learner
    conv = _conv(first.online)
    torso = None if conv is None else OneConv(conv, first.online.channels_last, first.online.pixel_scale)
    online = StackedMLP.stack([layers(d.learner.online) for d in dqns], first.online.activation, torso)
    target = StackedMLP.stack([layers(d.learner.target) for d in dqns], first.online.activation, torso)
    obs_rank = 0 if first.online.n_obs_categories else 3 if torso is not None else 1
    learner = PopulationLearner(online, target, first.online.features, loss=first.loss_name, double=first.double,
                                obs_rank=obs_rank, **shared)
    for i, dqn in enumerate(dqns):
        import_member(learner, i, dqn)
    return learner


def export_member(learner: PopulationLearner, slot: int, dqn: DQN, policy_only: bool = False) -> None:
    """Row ``slot`` into the member's own DQN objects, so that its ``state_dict`` is a solo run's: online and
    target weights, the optimizer's state (as ``torch.optim.Adam`` keeps it), updates and metric sums."""
    dst = dqn.learner
    with torch.no_grad():
        for p, src in zip(_params_of(learner, dst.online), learner.online.member_tensors(slot), strict=True):
            _into(p, src)
        noise = getattr(learner, "noise", None)
        for net, stack in zip((dst.online, dst.target), noise or (), strict=False):
            for name, src in zip(stack.names, stack.member_tensors(slot), strict=True):
                net.get_buffer(name).copy_(src)
        if policy_only:
            return
        for p, src in zip(_params_of(learner, dst.target), learner.target.member_tensors(slot), strict=True):
            _into(p, src)
        if noise is not None and learner.device.type == "cpu":
            # the member's own torch stream, which its checkpoint records as a solo run's records the global one
            torch.set_rng_state(learner.generators[slot].get_state())  # type: ignore[attr-defined]
        if learner.adam.has_state:  # SGD without momentum (the Q-table's) keeps none
            _export_adam(learner, slot, dst)
        dst.updates = int(learner.updates[slot])
        dst._loss_sum.copy_(learner.loss_sum[slot])
        dst._q_sum.copy_(learner.q_sum[slot])
        dst._n = int(learner.n[slot])


class MemberOf(Algorithm):
    """The `Algorithm` a member's lifecycle (`Run`) and `Session` talk to: its own algorithm (``own``, what its solo
    run trains), with its learning state read from the population while it is a member (``slot.index``) and from
    its own objects once it has left. A subclass says how a member's state comes out of its stack (`export_from`)
    and what it logs (`read_metrics`)."""

    def __init__(self, own: Any, learner: Any, slot: Slot) -> None:
        self.own, self.learner, self.slot = own, learner, slot
        self.device = own.device

    def export_from(self, index: int, policy_only: bool = False) -> None:
        """Row ``index`` of the stack into ``own``'s objects (only its policy's weights with ``policy_only``)."""
        raise NotImplementedError

    @property
    def policy(self) -> nn.Module:  # type: ignore[override]
        if self.slot.index is not None:
            self.export_from(self.slot.index, policy_only=True)
        return self.own.policy

    @property
    def updates(self) -> int:
        return int(self.learner.updates[self.slot.index]) if self.slot.index is not None else self.own.updates

    def act(self, obs: np.ndarray, step: int, rng: np.random.Generator,
            mask: np.ndarray | None = None) -> np.ndarray:
        self.policy  # noqa: B018  # the member's current weights into its own network first
        return self.own.act(obs, step, rng, mask)

    def train(self, session: Session) -> None:
        raise RuntimeError("a population member is trained by its population, not on its own")

    def export(self) -> None:
        """Everything into the member's own objects (before a checkpoint, and when it leaves)."""
        if self.slot.index is not None:
            self.export_from(self.slot.index)

    def state_dict(self) -> dict[str, Any]:
        self.export()
        return self.own.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.own.load_state_dict(state)

    def data_state(self) -> dict[str, Any] | None:
        return self.own.data_state()

    def load_data_state(self, state: dict[str, Any] | None, step: int) -> None:
        self.own.load_data_state(state, step)

    def check_finite(self) -> None:
        if self.slot.index is None:
            self.own.check_finite()
        elif not bool(torch.isfinite(self.learner.loss_sum[self.slot.index] + self.learner.q_sum[self.slot.index])):
            raise FloatingPointError("non-finite loss or Q-value")

    def nonfinite_cause(self) -> str | None:
        return self.own.nonfinite_cause()

    def init_from(self, policy_state: dict[str, Any]) -> None:
        self.own.init_from(policy_state)


class MemberAlgo(MemberOf):
    """A DQN member (`MemberOf`): its `DQN`, its learning state in a `PopulationLearner` (or the batched autograd
    path's, or a Q-table stack)."""

    @property
    def dqn(self) -> DQN:
        return self.own

    def export_from(self, index: int, policy_only: bool = False) -> None:
        export_member(self.learner, index, self.own, policy_only=policy_only)

    def read_metrics(self, step: int) -> dict[str, float]:
        out = {M.EPSILON: self.dqn.schedule(step),  # as the solo loop logs them
               M.LEARNING_RATE: float(self.dqn.learner.optimizer.param_groups[0]["lr"])}
        if self.slot.index is None:
            learned = self.dqn.learner.read_metrics()
        else:
            self.check_finite()
            learned = self.learner.read_metrics(self.slot.index)
        if learned is not None:
            out[M.TD_LOSS], out[M.Q_VALUES] = learned["td_loss"], learned["q_values"]
        return out

