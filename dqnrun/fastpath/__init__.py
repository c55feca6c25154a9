"""The fast path for small networks on the CPU, where an eager PyTorch update is mostly dispatch overhead.

- `mlp`: the DQN update of plain MLPs and of MinAtar's one-convolution network with the backward written out by
  hand (`supports` decides from a network's layers whether it applies).
- `optim`: optimizer steps (fused Adam, RAdam, RMSprop) that call what ``optimizer.step()`` calls, without its
  per-call Python overhead.
- `actor`: greedy acting in numpy on views of the live weights.

Each is tested against its autograd / torch counterpart (`tests/unit/test_fastpath.py`).
"""

from dqnrun.fastpath.actor import NumpyGreedyActor
from dqnrun.fastpath.mlp import ManualMLPGradient, MLPPlan, clip_grad_norm, mlp_forward, supports
from dqnrun.fastpath.optim import FusedAdamStep, LeanStep

__all__ = ["FusedAdamStep", "LeanStep", "MLPPlan", "ManualMLPGradient", "NumpyGreedyActor", "clip_grad_norm",
           "mlp_forward", "supports"]
