"""K fully connected Q-networks of one shape as stacked parameters, and DQN's update for all of them at once.

A population's members share a network architecture, so member k's layer i is slice k of one tensor
``W_i (K, out_i, in_i)``: a forward pass is one batched matrix product per layer (``baddbmm``), a backward two
(``bmm``). All parameters of a member live in one row of a flat ``(K, P)`` tensor (the per-layer tensors are views
of it), in the order of the hand-written solo update (`dqnrun.fastpath.mlp.ManualMLPGradient`: weight, bias per
layer), so that gradient clipping is one norm per row and Adam's step is one fused kernel call per distinct
learning rate over the members' rows (`BatchedAdam`), the very kernel a solo run calls through
`dqnrun.fastpath.LeanStep`, element for element.

MinAtar's network (one 3x3 convolution and a ReLU before the fully connected layers) is stacked the way the solo
hand-written update computes it (`dqnrun.fastpath.mlp`): the convolution is one more batched matrix product, of the
members' filters ``(K, F, C*kh*kw)`` with the unfolded image patches ``(K, N*P, C*kh*kw)`` (`OneConv`); its
parameters sit at the end of each member's row, after the fully connected layers', as in the solo update.

What may differ between members: the learning rate, gamma (a per-sample discount for n-step returns), the
polyak tau, the gradient-norm cap (``inf`` for none). Everything else is the population's: the architecture, the
loss (huber | mse), double DQN, the batch size, Adam's betas, eps and weight decay.

Shapes: member batches are ``(K, B, ...)``, or ``(K, G, B, ...)`` for a burst of G gradient steps; Q-values
``(K, B, A)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch

from dqnrun.algos.dqn.targets import td_target
from dqnrun.fastpath.mlp import gather_patches, gather_patches_numpy, patch_index
from dqnrun.replay import Batch

# activation -> backward through it from the upstream gradient and the activation's output (as the solo path)
_BACKWARD = {
    "relu": lambda grad, h: torch.ops.aten.threshold_backward(grad, h, 0),
    "tanh": lambda grad, h: torch.ops.aten.tanh_backward(grad, h),
}


class OneConv:
    """A one-convolution torso (MinAtar's: F filters, then a ReLU) shared in shape by every member: how image
    observations unfold into patches, position-major then (C, kh, kw), the order of the filters' flattening.

    Args:
        conv: one member's convolution (its kernel size, stride and channels; its weights are not kept).
        channels_last: observations are (H, W, C).
        scale: a factor on the observations (None: none), as the network's ``pixel_scale``.
    """

    def __init__(self, conv: torch.nn.Conv2d, channels_last: bool, scale: float | None) -> None:
        self.module = conv
        self.filters = int(conv.out_channels)
        self.fan_in = int(conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1])
        self.weight_shape = tuple(conv.weight.shape)
        self.channels_last, self.scale = bool(channels_last), scale
        self.patches = 0  # positions per image, known once an observation has been seen
        self._index: tuple[tuple[int, ...], np.ndarray, dict[torch.device, torch.Tensor]] | None = None

    def index(self, image: tuple[int, ...]) -> np.ndarray:
        """The (P*C*kh*kw,) gather index into one flattened observation of shape ``image``."""
        if self._index is None or self._index[0] != image:
            idx = patch_index(image, self.channels_last, self.module)  # type: ignore[arg-type]
            self._index = (image, idx, {})
            self.patches = len(idx) // self.fan_in
        return self._index[1]

    def unfold(self, obs: torch.Tensor, k: int) -> torch.Tensor:
        """Observations ``(K*N, *image)`` -> float patches ``(K, N*P, C*kh*kw)``."""
        self.index(tuple(obs.shape[1:]))
        cache = self._index[2]  # type: ignore[index]
        idx = cache.get(obs.device)
        if idx is None:
            idx = cache[obs.device] = torch.from_numpy(self._index[1]).to(obs.device)  # type: ignore[index]
        return gather_patches(obs, idx, self.fan_in, self.scale).view(k, -1, self.fan_in)

    def unfold_numpy(self, obs: np.ndarray) -> np.ndarray:
        """Observations ``(K, E, *image)`` -> float32 patches ``(K, E*P, C*kh*kw)`` (numpy)."""
        k, e = obs.shape[:2]
        idx = self.index(tuple(obs.shape[2:]))
        flat = obs.reshape(k * e, *obs.shape[2:])
        return gather_patches_numpy(flat, idx, self.fan_in, self.scale).reshape(k, -1, self.fan_in)


class StackedMLP:
    """K MLPs ``in -> hidden... -> A`` stacked: ``flat (K, P)``, with views ``weights[i] (K, out, in)`` and
    ``biases[i] (K, out)``; with a one-convolution torso (`OneConv`), also ``conv_w (K, F, C*kh*kw)`` and
    ``conv_b (K, F)`` at the end of each row.

    Args:
        flat: (K, P) float32 parameters, member k's in row k (weight then bias of each layer, row-major, then the
            convolution's filters and bias).
        shapes: ``(out_i, in_i)`` of each fully connected layer, input layer first.
        activation: ``relu`` | ``tanh``, after every layer but the last.
        conv: the torso, or None (the input is the features of `PopulationLearner`'s ``features``).
    """

    def __init__(self, flat: torch.Tensor, shapes: Sequence[tuple[int, int]], activation: str,
                 conv: OneConv | None = None) -> None:
        self.shapes = [(int(o), int(i)) for o, i in shapes]
        self.activation = activation
        self.relu = activation == "relu"
        self.conv = conv
        self.size = sum(o * i + o for o, i in self.shapes)
        if conv is not None:
            self.size += conv.filters * conv.fan_in + conv.filters
        if flat.dim() != 2 or flat.shape[1] != self.size:
            raise ValueError(f"flat parameters must be (K, {self.size}), got {tuple(flat.shape)}")
        self.flat = flat
        self._bind()

    def frozen(self, members: Sequence[int]) -> StackedMLP:
        """A copy of ``members``' weights (in this order) that stays as it is: an evaluation's, off the CPU or where
        torch runs more than one thread (`PopulationLearner.greedy`)."""
        return self.like(self.flat[list(members)])

    @property
    def in_features(self) -> int:
        """Width of one input row: a patch (with a torso), else the first layer's input."""
        return self.conv.fan_in if self.conv is not None else self.shapes[0][1]

    def like(self, flat: torch.Tensor) -> StackedMLP:
        """Views of the same layout over another (K, P) tensor (Adam's moments, gradients)."""
        return StackedMLP(flat, self.shapes, self.activation, self.conv)

    @property
    def k(self) -> int:
        return self.flat.shape[0]

    @classmethod
    def stack(cls, layers: Sequence[Sequence[tuple[torch.Tensor, torch.Tensor]]], activation: str,
              conv: OneConv | None = None) -> StackedMLP:
        """From each member's ``[(weight, bias), ...]`` (fully connected layers, then the convolution's filters and
        bias where there is a ``conv``): a fresh (K, P) tensor holding copies."""
        n_fc = len(layers[0]) - (1 if conv is not None else 0)
        shapes = [tuple(w.shape) for w, _ in layers[0][:n_fc]]
        flat = torch.stack([torch.cat([t.detach().reshape(-1) for wb in member for t in wb]) for member in layers])
        return cls(flat.contiguous(), shapes, activation, conv)  # type: ignore[arg-type]

    def _bind(self) -> None:
        """Per-layer views of ``flat`` (rebuilt whenever ``flat`` is replaced)."""
        k, off = self.k, 0
        self.weights, self.biases = [], []
        for o, i in self.shapes:
            self.weights.append(self.flat[:, off:off + o * i].view(k, o, i))
            off += o * i
            self.biases.append(self.flat[:, off:off + o])
            off += o
        # what each layer's product takes, made once: a forward is then one baddbmm per layer (3 ops fewer each)
        self._w_t = [w.transpose(1, 2) for w in self.weights]
        self._b_row = [b.unsqueeze(1) for b in self.biases]
        if self.conv is not None:
            f, n = self.conv.filters, self.conv.fan_in
            self.conv_w = self.flat[:, off:off + f * n].view(k, f, n)
            self.conv_b = self.flat[:, off + f * n:off + f * n + f]
        self.rows = [self.flat[m] for m in range(k)]  # contiguous (P,) rows: one member's parameters

    def keep(self, members: Sequence[int]) -> None:
        """Keep only ``members`` (slots, in this order): the others leave the population."""
        self.flat = self.flat[list(members)].contiguous()
        self._bind()

    def member_tensors(self, m: int) -> list[torch.Tensor]:
        """Member ``m``'s parameters as views ``[W0, b0, W1, b1, ..., conv filters (F, C*kh*kw), conv bias]`` (the
        solo hand-written update's order)."""
        out = [t for w, b in zip(self.weights, self.biases, strict=True) for t in (w[m], b[m])]
        if self.conv is not None:
            out += [self.conv_w[m], self.conv_b[m]]
        return out

    def forward(self, x: torch.Tensor, acts: list[torch.Tensor] | None = None,
                conv_acts: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Features ``x (K, N, in)`` (with a torso: patches ``(K, N*P, C*kh*kw)``) -> Q ``(K, N, A)``, no autograd.
        With ``acts``, each layer's input is appended (what the backward needs); with ``conv_acts``, the torso's
        patches and output."""
        h = x
        if self.conv is not None:
            k, f = x.shape[0], self.conv.filters
            hc = torch.baddbmm(self.conv_b.unsqueeze(1), x, self.conv_w.transpose(1, 2)).relu_()  # (K, N*P, F)
            if conv_acts is not None:
                conv_acts += [x, hc]
            h = hc.view(k, -1, self.conv.patches, f).transpose(2, 3).reshape(k, -1, f * self.conv.patches)
        last = len(self.weights) - 1
        for i, (w_t, b) in enumerate(zip(self._w_t, self._b_row, strict=True)):
            if acts is not None:
                acts.append(h)
            h = torch.baddbmm(b, h, w_t)
            if i < last:
                h = h.relu_() if self.relu else h.tanh_()
        return h

    def numpy_layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """``[(W^T (K, in, out), b (K, 1, out))]`` as numpy views of the live parameters (CPU only); the torso's
        filters, ``(K, C*kh*kw, F)`` and ``(K, 1, F)``, first where there is one."""
        out = [(w.detach().numpy().transpose(0, 2, 1), b.detach().numpy()[:, None, :])
               for w, b in zip(self.weights, self.biases, strict=True)]
        if self.conv is not None:
            out.insert(0, (self.conv_w.detach().numpy().transpose(0, 2, 1), self.conv_b.detach().numpy()[:, None, :]))
        return out


def subset_of(cache: dict | None, kind: Any, members: Sequence[int], make: Callable[[], Any]) -> Any:
    """``make()`` (``members``' weights, copied out of the stack), kept in ``cache`` where there is a cache: an
    evaluation asks for the same members' weights at every env step until one of them is done. One subset is kept
    per ``kind`` of copy; a new subset (fewer members left) replaces it."""
    if cache is None:
        return make()
    held = cache.get(kind)
    if held is None or held[0] != list(members):
        held = cache[kind] = (list(members), make())
    return held[1]


def count_update(learner: Any, loss: torch.Tensor, q_mean: torch.Tensor, active: Sequence[bool]) -> None:
    """After a batched gradient step: count it for the ``active`` members (``learner.n``, ``learner.updates``) and
    add their loss and mean Q ``(K,)`` to the sums read at logging time (``loss_sum``, ``q_sum``); the others add
    nothing."""
    if not all(active):
        mask = torch.tensor(list(active), device=loss.device)
        loss, q_mean = torch.where(mask, loss, 0.0), torch.where(mask, q_mean, 0.0)
    learner.loss_sum += loss
    learner.q_sum += q_mean
    on = np.asarray(active, dtype=np.int64)
    learner.n += on
    learner.updates += on


class BatchedAdam:
    """Adam for stacked parameters with a learning rate per member: the fused kernel a solo run's lean step calls
    (``torch._fused_adam_``), once per distinct learning rate, over those members' (P,) rows. Element for element
    the same arithmetic as each member's own ``torch.optim.Adam(fused=True)``.

    State: ``exp_avg``, ``exp_avg_sq`` (K, P) and one step count per member (a float32 scalar tensor, as torch
    keeps it). A member that has not stepped yet has zeros everywhere, which is what a fresh Adam starts from.
    """

    has_state = True  # per-member moments and steps, which a member's checkpoint carries

    def __init__(self, k: int, size: int, lr: Sequence[float], betas: tuple[float, float], eps: float,
                 weight_decay: float, device: torch.device) -> None:
        self.exp_avg = torch.zeros(k, size, device=device)
        self.exp_avg_sq = torch.zeros(k, size, device=device)
        self.steps = [torch.zeros((), dtype=torch.float32, device=device) for _ in range(k)]
        self.lr = [float(x) for x in lr]
        self.betas, self.eps, self.weight_decay = (float(betas[0]), float(betas[1])), float(eps), float(weight_decay)
        self._bind()

    def _bind(self) -> None:
        self._avg = [self.exp_avg[m] for m in range(self.exp_avg.shape[0])]
        self._sq = [self.exp_avg_sq[m] for m in range(self.exp_avg_sq.shape[0])]
        groups: dict[float, list[int]] = {}
        for m, lr in enumerate(self.lr):
            groups.setdefault(lr, []).append(m)
        self.groups = groups

    def keep(self, members: Sequence[int]) -> None:
        idx = list(members)
        self.exp_avg, self.exp_avg_sq = self.exp_avg[idx].contiguous(), self.exp_avg_sq[idx].contiguous()
        self.steps = [self.steps[m] for m in idx]
        self.lr = [self.lr[m] for m in idx]
        self._bind()

    @torch.no_grad()
    def step(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], active: Sequence[bool]) -> None:
        """One Adam step for the ``active`` members; ``params``/``grads``: each member's (P,) row."""
        beta1, beta2 = self.betas
        for lr, members in self.groups.items():
            ms = [m for m in members if active[m]]
            if not ms:
                continue
            steps = [self.steps[m] for m in ms]
            torch._foreach_add_(steps, 1)
            torch._fused_adam_([params[m] for m in ms], [grads[m] for m in ms], [self._avg[m] for m in ms],
                               [self._sq[m] for m in ms], [], steps, amsgrad=False, lr=lr, beta1=beta1,
                               beta2=beta2, weight_decay=self.weight_decay, eps=self.eps, maximize=False)


def numpy_products(t: torch.Tensor) -> bool:
    """Whether a stack's batched products for layers of at most `NUMPY_LAYER` weights take numpy's ``matmul``
    (OpenBLAS, one sgemm per member) rather than torch's ``bmm``/``baddbmm`` (MKL): on a CPU where torch runs one
    thread (a population per core, the launcher's default). Measured here (AMD EPYC, one thread, 8 members, 128
    rows): (128, 64) @ (64, 64) 76 us against 94, (128, 64) @ (64, 2) 5 us against 19, (128, 128) @ (128, 128)
    even; larger layers slower (MinAtar's (32, 1024) @ (1024, 128) 891 us against 769). With more threads torch's
    products split the members between them."""
    return t.device.type == "cpu" and torch.get_num_threads() == 1


NUMPY_LAYER = 64 * 64  # weights of the largest layer whose products `numpy_products` sends to numpy


# From this many rows per member, torch's batched products on the live weights beat numpy's on their transposed
# views on the CPU (measured for [128, 128]: 530 vs 391 us at 100 rows, 64 vs 98 us at 4); below it numpy's lower
# call cost wins. An evaluation's row-major copies take numpy's at any count (`PopulationLearner.greedy`).
TORCH_ACTING_ROWS = 16
# A layer this narrow on its input side (CartPole's 4 observations into 128 units) gets its weight gradient as
# (x^T dq)^T: batched (K, 128, B) @ (K, B, 4) took 216 us here against 42 us for (K, 4, B) @ (K, B, 128) and a
# transposed copy (K = 8, B = 128, one thread); wider inputs measured no gain, or a loss, that way.
NARROW_INPUT = 16


class PopulationLearner:
    """DQN's update for K members at once: online and target `StackedMLP`, per-member gamma, tau, gradient cap
    and learning rate, and per-member metric sums (read at logging time, like a solo `Learner`'s).

    Args:
        online: the members' online networks, stacked.
        target: their target networks (same shapes).
        features: obs ``(N, *obs_shape)`` -> float features ``(N, in)`` (the networks' shared input encoding).
        gamma, tau, max_grad_norm, lr: (K,) per member; ``max_grad_norm`` ``inf`` means no clipping.
        betas, eps, weight_decay: Adam's, shared.
        loss: ``huber`` | ``mse``. double: Double DQN.
        obs_rank: dims of one observation (0: Discrete, one-hot encoded by ``features``; 1: a vector).
    """

    def __init__(self, online: StackedMLP, target: StackedMLP, features: Callable[[torch.Tensor], torch.Tensor],
                 gamma: Sequence[float], tau: Sequence[float], max_grad_norm: Sequence[float], lr: Sequence[float],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 loss: str = "huber", double: bool = False, obs_rank: int = 1) -> None:
        if loss not in self.LOSSES:
            raise ValueError(f"a population's update takes loss {' or '.join(self.LOSSES)}, got {loss!r}")
        self.online, self.target, self.features = online, target, features
        self.device = online.flat.device
        self.loss, self.double, self.obs_rank = loss, bool(double), int(obs_rank)
        self.derivative = _BACKWARD.get(getattr(online, "activation", ""))  # the hand-written backward's
        k = online.k
        self.gamma = list(map(float, gamma))
        self.tau = list(map(float, tau))
        self.max_grad_norm = list(map(float, max_grad_norm))
        self.adam = self._optimizer(lr, betas, eps, weight_decay)
        self.grad = online.like(torch.zeros(k, online.size, device=self.device))
        self.updates = np.zeros(k, dtype=np.int64)
        self.loss_sum = torch.zeros(k, device=self.device)
        self.q_sum = torch.zeros(k, device=self.device)
        self.n = np.zeros(k, dtype=np.int64)
        self._tensors()

    LOSSES = ("huber", "mse")

    def _optimizer(self, lr: Sequence[float], betas: tuple[float, float], eps: float,
                   weight_decay: float) -> BatchedAdam:
        """The members' optimizer over their (P,) rows: Adam (`BatchedAdam`)."""
        return BatchedAdam(self.online.k, self.online.size, lr, betas, eps, weight_decay, self.device)

    def _tensors(self) -> None:
        """Per-member constants as tensors (rebuilt when members leave)."""
        self._gamma = torch.tensor(self.gamma, device=self.device).view(-1, 1, 1)
        self._cap = torch.tensor(self.max_grad_norm, device=self.device)
        cpu_stack = self.device.type == "cpu" and isinstance(self.online, StackedMLP)  # numpy acting
        self._np_layers = self.online.numpy_layers() if cpu_stack else None

    @property
    def k(self) -> int:
        return self.online.k

    def keep(self, members: Sequence[int]) -> None:
        """Only ``members`` (slots, in this order) stay; the others leave the batch."""
        idx = list(members)
        for s in (self.online, self.target, self.grad):
            s.keep(idx)
        self.adam.keep(idx)
        self.gamma, self.tau = [self.gamma[m] for m in idx], [self.tau[m] for m in idx]
        self.max_grad_norm = [self.max_grad_norm[m] for m in idx]
        self.updates, self.n = self.updates[idx], self.n[idx]
        self.loss_sum, self.q_sum = self.loss_sum[idx].clone(), self.q_sum[idx].clone()
        self._tensors()

    # --- acting -----------------------------------------------------------------------------------------
    def _subset(self, rows: Sequence[int] | None) -> list[int] | None:
        """``rows`` (slots) as a list where they are not every member in slot order, else None."""
        return None if rows is None or list(rows) == list(range(self.k)) else list(rows)

    def greedy(self, obs: np.ndarray, rows: Sequence[int] | None = None, cache: dict | None = None) -> np.ndarray:
        """obs ``(K, E, *obs_shape)`` -> argmax_a Q ``(K, E)`` int64. On the CPU in numpy on views of the live
        weights, the same products per member as a solo run's `dqnrun.fastpath.NumpyGreedyActor`. With ``rows``
        (slots), obs is ``(len(rows), E, ...)`` and only those members act; ``cache`` (a dict the caller keeps while
        the weights stay as they are: an evaluation) keeps those members' weights between calls."""
        k, e = obs.shape[:2]
        subset = self._subset(rows)
        members = list(range(k)) if subset is None else subset
        if self._np_layers is not None and cache is not None and numpy_products(self.online.flat):
            # an evaluation, where torch runs one thread: row-major copies of its members' weights, made once, and
            # numpy's products at any row count (100 eval envs of 8 [64, 64] members: ~95 us a step against ~150
            # through torch's calls around the same products)
            return self._numpy_greedy(obs, subset_of(cache, "rowmajor", members, lambda: [
                (np.ascontiguousarray(w_t[members]), b[members]) for w_t, b in self._np_layers]))
        if self._np_layers is None or e >= TORCH_ACTING_ROWS:
            if cache is not None:  # the weights stay as they are while the caller keeps its cache
                net = subset_of(cache, "net", members, lambda: self.online.frozen(members))
            else:
                net = self.online if subset is None else self.online.like(self.online.flat[subset])
            with torch.inference_mode():
                q = net.forward(self._feats(torch.as_tensor(obs, device=self.device)))
                return q.argmax(2).cpu().numpy()
        layers = self._np_layers
        if subset is not None:
            layers = subset_of(cache, "numpy", subset, lambda: [(w_t[subset], b[subset]) for w_t, b in self._np_layers])
        return self._numpy_greedy(obs, layers)

    def _numpy_greedy(self, obs: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """`greedy` in numpy: obs ``(K, E, ...)``, ``layers`` ``[(W^T (K, in, out), b (K, 1, out))]`` (the torso's
        first where there is one)."""
        k, e = obs.shape[:2]
        conv = self.online.conv
        with np.errstate(over="ignore", invalid="ignore"):  # a diverged member: its finite check reports it
            if conv is not None:
                (cw_t, cb), layers = layers[0], layers[1:]
                hc = np.matmul(conv.unfold_numpy(obs), cw_t)
                hc += cb
                np.maximum(hc, 0.0, out=hc)
                h = hc.reshape(k, e, conv.patches, -1).transpose(0, 1, 3, 2).reshape(k, e, -1)
            else:
                h = self._np_features(obs).reshape(k, e, -1)
            for w_t, b in layers[:-1]:
                h = np.matmul(h, w_t)
                h += b
                np.maximum(h, 0.0, out=h) if self.online.relu else np.tanh(h, out=h)
            w_t, b = layers[-1]
            q = np.matmul(h, w_t)
            q += b
            return q.argmax(2)

    def _np_features(self, obs: np.ndarray) -> np.ndarray:
        if np.issubdtype(obs.dtype, np.integer) and obs.ndim == 2:  # Discrete observations: one-hot
            n = self.online.shapes[0][1]
            return np.eye(n, dtype=np.float32)[obs]
        return obs.astype(np.float32, copy=False)

    def evaluation(self) -> AbstractContextManager[None]:
        """The context an evaluation acts in (`dqnrun.population.functional` puts NoisyNet layers in eval mode)."""
        return nullcontext()

    # --- learning ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def targets(self, batch: Batch) -> torch.Tensor | None:
        """TD targets ``(K, G, B)`` of a whole burst from one target forward; None for Double DQN (each step needs
        the online weights of that step)."""
        if self.double:
            return None
        k, g, b = batch.action.shape
        next_q = self.target.forward(self._feats(batch.next_obs)).view(k, g, b, -1)
        gamma = self._gamma if batch.discount is None else batch.discount
        return td_target(batch.reward, batch.terminated, next_q, gamma)  # type: ignore[arg-type]

    def _feats(self, obs: torch.Tensor) -> torch.Tensor:
        """obs ``(K, ..., *obs_shape)`` (``...`` = (G, B) or (B,)) -> features ``(K, G*B, in)``, or with a torso
        patches ``(K, G*B*P, C*kh*kw)``."""
        shape = obs.shape[obs.dim() - self.obs_rank:]
        flat = obs.reshape(-1, *shape)
        if self.online.conv is not None:
            return self.online.conv.unfold(flat, obs.shape[0])
        return self.features(flat).view(obs.shape[0], -1, self.online.in_features)

    @torch.no_grad()
    def update(self, batch: Batch, active: Sequence[bool] | None = None) -> list[np.ndarray | None]:
        """G gradient steps on a ``(K, G, B)`` burst for the ``active`` members (all by default).

        Returns, per gradient step, ``|TD error| (K, B)`` as numpy when the batch has importance weights (prioritized
        replay), else None.
        """
        k, g_steps, b = batch.action.shape
        act = [True] * k if active is None else list(active)
        y_all = self.targets(batch)
        out: list[np.ndarray | None] = []
        for g in range(g_steps):
            obs, action = batch.obs[:, g], batch.action[:, g]
            if y_all is not None:
                y = y_all[:, g]
            else:  # Double DQN: a* from this step's online weights, valued by the target net
                nf = self._feats(batch.next_obs[:, g])
                gamma = self._gamma.view(-1, 1) if batch.discount is None else batch.discount[:, g]
                y = td_target(batch.reward[:, g], batch.terminated[:, g], self.target.forward(nf), gamma,
                              self.online.forward(nf))  # type: ignore[arg-type]
            weights = None if batch.weights is None else batch.weights[:, g]
            loss, q_mean, diff = self._gradient(self._feats(obs), action, y, weights)
            self._step(loss, q_mean, act)
            out.append(diff.abs().cpu().numpy() if weights is not None else None)
        return out

    def _step(self, loss: torch.Tensor, q_mean: torch.Tensor, act: list[bool]) -> None:
        """With the gradient in ``self.grad``: cap it per member, step the active members' Adam, count their
        update and add their loss and mean Q to the sums read at logging time."""
        self._clip()
        self.adam.step(self.online.rows, self.grad.rows, act)
        count_update(self, loss, q_mean, act)

    def _gradient(self, x: torch.Tensor, action: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss ``(K,)``, mean Q(s, a) ``(K,)`` and q_sa - y ``(K, B)``; d(loss)/d(params) lands in ``self.grad``.
        The arithmetic of `dqnrun.fastpath.mlp.ManualMLPGradient`, batched over members."""
        acts: list[torch.Tensor] = []
        conv_acts: list[torch.Tensor] = []
        q = self.online.forward(x, acts, conv_acts)  # (K, B, A)
        b = q.shape[1]
        idx = action.unsqueeze(2)
        q_sa = q.gather(2, idx).squeeze(2)
        diff = q_sa - y
        if self.loss == "huber":  # huber(d) = c (d - c/2) with c = clamp(d, -1, 1); huber'(d) = c
            c = diff.clamp(-1.0, 1.0)
            grad_q = c.div(b)
            if weights is not None:
                grad_q.mul_(weights)
            loss = (grad_q * torch.add(diff, c, alpha=-0.5)).sum(1)
        else:
            grad_q = diff.mul(2.0 / b)
            if weights is not None:
                grad_q.mul_(weights)
            loss = (grad_q * diff).sum(1).mul_(0.5)
        dq = torch.zeros_like(q).scatter_(2, idx, grad_q.unsqueeze(2))
        online, grads = self.online, self.grad
        by_numpy = numpy_products(dq)
        for i in range(len(online.weights) - 1, -1, -1):
            out_f, in_f = online.shapes[i]
            small = by_numpy and out_f * in_f <= NUMPY_LAYER
            if small:  # one sgemm per member, straight into its row of the flat gradient
                np.matmul(dq.numpy().transpose(0, 2, 1), acts[i].numpy(), out=grads.weights[i].numpy())
            elif in_f <= NARROW_INPUT and out_f >= 4 * in_f:  # x^T dq, transposed: 5x faster for CartPole's 4 -> 128
                grads.weights[i].copy_(torch.bmm(acts[i].transpose(1, 2), dq).transpose(1, 2))
            else:  # into a fresh tensor, then copied: ``out=`` a strided view of the flat gradient rounds differently
                grads.weights[i].copy_(torch.bmm(dq.transpose(1, 2), acts[i]))  # with the number of members
            torch.sum(dq, 1, out=grads.biases[i])
            if i > 0:
                if small:
                    back = torch.from_numpy(np.matmul(dq.numpy(), online.weights[i].numpy()))
                else:
                    back = torch.bmm(dq, online.weights[i])
                dq = self.derivative(back, acts[i])
        if online.conv is not None:  # back through the flattening and the ReLU into the shared filters
            patches, hc = conv_acts
            k, f, p = hc.shape[0], online.conv.filters, online.conv.patches
            dfeat = torch.bmm(dq, online.weights[0])  # (K, B, F*P)
            dconv = dfeat.view(k, -1, f, p).transpose(2, 3).reshape(k, -1, f)  # (K, B*P, F)
            dconv = torch.ops.aten.threshold_backward(dconv, hc, 0)
            grads.conv_w.copy_(torch.bmm(dconv.transpose(1, 2), patches))
            torch.sum(dconv, 1, out=grads.conv_b)
        return loss, q_sa.mean(1), diff

    def _clip(self) -> None:
        """Each member's gradient scaled to at most its cap: coefficient cap / (norm + 1e-6), at most 1, as
        ``clip_grad_norm_`` computes it."""
        flat = self.grad.flat
        total = torch.linalg.vector_norm(flat, dim=1)
        flat.mul_((self._cap / (total + 1e-6)).clamp_(max=1.0).unsqueeze(1))

    @torch.no_grad()
    def sync_targets(self, members: Sequence[int], hard: bool = False) -> None:
        """Target <- online (tau 1, or ``hard``), else target <- target + tau (online - target), for ``members``."""
        for m in members:
            if hard or self.tau[m] >= 1.0:
                self.target.rows[m].copy_(self.online.rows[m])
            else:
                self.target.rows[m].lerp_(self.online.rows[m], self.tau[m])

    # --- metrics ----------------------------------------------------------------------------------------
    def finite(self) -> np.ndarray:
        """(K,) bool: whether each member's losses and Q-values since its last read were all finite (one sync)."""
        return torch.isfinite(self.loss_sum + self.q_sum).cpu().numpy()

    def read_metrics(self, m: int) -> dict[str, float] | None:
        """Member ``m``'s mean loss and Q since its last read (``td_loss``, ``q_values``), or None if it has not
        updated since; resets its sums."""
        if self.n[m] == 0:
            return None
        out = {"td_loss": float(self.loss_sum[m]) / int(self.n[m]), "q_values": float(self.q_sum[m]) / int(self.n[m])}
        self.loss_sum[m] = 0.0
        self.q_sum[m] = 0.0
        self.n[m] = 0
        return out
