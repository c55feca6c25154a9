"""A DQN gradient step for plain MLP Q-networks with the backward pass written out by hand.

For DQN-sized networks an eager update is dominated by per-op overhead: module calls, the autograd
graph and engine, and optimizer bookkeeping. The same arithmetic expressed as a dozen in-place matrix
ops takes 0.55-0.75x the time of the eager update on this CPU, the larger gain for the smaller nets
(docs/benchmarks.md). It computes the same function as the autograd path, which
`tests/unit/test_fastpath.py` checks step by step; any network it does not recognise (dueling, noisy,
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

from dqnrun.networks import QNetwork

# activation -> backward through it, from the upstream gradient and the activation's *output* h, as the
# single aten kernels autograd itself uses (one op instead of a mask and a multiply)
_DERIVATIVES = {
    "relu": lambda grad, h: torch.ops.aten.threshold_backward(grad, h, 0),
    "tanh": lambda grad, h: torch.ops.aten.tanh_backward(grad, h),
}

# Module types the hand-written update implements. Anything else in a network (a LayerNorm, a NoisyLinear, a
# dueling head's extra layers, another activation) sends it through autograd: eligibility is decided by what the
# network is made of, never by the config flags it was built from.
_ACTIVATIONS: dict[type[nn.Module], str] = {nn.ReLU: "relu", nn.Tanh: "tanh"}
_KNOWN = (nn.Linear, nn.Conv2d, nn.Sequential, *_ACTIVATIONS)


def activation_of(net: nn.Module) -> str | None:
    """The one activation of a network's fully connected stack (``relu`` | ``tanh``), None if it has none or mixes
    several."""
    kinds = {_ACTIVATIONS.get(type(m)) for m in getattr(net, "net", ()) if not isinstance(m, nn.Linear)}
    return kinds.pop() if len(kinds) == 1 and None not in kinds else None


def supports(net: nn.Module) -> bool:
    """Whether the hand-written update computes exactly this network: a `QNetwork` whose fully connected stack is
    Linear, activation, ..., Linear with one activation the backward is written for, a plain Q-value head (one
    output per action), and either no torso (and no pixel scaling) or a one-convolution torso followed by a ReLU
    (MinAtar's). Decided from the modules the network holds; `tests/unit/test_fastpath.py` shows that a
    network with a layer the fast path does not implement goes through autograd."""
    if not isinstance(net, QNetwork) or not isinstance(getattr(net, "net", None), nn.Sequential):
        return False
    if any(type(m) not in _KNOWN for m in net.modules() if m is not net):
        return False
    layers = list(net.net)
    shape_ok = (len(layers) % 2 == 1 and all(type(m) is nn.Linear for m in layers[0::2])
                and all(type(m) in _ACTIVATIONS for m in layers[1::2]))
    act = activation_of(net)
    if not shape_ok or act not in _DERIVATIVES or layers[-1].out_features != net.n_actions:
        return False
    if net.torso is None:
        return net.pixel_scale is None
    return single_conv(net) is not None and act == "relu"


def single_conv(net: nn.Module) -> nn.Conv2d | None:
    """The convolution of a one-convolution torso followed by a ReLU (MinAtar's network), else None."""
    torso = getattr(net, "torso", None)
    if torso is None or len(torso) != 2 or not isinstance(torso[1], nn.ReLU):
        return None
    conv = torso[0]
    ok = (isinstance(conv, nn.Conv2d) and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1
          and conv.bias is not None)
    return conv if ok else None


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


def conv_patches(net: QNetwork, conv: nn.Conv2d, obs: torch.Tensor) -> torch.Tensor:
    """Image observations (B, *image) -> (B*P, C*kh*kw) float patches, as ``unfold`` would give them."""
    key = (tuple(obs.shape[1:]), obs.device)
    cached = getattr(net, "_patch_index", None)
    if cached is None or cached[0] != key:
        idx = torch.from_numpy(patch_index(tuple(obs.shape[1:]), net.channels_last, conv)).to(obs.device)
        cached = (key, idx)
        net._patch_index = cached  # type: ignore[assignment]
    k = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    return gather_patches(obs, cached[1], k, net.pixel_scale)


def gather_patches(obs: torch.Tensor, index: torch.Tensor, fan_in: int, scale: float | None) -> torch.Tensor:
    """Observations (N, *image) -> float patches (N*P, fan_in) through a `patch_index` on their device."""
    # float first: index_select has a vectorized kernel for floats only (~6x faster than on bool or uint8)
    x = obs.reshape(obs.shape[0], -1).float().index_select(1, index).view(-1, fan_in)
    return x * scale if scale is not None else x


def gather_patches_numpy(obs: np.ndarray, index: np.ndarray, fan_in: int, scale: float | None) -> np.ndarray:
    """`gather_patches` in numpy: observations (N, *image) -> float32 patches (N*P, fan_in)."""
    x = obs.reshape(len(obs), -1)[:, index].reshape(-1, fan_in).astype(np.float32)
    if scale is not None:
        x *= scale
    return x


def mlp_forward(net: QNetwork, obs: torch.Tensor, acts: list[torch.Tensor] | None = None,
                conv_acts: list[torch.Tensor] | None = None, plan: MLPPlan | None = None) -> torch.Tensor:
    """Q-values (B, A) without building an autograd graph (same arithmetic as ``net(obs)``).

    If ``acts`` is given, each layer's input (the features, then every hidden activation) is appended to it,
    which is what the backward pass needs; ``conv_acts`` gets the conv torso's patches and output. ``plan``:
    the network's `MLPPlan`, read once by a caller that runs this every update (else read here).
    """
    if plan is None:
        plan = MLPPlan(net)
    conv = plan.conv
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
    layers, relu = plan.linears, plan.relu
    for layer in layers[:-1]:
        if acts is not None:
            acts.append(h)
        h = torch.addmm(layer.bias, h, layer.weight.t())
        h = h.relu_() if relu else h.tanh_()
    if acts is not None:
        acts.append(h)
    last = layers[-1]
    return torch.addmm(last.bias, h, last.weight.t())


class MLPPlan:
    """What `mlp_forward` reads off a network's structure: its Linear layers, whether its activation is ReLU (else
    tanh) and its one convolution (None without a torso). Read once by the callers that run every update or act:
    walking the modules costs a few microseconds a call. Parameters are updated in place, never replaced, so a plan
    stays valid for its network's life (a load_state_dict copies into the same tensors)."""

    __slots__ = ("linears", "relu", "conv")

    def __init__(self, net: QNetwork) -> None:
        self.linears: list[nn.Linear] = net.linears
        self.relu = activation_of(net) == "relu"
        self.conv = single_conv(net) if net.torso is not None else None


class ManualMLPGradient:
    """Computes the TD loss and writes d(loss)/d(params) into each parameter's ``.grad``.

    Loss: mean over the batch of huber(q_sa - y) (smooth L1, beta 1) or (q_sa - y)^2.
    """

    def __init__(self, online: QNetwork, loss: str) -> None:
        self.net = online
        self.loss = loss
        self.derivative = _DERIVATIVES[activation_of(online)]
        self.plan = MLPPlan(online)
        self.conv = self.plan.conv
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
        layers = self.plan.linears
        acts: list[torch.Tensor] = []
        conv_acts: list[torch.Tensor] = []
        q = mlp_forward(self.net, obs, acts, conv_acts, self.plan)
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
