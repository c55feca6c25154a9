"""Lean optimizer steps: the same kernels as ``optimizer.step()`` without its per-call Python bookkeeping.

For small networks an optimizer step costs more in Python than in arithmetic: ``step()`` regroups the
parameters, re-reads their state, checks each gradient and runs profiler hooks on every call. `LeanStep` does that
once, then calls the very function ``step()`` calls, with the same arguments: fused Adam's kernel
(``torch._fused_adam_``), RAdam's ``torch.optim.radam.radam`` and RMSprop's ``torch.optim.rmsprop.rmsprop``
(centered or not). The learning rate is read from the param group at every call (a schedule may change it). The
state stays in the optimizer, so its ``state_dict`` (checkpoints, resume) is unaffected. Any other optimizer or
option falls back to ``optimizer.step()``. `tests/unit/test_fastpath.py` checks each bit-identical to torch's
step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def _plain(group: dict[str, Any]) -> bool:
    """One group, no options the lean call does not pass on."""
    return (not group.get("maximize") and not group.get("differentiable") and not group.get("capturable")
            and not isinstance(group["lr"], torch.Tensor))


class LeanStep:
    """``optimizer.step()`` for fused Adam, RAdam and RMSprop at a fraction of its per-call cost."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        groups = optimizer.param_groups
        g = groups[0]
        kind = None
        if len(groups) == 1 and _plain(g):
            if type(optimizer) is torch.optim.Adam and g.get("fused") and not g["amsgrad"] \
                    and g["params"][0].device.type == "cpu":
                kind = "fused_adam"
            elif type(optimizer) is torch.optim.RAdam:
                kind = "radam"
            elif type(optimizer) is torch.optim.RMSprop:
                kind = "rmsprop"
        self.kind = kind
        self.enabled = kind is not None
        self._call: Callable[[], None] | None = None

    def __call__(self) -> None:
        if self._call is None:
            self.optimizer.step()  # the first step creates the state tensors; reuse them afterwards
            if self.enabled:
                self._call = getattr(self, f"_bind_{self.kind}")()
            return
        self._call()

    def rebind(self) -> None:
        """Call after ``optimizer.load_state_dict`` (it replaces the state tensors)."""
        self._call = None

    # Each binder returns the call that replaces step(), over the state tensors step() just created.
    def _params_and_states(self) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
        params = list(self.optimizer.param_groups[0]["params"])
        return params, [self.optimizer.state[p] for p in params]

    def _adam_state(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """params, exp_avgs, exp_avg_sqs, steps: the state Adam and RAdam keep per parameter."""
        params, states = self._params_and_states()
        return (params, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                [s["step"] for s in states])

    def _bind_fused_adam(self) -> Callable[[], None]:
        params, exp_avgs, exp_avg_sqs, steps = self._adam_state()
        g = self.optimizer.param_groups[0]

        def call() -> None:  # aten kernels called directly record no graph: no no_grad block (1.5 us a call)
            beta1, beta2 = g["betas"]
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(params, [p.grad for p in params], exp_avgs, exp_avg_sqs, [], steps, amsgrad=False,
                               lr=g["lr"], beta1=beta1, beta2=beta2, weight_decay=g["weight_decay"], eps=g["eps"],
                               maximize=False)

        return call

    def _bind_radam(self) -> Callable[[], None]:
        from torch.optim.radam import radam

        params, exp_avgs, exp_avg_sqs, steps = self._adam_state()
        g = self.optimizer.param_groups[0]

        @torch.no_grad()  # as step() runs: the parameters are updated in place
        def call() -> None:
            beta1, beta2 = g["betas"]
            radam(params, [p.grad for p in params], exp_avgs, exp_avg_sqs, steps, beta1=beta1, beta2=beta2,
                  lr=g["lr"], weight_decay=g["weight_decay"], eps=g["eps"], maximize=False, foreach=g["foreach"],
                  capturable=False, differentiable=False, decoupled_weight_decay=g["decoupled_weight_decay"],
                  has_complex=False)

        return call

    def _bind_rmsprop(self) -> Callable[[], None]:
        from torch.optim.rmsprop import rmsprop

        params, states = self._params_and_states()
        g = self.optimizer.param_groups[0]
        square_avgs = [s["square_avg"] for s in states]
        grad_avgs = [s["grad_avg"] for s in states] if g["centered"] else []
        momentum = [s["momentum_buffer"] for s in states] if g["momentum"] > 0 else []
        steps = [s["step"] for s in states]

        @torch.no_grad()
        def call() -> None:
            rmsprop(params, [p.grad for p in params], square_avgs, grad_avgs, momentum, steps, lr=g["lr"],
                    alpha=g["alpha"], eps=g["eps"], weight_decay=g["weight_decay"], momentum=g["momentum"],
                    centered=g["centered"], foreach=g["foreach"], maximize=False, differentiable=False,
                    capturable=False, has_complex=False)

        return call


FusedAdamStep = LeanStep  # the name of dqnrun 0.2, when it covered fused Adam only
