"""Q-networks. Every network maps obs (B, *obs_shape) -> Q-values (B, A).

One class, `QNetwork` (also spelled `MLP`), is an optional convolutional torso followed by fully connected
layers and a head. Variants are options, not copies: ``conv`` (``nature``: Mnih et al. 2015's Atari CNN;
``minatar``: Young and Tian 2019's one-layer CNN), ``dueling`` (value + advantage - mean advantage), ``noisy``
(NoisyNet layers with factorised Gaussian noise) and ``head``: ``c51`` (the net also exposes ``dist_logits``
(B, A, atoms), and ``forward`` returns the expected value under the categorical distribution), ``qr`` (QR-DQN:
``quantiles(obs)`` (B, A, N) at the fixed fractions (2i + 1) / 2N; ``forward`` is their mean) and ``iqn`` (IQN:
``quantiles(obs, taus)`` at any fractions, through `CosineEmbedding`; ``forward`` averages a fixed grid of K
fractions, so acting, evaluation and export are deterministic). So every head composes with every torso.
``QTable`` is tabular Q-learning expressed as a network.

Acting (epsilon-greedy, batched over envs) lives in `dqnrun.acting`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}
# A normalization after each hidden fully connected layer, before its activation (PQN's LayerNorm).
NORMS = {"layernorm": nn.LayerNorm}


class NoisyLinear(nn.Module):
    """Linear layer with factorised Gaussian parameter noise (Fortunato et al. 2018).

    In training mode y = (mu_w + sigma_w * eps_w) x + mu_b + sigma_b * eps_b with eps_w = f(eps_out) f(eps_in)^T
    and f(x) = sign(x) sqrt(|x|); ``reset_noise`` draws new eps. In eval mode only the means are used.
    """

    def __init__(self, in_features: int, out_features: int, sigma0: float = 0.5) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.weight_sigma = nn.Parameter(torch.full((out_features, in_features), sigma0 * bound))
        self.bias_mu = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        self.bias_sigma = nn.Parameter(torch.full((out_features,), sigma0 * bound))
        self.register_buffer("eps_in", torch.zeros(in_features))
        self.register_buffer("eps_out", torch.zeros(out_features))
        self.reset_noise()

    @staticmethod
    def _f(x: torch.Tensor) -> torch.Tensor:
        return x.sign() * x.abs().sqrt()

    @torch.no_grad()
    def reset_noise(self) -> None:
        self.eps_in.copy_(self.noise(self.in_features, self.eps_in.device))
        self.eps_out.copy_(self.noise(self.out_features, self.eps_out.device))

    @classmethod
    def noise(cls, n: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        """f(x) of n standard normal draws: one factor of the noise (from the global torch stream without a
        ``generator``; a population draws each member's from its own, `dqnrun.population.functional`)."""
        return cls._f(torch.randn(n, device=device, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return nn.functional.linear(x, self.weight_mu, self.bias_mu)
        w = self.weight_mu + self.weight_sigma * torch.outer(self.eps_out, self.eps_in)
        b = self.bias_mu + self.bias_sigma * self.eps_out
        return nn.functional.linear(x, w, b)


def nature_torso(in_channels: int) -> nn.Sequential:
    """Mnih et al. 2015: 32 8x8/4, 64 4x4/2, 64 3x3/1 convolutions with ReLUs; (B, C, 84, 84) -> (B, 64, 7, 7)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 8, stride=4), nn.ReLU(),
        nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
    )


def minatar_torso(in_channels: int) -> nn.Sequential:
    """Young and Tian 2019 (MinAtar's DQN): one 3x3 convolution with 16 filters; (B, C, 10, 10) -> (B, 16, 8, 8)."""
    return nn.Sequential(nn.Conv2d(in_channels, 16, 3, stride=1), nn.ReLU())


TORSOS: dict[str, Callable[[int], nn.Sequential]] = {"nature": nature_torso, "minatar": minatar_torso}


def normed_torso(torso: nn.Sequential, chw: tuple[int, ...], norm: str) -> nn.Sequential:
    """``torso`` with a normalization over each convolution's whole output (C, H, W) between it and its activation,
    as CleanRL's ``pqn_atari_envpool.py`` places its LayerNorms (``network.norm`` with a conv torso)."""
    layers: list[nn.Module] = []
    x = torch.zeros(1, *chw)
    with torch.no_grad():
        for m in torso:
            x = m(x)
            layers.append(m)
            if isinstance(m, nn.Conv2d):
                layers.append(NORMS[norm](list(x.shape[1:])))
    return nn.Sequential(*layers)
HEADS = ("q", "c51", "qr", "iqn")


def fixed_taus(n: int) -> torch.Tensor:
    """The midpoints (2i + 1) / 2n, i = 0..n-1, (n,): QR-DQN's quantile fractions, and IQN's grid for acting (a
    midpoint rule for the mean over tau ~ U(0, 1), so Q is deterministic)."""
    return (torch.arange(n, dtype=torch.float32) + 0.5) / n


class CosineEmbedding(nn.Module):
    """IQN's embedding of quantile fractions (Dabney et al. 2018, eq. 4): phi(tau)_j = ReLU(sum_i cos(pi i tau) w_ij
    + b_j), i = 0..n_cos-1. taus (..., N) -> (..., N, dim), to multiply the torso's features elementwise.

    Its own module type, so the fast path (which knows Linear, Conv2d and activations) steps aside by structure.
    """

    def __init__(self, dim: int, n_cos: int = 64) -> None:
        super().__init__()
        # pi * i, i = 0..n_cos-1; not saved (it is a function of n_cos, which the config holds)
        self.register_buffer("freqs", math.pi * torch.arange(n_cos, dtype=torch.float32), persistent=False)
        self.linear = nn.Linear(n_cos, dim)

    def forward(self, taus: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(torch.cos(taus.unsqueeze(-1) * self.freqs)))


class QNetwork(nn.Module):
    """A Q-network: optional conv torso -> fully connected layers -> plain / dueling head, optionally noisy or
    distributional.

    Args:
        obs_shape: shape of one observation; ``()`` for a Discrete observation space.
        n_actions: number of discrete actions A.
        hidden: sizes of the hidden layers.
        activation: one of ``relu | tanh | elu | gelu``.
        n_obs_categories: for a Discrete observation space, its size n; observations are then int64
            indices ``(B,)`` and are one-hot encoded to ``(B, n)`` here.
        dueling: split the head into V(s) and A(s, a); Q = V + A - mean_a A.
        noisy: NoisyLinear layers (exploration by parameter noise), initial noise scale ``sigma0``. The first
            (input) layer stays a plain Linear unless ``noisy_input``, as the convolutional torso does in
            Fortunato et al.'s Atari networks; on CartPole that learned 3/3 seeds against 0-2/3 with every
            layer noisy (docs/benchmarks.md, section 4).
        head: ``q`` (one Q-value per action), ``c51`` (a categorical return distribution over ``atoms``
            atoms on [v_min, v_max]), ``qr`` (``quantiles`` quantile values per action) or ``iqn`` (quantile
            values at fractions given to ``quantiles``); the builder passes it from ``learner.distributional``.
        atoms, v_min, v_max: C51's support (``network.atoms``, ...), used by the ``c51`` head only.
        quantiles: QR-DQN's N (``network.quantiles``), used by the ``qr`` head only.
        quantile_embedding: IQN's cosine features n (``network.quantile_embedding``; the paper's 64). With a conv
            torso the embedding multiplies the torso's flattened output (the paper's psi); without one, the first
            hidden layer's output (the raw observation of a control task is too small a feature to modulate).
        iqn_k: IQN's K, the fractions `fixed_taus(K)` that ``forward`` averages (``learner.iqn_k``).
        conv: ``nature`` | ``minatar`` | None: a convolutional torso for image observations (C, H, W), whose
            flattened output feeds ``hidden``. With a torso every fully connected layer is noisy when ``noisy``
            (the paper's Atari networks keep only the convolutions plain).
        channels_last: observations are (H, W, C) (MinAtar); they are permuted inside the network, so the
            replay stores what the env gives.
        pixel_scale: multiply the float input by this (1/255 for uint8 frames: scaling happens here, so the
            replay keeps uint8). It applies to float inputs too, so an exported policy takes raw pixel values.
        norm: ``layernorm`` (or None): a normalization after every hidden fully connected layer, before its
            activation, as PQN's networks have (Gallici et al. 2025).
    """

    def __init__(
        self,
        obs_shape: Sequence[int],
        n_actions: int,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
        n_obs_categories: int | None = None,
        dueling: bool = False,
        noisy: bool = False,
        head: str = "q",
        atoms: int = 51,
        v_min: float = -10.0,
        v_max: float = 10.0,
        sigma0: float = 0.5,
        noisy_input: bool = False,
        conv: str | None = None,
        channels_last: bool = False,
        pixel_scale: float | None = None,
        norm: str | None = None,
        quantiles: int = 200,
        quantile_embedding: int = 64,
        iqn_k: int = 32,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head={head!r} is not one of {' | '.join(HEADS)}")
        if norm is not None and norm not in NORMS:
            raise ValueError(f"network.norm={norm} is not one of {' | '.join(NORMS)}; use network.norm=layernorm "
                             "or leave it null")
        self.conv, self.channels_last = conv, bool(channels_last)
        self.pixel_scale = None if pixel_scale is None else float(pixel_scale)
        self.torso: nn.Module | None = None
        self.n_obs_categories = n_obs_categories
        self.activation = activation
        self.dueling, self.noisy, self.n_actions = bool(dueling), bool(noisy), int(n_actions)
        self.head_kind = head
        self.n_atoms = int(atoms) if head == "c51" else None
        self.n_quantiles = int(quantiles) if head == "qr" else None
        linear: Callable[[int, int], nn.Module] = (
            (lambda i, o: NoisyLinear(i, o, sigma0)) if self.noisy else nn.Linear
        )
        in_dim = n_obs_categories if n_obs_categories else int(torch.Size(obs_shape).numel())
        if conv is not None:
            if len(obs_shape) != 3:
                raise ValueError(f"conv={conv} needs image observations (C, H, W) or (H, W, C); got {tuple(obs_shape)}")
            channels = obs_shape[-1] if self.channels_last else obs_shape[0]
            self.torso = TORSOS[conv](int(channels))
            if norm is not None:
                self.torso = normed_torso(self.torso, self._chw(obs_shape), norm)
            with torch.no_grad():
                in_dim = int(self.torso(torch.zeros(1, *self._chw(obs_shape))).numel())
        plain_input = conv is None and not noisy_input
        feat_dim = in_dim
        layers: list[nn.Module] = []
        for i, width in enumerate(hidden):
            first = nn.Linear if i == 0 and plain_input else linear
            layers.append(first(in_dim, int(width)))
            if norm is not None:
                layers.append(NORMS[norm](int(width)))
            layers.append(ACTIVATIONS[activation]())
            in_dim = int(width)
        out = self.n_atoms or self.n_quantiles or 1
        self.embedding: CosineEmbedding | None = None
        if head == "iqn":  # psi (torso, or the first hidden layer) | phi(tau) * psi | the layers after
            split = 0 if conv is not None or not hidden else (3 if norm is not None else 2)
            self.psi = nn.Sequential(*layers[:split])
            layers = layers[split:]
            self.embedding = CosineEmbedding(int(hidden[0]) if split else feat_dim, int(quantile_embedding))
            self.register_buffer("act_taus", fixed_taus(int(iqn_k)), persistent=False)
        if self.dueling:
            self.body = nn.Sequential(*layers)
            self.value = linear(in_dim, out)
            self.advantage = linear(in_dim, n_actions * out)
        else:
            layers.append(linear(in_dim, n_actions * out))
            self.net = nn.Sequential(*layers)
        if self.n_atoms:
            self.register_buffer("support", torch.linspace(float(v_min), float(v_max), self.n_atoms))

    def _chw(self, shape: Sequence[int]) -> tuple[int, int, int]:
        h_w_c = tuple(int(x) for x in shape)
        return (h_w_c[2], h_w_c[0], h_w_c[1]) if self.channels_last else h_w_c  # type: ignore[return-value]

    @property
    def linears(self) -> list[nn.Linear]:
        return [m for m in self.net if isinstance(m, nn.Linear)]

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """obs (B, *obs_shape) -> the float input of the first fully connected layer, (B, in_dim)."""
        if self.n_obs_categories:
            return nn.functional.one_hot(obs.long(), self.n_obs_categories).float()
        if self.torso is None:
            return self._scaled(obs).flatten(1)
        return self.torso(self.images(obs)).flatten(1)

    def _scaled(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float()
        return x if self.pixel_scale is None else x * self.pixel_scale

    def images(self, obs: torch.Tensor) -> torch.Tensor:
        """Image obs (B, *obs_shape) -> the torso's float input (B, C, H, W): scaled, channels first."""
        x = self._scaled(obs)
        return x.permute(0, 3, 1, 2) if self.channels_last else x

    def _fc(self, h: torch.Tensor, out: int) -> torch.Tensor:
        """The fully connected layers and the (dueling) head: h (R, d) -> (R, A, out)."""
        if self.dueling:
            h = self.body(h)
            v = self.value(h).view(-1, 1, out)
            a = self.advantage(h).view(-1, self.n_actions, out)
            return v + a - a.mean(dim=1, keepdim=True)
        return self.net(h).view(-1, self.n_actions, out)

    def head(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, A) Q-values; (B, A, n_atoms) logits for C51; (B, A, N) quantile values for QR; for IQN (B, A, K)
        quantile values at its fixed grid `fixed_taus(K)`."""
        if self.embedding is not None:
            return self.quantiles(obs, self.act_taus)
        y = self._fc(self.features(obs), self.n_atoms or self.n_quantiles or 1)
        return y.squeeze(-1) if self.head_kind == "q" else y

    def dist_logits(self, obs: torch.Tensor) -> torch.Tensor:
        """C51 only: (B, A, n_atoms) logits of the return distribution."""
        return self.head(obs)

    def quantiles(self, obs: torch.Tensor, taus: torch.Tensor | None = None) -> torch.Tensor:
        """QR and IQN: quantile values (B, A, N) of the return distribution.

        QR: its N fixed quantiles (``taus`` is ignored: they sit at `fixed_taus(N)`). IQN: at the fractions
        ``taus``, (B, N) (one set per sample, as the learner samples them) or (N,) (shared by the batch).
        """
        if self.embedding is None:
            return self.head(obs)
        assert taus is not None, "IQN needs the quantile fractions"
        x = self.psi(self.features(obs))  # (B, d)
        h = x.unsqueeze(1) * self.embedding(taus)  # (B, N, d): (B, 1, d) * ((B, N, d) or (N, d))
        n = taus.shape[-1]
        # one row per (sample, fraction) through the layers after psi; reshapes use static sizes only, so a
        # traced or ONNX export keeps its dynamic batch dimension
        y = self._fc(h.reshape(-1, x.shape[-1]), 1)  # (B*N, A, 1)
        return y.reshape(-1, n, self.n_actions).transpose(1, 2)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """obs: (B, *obs_shape) in the observation dtype -> Q: (B, A) float32 (C51: the expected value; QR and
        IQN: the mean of the quantile values, IQN's over its fixed grid, so Q is deterministic)."""
        y = self.head(obs)
        if self.n_atoms:
            return (y.softmax(-1) * self.support).sum(-1)
        return y if self.head_kind == "q" else y.mean(-1)

    def reset_noise(self) -> None:
        for m in self.modules():
            if isinstance(m, NoisyLinear):
                m.reset_noise()


MLP = QNetwork  # the name checkpoints and presets written before the conv torso use


class QTable(nn.Module):
    """Tabular Q-learning as a network: a (n_states, A) table of parameters; Q(s, .) = table[s].

    With ``learner.loss=half_sse`` and ``optimizer=sgd`` (lr = alpha) one gradient step on a transition is
    exactly Q(s,a) <- Q(s,a) + alpha [r + gamma max_a' Q(s',a') - Q(s,a)].
    """

    def __init__(self, obs_shape: Sequence[int], n_actions: int, n_obs_categories: int | None = None,
                 init: float = 0.0, **network_keys: object) -> None:
        """Other ``network.*`` keys (``hidden``, ``activation``, C51's support, ``quantiles``, ...) are accepted and
        ignored: an env preset sets them for the other networks (CartPole's sets ``v_min``), and the config keeps
        unknown keys out on its own."""
        super().__init__()
        if not n_obs_categories:
            raise ValueError("network=tabular needs a Discrete observation space (e.g. env=frozenlake)")
        self.table = nn.Parameter(torch.full((int(n_obs_categories), int(n_actions)), float(init)))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """obs: (B,) int64 state indices -> Q: (B, A)."""
        return self.table[obs.long()]
