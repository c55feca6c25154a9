"""The batched autograd path: any network of the DQN family that the hand-written stack does not cover.

Dueling heads, C51 and QR-DQN's distributional heads, Nature's CNN and normalization layers take autograd in a
solo run (`dqnrun.algos.dqn.learner.Learner`, its ``_loss_terms``). A population runs that same loss code, once
for all its members: the members' parameters are stacked (``flat (K, P)``, as `StackedMLP` stacks plain MLPs, so
the batched Adam, the gradient caps, the target syncs and members leaving are shared with it), and
``torch.func.vmap(torch.func.grad(loss))`` runs member 0's modules, reparametrized with each member's row
(``torch.func.functional_call``), over the member axis: one batched forward and backward for all of them, each
member's loss the one its solo run computes (tests/unit/test_population.py checks 10 updates to 1e-5).

IQN's fractions are drawn outside the batched step, each member's from its own generator, as its solo step draws
them. NoisyNet layers draw their noise from the global torch stream in a solo run; in a population each member draws
from a generator holding that member's own stream (its state when the member was built or restored, written back
into its checkpoints), into stacked noise buffers, at the points of the update where its solo run draws: every
gradient step, online layers then target layers, after the burst's targets where a solo run computes those first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from dqnrun.algos.dqn.targets import munchausen_target, td_target
from dqnrun.networks import NoisyLinear
from dqnrun.population.stacked import PopulationLearner, subset_of
from dqnrun.replay import Batch

if TYPE_CHECKING:
    from dqnrun.algos.dqn.learner import Learner


class StackedParams:
    """K copies of one network's parameters: ``flat (K, P)`` and a view ``(K, *shape)`` per named parameter, in
    ``named_parameters()`` order (the layout of `StackedMLP` that the shared parts of a population read:
    ``flat``, ``rows``, ``like``, ``keep``, ``member_tensors``)."""

    conv = None

    def __init__(self, flat: torch.Tensor, names: Sequence[str], shapes: Sequence[torch.Size]) -> None:
        self.names, self.shapes = list(names), [torch.Size(s) for s in shapes]
        self.size = sum(s.numel() for s in self.shapes)
        if flat.dim() != 2 or flat.shape[1] != self.size:
            raise ValueError(f"flat parameters must be (K, {self.size}), got {tuple(flat.shape)}")
        self.flat = flat
        self._bind()

    @classmethod
    def from_rows(cls, names: Sequence[str], rows: Sequence[Sequence[torch.Tensor]]) -> StackedParams:
        """Each member's tensors (one list per member, in ``names`` order) copied into a fresh ``(K, P)`` stack."""
        flat = torch.stack([torch.cat([t.detach().reshape(-1) for t in row]) for row in rows])
        return StackedParams(flat.contiguous(), names, [t.shape for t in rows[0]])

    @classmethod
    def stack(cls, nets: Sequence[nn.Module]) -> StackedParams:
        names = [n for n, _ in nets[0].named_parameters()]
        return cls.from_rows(names, [list(net.parameters()) for net in nets])

    @classmethod
    def noise_of(cls, nets: Sequence[nn.Module]) -> StackedParams | None:
        """The members' NoisyNet factors, stacked: each `NoisyLinear`'s ``eps_in`` and ``eps_out``, in ``modules()``
        order (the order ``reset_noise`` draws them); None for a network without noise."""
        names = [f"{n}.{b}" for n, m in nets[0].named_modules() if isinstance(m, NoisyLinear)
                 for b in ("eps_in", "eps_out")]
        if not names:
            return None
        return cls.from_rows(names, [[net.get_buffer(n) for n in names] for net in nets])

    def _bind(self) -> None:
        k, off = self.k, 0
        self.views = []
        for s in self.shapes:
            self.views.append(self.flat[:, off:off + s.numel()].view(k, *s))
            off += s.numel()
        self.rows = [self.flat[m] for m in range(k)]

    @property
    def k(self) -> int:
        return self.flat.shape[0]

    def like(self, flat: torch.Tensor) -> StackedParams:
        return StackedParams(flat, self.names, self.shapes)

    def keep(self, members: Sequence[int]) -> None:
        self.flat = self.flat[list(members)].contiguous()
        self._bind()

    def member_tensors(self, m: int) -> list[torch.Tensor]:
        """Member ``m``'s parameters as views, in ``parameters()`` order and shapes."""
        return [v[m] for v in self.views]

    def params(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return {prefix + n: v for n, v in zip(self.names, self.views, strict=True)}


_ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.ELU, nn.GELU)  # parameter-free: applied to (K, E, H) as they are


