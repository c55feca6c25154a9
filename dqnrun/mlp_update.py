"""A DQN gradient step for plain MLP Q-networks with the backward pass written out by hand.

For DQN-sized networks an eager update is dominated by per-op overhead: module calls, the autograd
graph and engine, and optimizer bookkeeping. The same arithmetic expressed as a dozen in-place matrix
ops takes 0.55-0.75x the time of the eager update on this CPU, the larger gain for the smaller nets
(docs/benchmarks.md). It computes the same function as the autograd path, which
`tests/test_mlp_update.py` checks step by step; any network it does not recognise (dueling, noisy,
deeper CNNs, ...) goes through autograd instead.

A network whose torso is one convolution (MinAtar's: 16 3x3 filters) is an MLP over image patches: the
convolution is a matrix product of the unfolded patches (B*P, C*k*k) with the filters (F, C*k*k), shared over
the P positions. So it takes the same path, with one more layer whose weight gradient sums over positions.

Shapes: obs (B, *obs_shape), Q (B, A); layer i has weight (out_i, in_i) and bias (out_i,).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dqnrun.networks import MLP

# activation -> backward through it, from the upstream gradient and the activation's *output* h, as the
# single aten kernels autograd itself uses (one op instead of a mask and a multiply)
_DERIVATIVES = {
    "relu": lambda grad, h: torch.ops.aten.threshold_backward(grad, h, 0),
    "tanh": lambda grad, h: torch.ops.aten.tanh_backward(grad, h),
}


def single_conv(net: nn.Module) -> nn.Conv2d | None:
    """The convolution of a one-convolution torso followed by a ReLU (MinAtar's network), else None."""
    torso = getattr(net, "torso", None)
    if torso is None or len(torso) != 2 or not isinstance(torso[1], nn.ReLU):
        return None
    conv = torso[0]
    ok = (isinstance(conv, nn.Conv2d) and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1
          and conv.bias is not None)
    return conv if ok else None


def supports(net: nn.Module) -> bool:
    """Plain MLPs, or one convolution plus an MLP; no dueling, noisy or distributional head."""
    return (type(net) is MLP and net.activation in _DERIVATIVES and not net.dueling and not net.noisy
            and not net.n_atoms and ((net.torso is None and net.pixel_scale is None)
                                    or (single_conv(net) is not None and net.activation == "relu")))


def patch_index(image_shape: tuple[int, ...], channels_last: bool, conv: nn.Conv2d) -> np.ndarray:
    """(P*C*kh*kw,) indices into one flattened observation that list its patches: position-major, then
    (C, kh, kw), the order of the filters' flattening. One gather replaces ``unfold`` (7x cheaper here)."""
    if channels_last:
        h, w, c = image_shape
    else:
        c, h, w = image_shape
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    pos_h = (np.arange(oh) * sh)[:, None, None, None, None] + np.arange(kh)[None, None, None, :, None]
    pos_w = (np.arange(ow) * sw)[None, :, None, None, None] + np.arange(kw)[None, None, None, None, :]
    ch = np.arange(c)[None, None, :, None, None]
    flat = (pos_h * w + pos_w) * c + ch if channels_last else (ch * h + pos_h) * w + pos_w
    return np.broadcast_to(flat, (oh, ow, c, kh, kw)).reshape(-1).astype(np.int64)


def conv_patches(net: MLP, conv: nn.Conv2d, obs: torch.Tensor) -> torch.Tensor:
    """Image observations (B, *image) -> (B*P, C*kh*kw) float patches, as ``unfold`` would give them."""
    key = (tuple(obs.shape[1:]), obs.device)
    cached = getattr(net, "_patch_index", None)
    if cached is None or cached[0] != key:
        idx = torch.from_numpy(patch_index(tuple(obs.shape[1:]), net.channels_last, conv)).to(obs.device)
        cached = (key, idx)
        net._patch_index = cached  # type: ignore[assignment]
    k = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    # float first: index_select has a vectorized kernel for floats only (~6x faster than on bool or uint8)
    x = obs.reshape(obs.shape[0], -1).float().index_select(1, cached[1]).view(-1, k)
    return x * net.pixel_scale if net.pixel_scale is not None else x


def mlp_forward(net: MLP, obs: torch.Tensor, acts: list[torch.Tensor] | None = None,
                conv_acts: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Q-values (B, A) without building an autograd graph (same arithmetic as ``net(obs)``).

    If ``acts`` is given, each layer's input (the features, then every hidden activation) is appended to it,
    which is what the backward pass needs; ``conv_acts`` gets the conv torso's patches and output.
    """
    conv = single_conv(net) if net.torso is not None else None
    if conv is None:
        h = net.features(obs)
    else:
        patches = conv_patches(net, conv, obs)
        hc = torch.addmm(conv.bias, patches, conv.weight.view(conv.out_channels, -1).t()).relu_()  # (B*P, F)
        b = obs.shape[0]
        # (B, P, F) -> (B, F, P) -> (B, F*P): the channel-major flattening of the torso's (B, F, H', W') output
        h = hc.view(b, -1, conv.out_channels).transpose(1, 2).reshape(b, -1)
        if conv_acts is not None:
            conv_acts += [patches, hc]
    layers = net.linears
    relu = net.activation == "relu"
    for layer in layers[:-1]:
        if acts is not None:
            acts.append(h)
        h = torch.addmm(layer.bias, h, layer.weight.t())
        h = h.relu_() if relu else h.tanh_()
    if acts is not None:
        acts.append(h)
    last = layers[-1]
    return torch.addmm(last.bias, h, last.weight.t())


class ManualMLPGradient:
    """Computes the TD loss and writes d(loss)/d(params) into each parameter's ``.grad``.

    Loss: mean over the batch of huber(q_sa - y) (smooth L1, beta 1) or (q_sa - y)^2.
    """

    def __init__(self, online: MLP, loss: str) -> None:
        self.net = online
        self.loss = loss
        self.derivative = _DERIVATIVES[online.activation]
        self.conv = single_conv(online) if online.torso is not None else None
        self.params = [p for layer in online.linears for p in (layer.weight, layer.bias)]
        if self.conv is not None:
            self.params += [self.conv.weight, self.conv.bias]
        # Persistent gradient buffers, overwritten in place each step: views into one flat tensor, so that
        # clipping takes one norm and one multiply instead of a per-tensor foreach.
        self.flat_grad = torch.zeros(sum(p.numel() for p in self.params), dtype=self.params[0].dtype,
                                     device=self.params[0].device)
        offset = 0
        for p in self.params:
            p.grad = self.flat_grad[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
        self.grads = [p.grad for p in self.params]

    @torch.no_grad()
    def __call__(
        self, obs: torch.Tensor, action: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (loss, mean Q(s, a), q_sa - y (B,)); gradients land in ``p.grad``.

        ``weights`` (B,): per-sample importance weights (prioritized replay) multiplying each sample's loss.
        """
        layers = self.net.linears
        acts: list[torch.Tensor] = []
        conv_acts: list[torch.Tensor] = []
        q = mlp_forward(self.net, obs, acts, conv_acts)
        b = q.shape[0]
        q_sa = q.gather(1, action.unsqueeze(1)).squeeze(1)
        diff = q_sa - y
        # g = d(loss)/d(q_sa). The loss value comes out of g with one dot product:
        #   huber: with c = clamp(d, -1, 1), huber(d) = c (d - c/2) and huber'(d) = c, so
        #          loss = sum_i w_i c_i (d_i - c_i/2) / B = g . (d - c/2)  with g = w c / B;
        #   mse:   loss = sum_i w_i d_i^2 / B = g . d / 2                   with g = 2 w d / B.
        if self.loss == "huber":
            c = diff.clamp(-1.0, 1.0)
            g = c.div(b)
            if weights is not None:
                g.mul_(weights)
            loss = torch.dot(g, torch.add(diff, c, alpha=-0.5))
        else:
            g = diff.mul(2.0 / b)
            if weights is not None:
                g.mul_(weights)
            loss = torch.dot(g, diff).mul_(0.5)
        dq = torch.zeros_like(q).scatter_(1, action.unsqueeze(1), g.unsqueeze(1))
        for i in range(len(layers) - 1, -1, -1):
            torch.mm(dq.t(), acts[i], out=self.grads[2 * i])
            torch.sum(dq, 0, out=self.grads[2 * i + 1])
            if i > 0:
                dq = self.derivative(dq.mm(layers[i].weight), acts[i])
        if self.conv is not None:  # back through the flattening and the ReLU into the shared filters
            patches, hc = conv_acts
            f = self.conv.out_channels
            dfeat = dq.mm(layers[0].weight)  # (B, F*P)
            dconv = dfeat.view(b, f, -1).transpose(1, 2).reshape(-1, f)  # (B*P, F)
            dconv = torch.ops.aten.threshold_backward(dconv, hc, 0)
            torch.mm(dconv.t(), patches, out=self.grads[-2].view(f, -1))
            torch.sum(dconv, 0, out=self.grads[-1])
        return loss, q_sa.mean(), diff


@torch.no_grad()
def clip_grad_norm(flat_grad: torch.Tensor, max_norm: float) -> None:
    """``nn.utils.clip_grad_norm_`` for gradients that live in one flat buffer: the same total norm and
    coefficient max_norm / (norm + 1e-6), capped at 1, in one norm and one multiply."""
    total = torch.linalg.vector_norm(flat_grad)
    flat_grad.mul_((max_norm / (total + 1e-6)).clamp_(max=1.0))


class FusedAdamStep:
    """``optimizer.step()`` for a fused ``torch.optim.Adam`` minus its per-call Python bookkeeping (profiler
    hooks, param grouping): the same fused kernel on the same state, about 3x cheaper per call for small
    nets. Falls back to ``optimizer.step()`` for any other optimizer or option. The state stays in the
    optimizer, so its ``state_dict`` (checkpoints, resume) is unaffected.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        groups = optimizer.param_groups
        g = groups[0]
        self.enabled = (
            type(optimizer) is torch.optim.Adam and len(groups) == 1 and bool(g.get("fused"))
            and not g["amsgrad"] and not g["maximize"] and not g["capturable"] and not g["differentiable"]
            and not isinstance(g["lr"], torch.Tensor) and g["params"][0].device.type == "cpu"
        )
        self._tensors: tuple | None = None

    def __call__(self) -> None:
        if not self.enabled:
            self.optimizer.step()
            return
        if self._tensors is None:
            self.optimizer.step()  # first step creates the state tensors; reuse them afterwards
            self._bind()
            return
        params, grads, exp_avgs, exp_avg_sqs, steps = self._tensors  # type: ignore[misc]
        g = self.optimizer.param_groups[0]
        beta1, beta2 = g["betas"]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=g["lr"], beta1=beta1,
            beta2=beta2, weight_decay=g["weight_decay"], eps=g["eps"], maximize=False,
        )

    def _bind(self) -> None:
        params = list(self.optimizer.param_groups[0]["params"])
        states = [self.optimizer.state[p] for p in params]
        self._tensors = (params, [p.grad for p in params], [s["exp_avg"] for s in states],
                         [s["exp_avg_sq"] for s in states], [s["step"] for s in states])

    def rebind(self) -> None:
        """Call after ``optimizer.load_state_dict`` (it replaces the state tensors)."""
        self._tensors = None


class NumpyGreedyActor:
    """Greedy actions for a CPU MLP computed in numpy on views of the live weights.

    Acting evaluates a handful of observations per env step, where a torch forward is mostly dispatch
    overhead (~35 µs); the same matmuls in numpy take a few µs. The views share memory with the parameters,
    which every update, target sync and checkpoint load modifies in place, so they never go stale.
    """

    def __init__(self, net: MLP) -> None:
        self.layers = [(layer.weight.detach().numpy().T, layer.bias.detach().numpy()) for layer in net.linears]
        self.relu = net.activation == "relu"
        self.n_cat = net.n_obs_categories
        self._eye = np.eye(self.n_cat, dtype=np.float32) if self.n_cat else None
        self.conv = single_conv(net) if net.torso is not None else None
        if self.conv is not None:
            c = self.conv
            self.conv_w = c.weight.detach().numpy().reshape(c.out_channels, -1).T  # (C*kh*kw, F), a live view
            self.conv_b = c.bias.detach().numpy()
            self.channels_last, self.scale = net.channels_last, net.pixel_scale
            self._index: tuple | None = None

    def _conv(self, obs: np.ndarray) -> np.ndarray:
        """(E, *image) -> (E, F*P): the torso's output, flattened channel-major as the network does."""
        if self._index is None or self._index[0] != obs.shape[1:]:
            self._index = (obs.shape[1:], patch_index(obs.shape[1:], self.channels_last, self.conv))
        e = len(obs)
        patches = obs.reshape(e, -1)[:, self._index[1]].reshape(-1, self.conv_w.shape[0]).astype(np.float32)
        if self.scale is not None:
            patches *= self.scale
        h = patches @ self.conv_w
        h += self.conv_b
        np.maximum(h, 0.0, out=h)
        return h.reshape(e, -1, h.shape[1]).transpose(0, 2, 1).reshape(e, -1)

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """obs (E, *obs_shape) -> Q (E, A) float32."""
        if self.conv is not None:
            h = self._conv(obs)
        elif self._eye is not None:
            h = self._eye[obs]
        else:
            h = obs.reshape(len(obs), -1).astype(np.float32, copy=False)
        for w_t, b in self.layers[:-1]:
            h = h @ w_t
            h += b
            np.maximum(h, 0.0, out=h) if self.relu else np.tanh(h, out=h)
        w_t, b = self.layers[-1]
        return h @ w_t + b

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):  # diverged weights: the loop's finite check reports it
            return self.q_values(obs).argmax(1)
