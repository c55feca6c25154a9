"""Lean optimizer steps: the same kernels as ``optimizer.step()`` without its per-call Python bookkeeping."""

from __future__ import annotations

import torch


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