def _step(m: nn.Module, name: str) -> tuple[Any, ...] | None:
    """One layer of `StackedQ`'s plan: what it computes and its parameters' names; None for a layer it cannot batch."""
    if type(m) is nn.Conv2d and m.bias is not None and m.groups == 1 and m.padding_mode == "zeros" \
            and not isinstance(m.padding, str):
        return ("conv", f"{name}.weight", f"{name}.bias", m.stride, m.padding, m.dilation)
    if type(m) is nn.Linear:
        return ("linear", f"{name}.weight", f"{name}.bias")
    if type(m) is nn.LayerNorm and m.elementwise_affine and m.bias is not None:
        return ("norm", f"{name}.weight", f"{name}.bias", tuple(m.normalized_shape), m.eps)
    if type(m) in _ACTIVATIONS:
        return ("act", m)
    return None


class StackedQ:
    """The members' Q-values ``(K, E, *obs) -> (K, E, A)`` with batched products, for the networks whose forward is
    a plain ``Sequential`` of Linear, LayerNorm and activation layers under the Q-value head or a dueling one (no
    noise or distributional head), after a torso of convolutions, normalizations and activations or none: PQN's
    LayerNorm MLPs, DQN's with ``network.norm``, a dueling head or another activation, Nature's CNN (Pong).

    The members' convolutions run as one grouped convolution per layer, member k's images in input channels
    ``k*C:(k+1)*C`` and its filters in group k (what ``vmap`` makes of a convolution with batched weights, without
    functorch's per-operation cost); fully connected layers are one ``baddbmm`` each.

    ``vmap`` over ``functional_call`` costs ~450 us a call on a CPU core whatever K (a solo forward of PQN's CartPole
    net: 65 us), so acting with it every env step made a PQN population of 2 slower than one solo run; this costs
    what a few solo forwards do. It is differentiable: the batched update of a plain DQN loss runs through it
    (`FuncPopulationLearner`). `of` returns None for other networks (vmap acts for them)."""

    def __init__(self, net: nn.Module, torso: list[tuple[Any, ...]], plan: list[tuple[Any, ...]]) -> None:
        self.net, self.torso, self.plan = net, torso, plan

    @classmethod
    def of(cls, net: nn.Module) -> StackedQ | None:
        from dqnrun.networks import QNetwork

        if not (isinstance(net, QNetwork) and net.head_kind == "q" and not net.noisy and net.embedding is None):
            return None
        torso = [_step(m, f"torso.{i}") for i, m in enumerate(net.torso if net.torso is not None else ())]
        if net.dueling:  # the body's layers, then Q = V + A - mean A from its two linear heads
            plan = [_step(m, f"body.{i}") for i, m in enumerate(net.body)]
            plan.append(("dueling",) if type(net.value) is nn.Linear and type(net.advantage) is nn.Linear else None)
        else:
            plan = [_step(m, f"net.{i}") for i, m in enumerate(net.net)]
        if any(step is None for step in torso + plan):
            return None
        return cls(net, torso, plan)

    def _torso(self, params: dict[str, torch.Tensor], obs: torch.Tensor) -> torch.Tensor:
        """Images ``(K, E, *obs)`` -> the members' flattened torso outputs ``(K, E, F)``, as `QNetwork.features`."""
        k, e = obs.shape[:2]
        x = self.net.images(obs.reshape(k * e, *obs.shape[2:]))  # type: ignore[operator]
        x = x.reshape(k, e, *x.shape[1:]).transpose(0, 1).reshape(e, k * x.shape[1], *x.shape[2:])  # (E, K*C, H, W)
        for step in self.torso:
            if step[0] == "conv":
                w = params[step[1]]
                x = nn.functional.conv2d(x, w.reshape(-1, *w.shape[2:]), params[step[2]].reshape(-1), step[3],
                                         step[4], step[5], groups=k)
            elif step[0] == "norm":
                y = nn.functional.layer_norm(x.view(e, k, *step[3]), step[3], None, None, step[4])
                x = torch.addcmul(params[step[2]], y, params[step[1]]).view(e, -1, *x.shape[2:])
            else:
                x = step[1](x)
        return x.reshape(e, k, -1).transpose(0, 1)

    def __call__(self, params: dict[str, torch.Tensor], obs: torch.Tensor) -> torch.Tensor:
        k, e = obs.shape[:2]
        if self.net.torso is not None:
            x = self._torso(params, obs)
        else:
            x = self.net.features(obs.reshape(k * e, *obs.shape[2:])).view(k, e, -1)  # type: ignore[operator]
        for step in self.plan:
            if step[0] == "linear":
                x = _linear(params, step[1], step[2], x)
            elif step[0] == "norm":
                x = nn.functional.layer_norm(x, step[3], None, None, step[4])
                x = torch.addcmul(params[step[2]].unsqueeze(1), x, params[step[1]].unsqueeze(1))
            elif step[0] == "dueling":  # (K, E, 1) and (K, E, A) from the body's output, as `QNetwork._fc`
                v = _linear(params, "value.weight", "value.bias", x)
                a = _linear(params, "advantage.weight", "advantage.bias", x)
                x = v + a - a.mean(dim=-1, keepdim=True)
            else:
                x = step[1](x)
        return x


