"""compile=true: the torch.compile'd update takes the same steps as the eager autograd update."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from dqnrun.algos.dqn.learner import Learner
from dqnrun.networks import MLP
from dqnrun.replay import Batch
from tests.conftest import run_cli


def _batches(n: int, g: int, b: int, obs_dim: int, prioritized: bool) -> list[Batch]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        out.append(Batch(
            obs=torch.randn(g, b, obs_dim, generator=gen),
            action=torch.randint(0, 2, (g, b), generator=gen),
            reward=torch.randn(g, b, generator=gen),
            next_obs=torch.randn(g, b, obs_dim, generator=gen),
            terminated=(torch.rand(g, b, generator=gen) < 0.1).float(),
            discount=0.99 ** torch.randint(1, 4, (g, b), generator=gen).float(),  # n-step windows
            weights=torch.rand(g, b, generator=gen) if prioritized else None,
            indices=torch.arange(g * b).view(g, b).numpy() if prioritized else None,
        ))
    return out


def _learner(compile: bool, **net_kwargs) -> Learner:
    torch.manual_seed(0)
    net = MLP((4,), 2, hidden=[32, 32], **net_kwargs)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3, fused=True)
    distributional = bool(net_kwargs.get("n_atoms"))
    return Learner(net, copy.deepcopy(net), opt, gamma=0.99, loss="huber", max_grad_norm=1.0, fast_mlp=False,
                   double=distributional, distributional=distributional, compile=compile)


@pytest.mark.parametrize("variant", [
    {},
    pytest.param({"dueling": True, "noisy": True, "n_atoms": 11, "v_min": -5.0, "v_max": 5.0},
                 marks=pytest.mark.slow, id="rainbow"),
], ids=lambda v: "rainbow" if v else "mlp")
def test_compiled_update_gives_the_same_losses_priorities_and_weights_as_eager(variant: dict) -> None:
    batches = _batches(12, 2, 32, 4, prioritized=True)  # bursts of 2 gradient steps, IS weights, n-step
    runs = {}
    for compile in (False, True):
        learner = _learner(compile, **variant)
        torch.manual_seed(5)  # the same NoisyNet noise draws in both runs
        losses, prios = [], []
        for i, batch in enumerate(batches):
            prios += [p for _, p in learner.update(batch)]
            losses.append(learner.read_metrics()["td_loss"])
            if i % 4 == 3:
                learner.sync_target()
        runs[compile] = (losses, prios, [p.detach().clone() for p in learner.online.parameters()])
        assert learner.compiled is compile and learner.manual is None
    (eager_l, eager_p, eager_w), (comp_l, comp_p, comp_w) = runs[False], runs[True]
    assert len(set(eager_l)) > 1  # the losses move, so the comparison means something
    torch.testing.assert_close(torch.tensor(comp_l), torch.tensor(eager_l), rtol=1e-5, atol=1e-6)
    for a, b in zip(comp_p, eager_p, strict=True):
        torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), rtol=1e-5, atol=1e-5)
    for a, b in zip(comp_w, eager_w, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.thorough  # make test-thorough: the default tier stays under ~10 min on 2 cores
def test_compile_true_trains_through_the_cli(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = run_cli(["train", "env=cartpole", "compile=true", "total_steps=1500", "algo.learning_starts=500",
                    "eval.every=0", "log.every=500", "log.progress=false", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 1500
    assert 240 <= results["updates"] <= 250  # one update per 4-env step after learning_starts