def _linear(params: dict[str, torch.Tensor], weight: str, bias: str, x: torch.Tensor) -> torch.Tensor:
    """Every member's fully connected layer at once: ``x (K, E, in) -> (K, E, out)``."""
    return torch.baddbmm(params[bias].unsqueeze(1), x, params[weight].transpose(1, 2))


class _Pair(nn.Module):
    """The solo learner's online and target networks as one module, so that one ``functional_call`` swaps both
    for a member's rows while the learner's own loss code runs."""

    def __init__(self, online: nn.Module, target: nn.Module) -> None:
        super().__init__()
        self.online, self.target = online, target

    def forward(self, fn: Any, *args: Any) -> Any:
        return fn(*args)


class FuncPopulationLearner(PopulationLearner):
    """`PopulationLearner` for networks outside the hand-written stack: the update and acting are member 0's solo
    `Learner` code under ``vmap``; everything else (Adam, caps, syncs, metrics, members leaving) is shared.

    Args:
        learners: the members' own learners; member 0's modules are the templates every member's row runs through.
        online, target: the members' parameters, stacked.
        gamma, tau, max_grad_norm, lr, betas, eps, weight_decay: as `PopulationLearner`.
    """

    def __init__(self, learners: Sequence[Learner], online: StackedParams, target: StackedParams,
                 generators: Sequence[torch.Generator] | None = None, **kwargs: Any) -> None:
        self.members = list(learners)  # each member's own learner, for what it draws from its own streams (IQN)
        self.solo = solo = learners[0]
        self.pair = _Pair(solo.online, solo.target)
        self._stacked_q = StackedQ.of(solo.online)
        # NoisyNet: the online and target noise factors of every member, and each member's torch stream
        online_noise = StackedParams.noise_of([ln.online for ln in learners])
        target_noise = StackedParams.noise_of([ln.target for ln in learners])
        self.noise = None if online_noise is None else (online_noise, target_noise)
        if self.noise is not None and (generators is None or len(generators) != len(learners)):
            raise ValueError("NoisyNet members need a torch generator each (their own noise streams)")
        self.generators = list(generators) if self.noise is not None else None  # type: ignore[arg-type]
        super().__init__(online, target, features=lambda x: x, loss=solo.loss_name, double=solo.double,  # type: ignore[arg-type]
                         **kwargs)
        # a plain Q-regression (DQN's TD loss, Double DQN, n-step, prioritized weights) over a network the batched
        # products cover: one differentiable forward of every member and one backward (`_grouped_step`), not vmap
        plain = (solo.head == "q" and solo.munchausen is None and self.noise is None and not solo.compiled
                 and solo.loss_name in ("huber", "mse", "half_sse"))
        self._grouped = self._stacked_q if plain else None

    @staticmethod
    def parameters_of(net: nn.Module) -> list[torch.Tensor]:
        """A member network's parameters in the stack's order (`dqnrun.population.member` copies by it)."""
        return list(net.parameters())

    # --- acting -----------------------------------------------------------------------------------------
    def greedy(self, obs: np.ndarray, rows: Sequence[int] | None = None, cache: dict | None = None) -> np.ndarray:
        """obs ``(K, E, *obs_shape)`` -> argmax_a Q ``(K, E)``, each member's Q its solo network's forward (with its
        own current noise, NoisyNet's, except under `evaluation`); ``rows`` and ``cache`` as for
        `PopulationLearner.greedy`."""
        subset = self._subset(rows)

        def rows_of(s: StackedParams) -> StackedParams:
            return s if subset is None else subset_of(cache, id(s), subset, lambda: s.like(s.flat[subset]))

        noise = None if self.noise is None else rows_of(self.noise[0])
        with torch.inference_mode():
            return q_of(self.solo.online, self._stacked_q, rows_of(self.online), obs, self.device,  # type: ignore[arg-type]
                        noise).argmax(-1).cpu().numpy()

    @contextmanager
    def evaluation(self) -> Iterator[None]:
        """Evaluating: the networks in eval mode (NoisyNet layers act on their mean weights), as `Run.evaluate`."""
        self.solo.online.eval()
        try:
            yield
        finally:
            self.solo.online.train()

    def _reset_noise(self, active: Sequence[bool]) -> None:
        """NoisyNet: fresh factors for every active member, from its own stream, in its solo run's order (online
        layers, then target layers; ``eps_in`` then ``eps_out`` each)."""
        assert self.noise is not None and self.generators is not None
        for m, on in enumerate(active):
            if on:
                for stack in self.noise:
                    for v in stack.views:
                        v[m].copy_(NoisyLinear.noise(v.shape[1], self.device, self.generators[m]))

    @torch.no_grad()
    def sync_targets(self, members: Sequence[int], hard: bool = False) -> None:
        """As `PopulationLearner.sync_targets`; the target's noise factors become the online's too, as a solo
        run's sync copies every buffer (`Learner.sync_target`)."""
        super().sync_targets(members, hard)
        if self.noise is not None:
            for m in members:
                self.noise[1].rows[m].copy_(self.noise[0].rows[m])

    @torch.no_grad()
    def _burst_targets(self, batch: Batch) -> torch.Tensor:
        """TD targets ``(K, G, B)`` of a whole burst from the target nets as they are before it (`Learner.targets`,
        each member's under ``vmap``): a noisy solo run computes them before its first fresh noise."""
        k, g, b = batch.action.shape
        discount = self._gamma.expand(k, g, b) if batch.discount is None else batch.discount

        def member(p: dict[str, torch.Tensor], *fields: torch.Tensor) -> torch.Tensor:
            return functional_call(self.pair, p, (lambda: self.solo.targets(Batch(*fields)),))

        assert self.noise is not None
        params = {**self.target.params("target."), **self.noise[1].params("target.")}
        return vmap(member)(params, batch.obs, batch.action, batch.reward, batch.next_obs, batch.terminated,
                            discount)

    # --- learning ---------------------------------------------------------------------------------------
    def _taus(self, b: int, active: Sequence[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        """IQN's fractions for this step, (K, B, N) and (K, B, N'): each updating member's drawn from its own
        generator (its solo learner's ``tau_gen``, saved in its checkpoints), as its solo step draws them; a member
        not updating draws nothing (zeros)."""
        drawn = [ln._sample_taus(b) if on else None for ln, on in zip(self.members, active, strict=True)]
        ref = next(d for d in drawn if d is not None)
        return tuple(torch.stack([d[i] if d is not None else torch.zeros_like(ref[i]) for d in drawn])  # type: ignore[return-value]
                     for i in (0, 1))

    def keep(self, members: Sequence[int]) -> None:
        self.members = [self.members[m] for m in members]
        if self.noise is not None:
            for stack in self.noise:
                stack.keep(members)
            self.generators = [self.generators[m] for m in members]  # type: ignore[index]
        super().keep(members)

    def targets(self, batch: Batch) -> torch.Tensor | None:
        return None  # each member's loss computes its own target inside the batched step

    def _member_loss(self, p: dict[str, torch.Tensor], p_target: dict[str, torch.Tensor], obs: torch.Tensor,
                     action: torch.Tensor, reward: torch.Tensor, next_obs: torch.Tensor, terminated: torch.Tensor,
                     gamma: torch.Tensor, weights: torch.Tensor | None,
                     taus: tuple[torch.Tensor, torch.Tensor] | None,
                     y_burst: torch.Tensor | None) -> tuple[torch.Tensor, tuple[Any, ...]]:
        solo = self.solo

        def terms() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            y = y_burst
            if y is None and not solo.distributional:  # as `Learner.targets` (or, with double, its per-step target)
                with torch.no_grad():
                    next_q = solo.target(next_obs)
                    if solo.munchausen is not None:
                        y = munchausen_target(reward, terminated, gamma, solo.target(obs), action, next_q,
                                              *solo.munchausen)
                    else:
                        y = td_target(reward, terminated, next_q, gamma, solo.online(next_obs) if solo.double else None)
            return solo._loss_terms(obs, action, reward, next_obs, terminated, gamma, weights, y, taus)

        loss, q_mean, td_abs = functional_call(self.pair, {**p, **p_target}, (terms,))
        return loss, (loss.detach(), q_mean, td_abs)

    @torch.no_grad()
    def update(self, batch: Batch, active: Sequence[bool] | None = None) -> list[np.ndarray | None]:
        """G gradient steps on a ``(K, G, B)`` burst for the ``active`` members; |TD error| (K, B) per step for
        prioritized replay."""
        k, g_steps, _ = batch.action.shape
        act = [True] * k if active is None else list(active)
        if self._grouped is not None:
            return [self._grouped_step(batch, g, act) for g in range(g_steps)]
        iqn = self.solo.tau_gen is not None
        solo = self.solo
        y_burst = (self._burst_targets(batch) if self.noise is not None and not (solo.double or solo.distributional)
                   else None)  # a noisy solo run's burst targets, from its target noise before the burst
        step = vmap(grad(self._member_loss, has_aux=True),
                    in_dims=(0, 0, 0, 0, 0, 0, 0, 0, None if batch.weights is None else 0, 0 if iqn else None,
                             None if y_burst is None else 0))
        out: list[np.ndarray | None] = []
        for g in range(g_steps):
            if self.noise is not None:
                self._reset_noise(act)
            gamma = self._gamma.view(-1) if batch.discount is None else batch.discount[:, g]
            weights = None if batch.weights is None else batch.weights[:, g]
            taus = self._taus(batch.action.shape[2], act) if iqn else None
            fixed = self.target.params("target.")  # what the step does not differentiate: the target, the noise
            if self.noise is not None:
                fixed = {**fixed, **self.noise[0].params("online."), **self.noise[1].params("target.")}
            with torch.enable_grad():
                grads, (loss, q_mean, td_abs) = step(self.online.params("online."), fixed,
                                                     batch.obs[:, g], batch.action[:, g],
                                                     batch.reward[:, g], batch.next_obs[:, g],
                                                     batch.terminated[:, g], gamma, weights, taus,
                                                     None if y_burst is None else y_burst[:, g])
            for view, name in zip(self.grad.views, self.grad.names, strict=True):  # type: ignore[attr-defined]
                view.copy_(grads["online." + name])
            self._step(loss, q_mean, act)
            out.append(td_abs.cpu().numpy() if weights is not None else None)
        return out

    def _grouped_step(self, batch: Batch, g: int, act: list[bool]) -> np.ndarray | None:
        """Gradient step ``g`` of a burst for every member at once through `StackedQ`: the TD targets from the
        target networks (Double DQN's a* from the online ones), each member's loss as its solo ``_loss_terms``
        reduces it, and d(sum of the members' losses)/d(params) by one backward (a member's loss depends on its
        row only, so each row's gradient is its own loss's)."""
        solo, q_fn = self.solo, self._grouped
        assert q_fn is not None
        gamma = self._gamma.view(-1, 1) if batch.discount is None else batch.discount[:, g]
        obs, action = batch.obs[:, g], batch.action[:, g]
        weights = None if batch.weights is None else batch.weights[:, g]
        next_obs = batch.next_obs[:, g]
        y = td_target(batch.reward[:, g], batch.terminated[:, g], q_fn(self.target.params(), next_obs), gamma,  # type: ignore[arg-type]
                      q_fn(self.online.params(), next_obs) if solo.double else None)

        def loss_of(q_sa: torch.Tensor) -> torch.Tensor:  # as the solo ``_loss_terms`` reduces it
            per_sample = solo.loss_fn(q_sa, y)
            if weights is not None:
                per_sample = per_sample * weights
            return per_sample.sum(1) if solo.loss_name == "half_sse" else per_sample.mean(1)

        loss, q_sa = grouped_gradients(q_fn, self.online, self.grad, obs, action, loss_of)
        self._step(loss, q_sa.mean(1), act)
        return (q_sa - y).abs().cpu().numpy() if weights is not None else None


def grouped_gradients(q_fn: StackedQ, params: StackedParams, into: StackedParams, obs: torch.Tensor,
                      action: torch.Tensor, loss_of: Callable[[torch.Tensor], torch.Tensor],
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every member's gradient of its own loss with one forward and one backward: Q(s, a) ``(K, B)`` of ``obs``
    ``(K, B, *obs)`` and ``action`` through ``q_fn`` with ``params``, the members' losses ``loss_of(q_sa)`` ``(K,)``,
    and d(their sum)/d(params) into ``into``'s views (a member's loss depends on its own row only, so each row gets
    its own loss's gradient). Returns the losses and Q(s, a), detached.

    One leaf per parameter view: a leaf over the whole ``(K, P)`` tensor would make every view's backward a zeroed
    ``(K, P)`` tensor (1.7M floats per view for Nature's CNN)."""
    leaves = [v.detach().requires_grad_() for v in params.views]
    with torch.enable_grad():
        q_sa = q_fn(dict(zip(params.names, leaves, strict=True)), obs).gather(2, action.unsqueeze(2)).squeeze(2)
        loss = loss_of(q_sa)
        gradients = torch.autograd.grad(loss.sum(), leaves)
    for view, gradient in zip(into.views, gradients, strict=True):
        view.copy_(gradient)
    return loss.detach(), q_sa.detach()


def q_of(net: nn.Module, stacked: StackedQ | None, params: StackedParams, obs: Any,
         device: torch.device, noise: StackedParams | None = None) -> torch.Tensor:
    """Q ``(K, E, A)`` of each member's rows of ``obs`` ``(K, E, *obs_shape)``: batched products where the network
    allows (`StackedQ`), else ``net``'s own forward under ``vmap`` with each member's parameters (and NoisyNet
    factors, ``noise``) swapped in."""
    x = torch.as_tensor(obs, device=device)
    if stacked is not None:
        return stacked(params.params(), x)

    def q(p: dict[str, torch.Tensor], o: torch.Tensor) -> torch.Tensor:
        return functional_call(net, p, (o,))

    return vmap(q)({**params.params(), **({} if noise is None else noise.params())}, x)


def stack_functional(learners: Sequence[Learner], generators: Sequence[torch.Generator] | None = None,
                     **kwargs: Any) -> FuncPopulationLearner:
    """The members' learners (built or restored) -> one `FuncPopulationLearner`, member i in row i (weights and
    NoisyNet factors: `dqnrun.population.member.import_member` brings in the rest); ``generators``: each member's
    torch stream, which NoisyNet members draw their noise from."""
    online = StackedParams.stack([ln.online for ln in learners])
    target = StackedParams.stack([ln.target for ln in learners])
    return FuncPopulationLearner(learners, online, target, generators, **kwargs)
