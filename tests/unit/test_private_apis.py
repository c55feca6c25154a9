"""The private third-party APIs dqnrun still uses (docs/architecture.md lists each and why), pinned: each test
fails loudly, naming the API, when a dependency changes it."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch


def test_torch_fused_adam_kernel_takes_the_arguments_the_lean_step_passes() -> None:
    """dqnrun.fastpath.optim.FusedAdamStep calls the fused Adam kernel directly (3x cheaper per call than
    ``optimizer.step()`` for small nets); tests/unit/test_fastpath.py checks it bit-identical to the step."""
    p, g = [torch.ones(3)], [torch.full((3,), 0.5)]
    m, v, steps = [torch.zeros(3)], [torch.zeros(3)], [torch.zeros(())]
    torch._foreach_add_(steps, 1)
    torch._fused_adam_(p, g, m, v, [], steps, amsgrad=False, lr=0.1, beta1=0.9, beta2=0.999, weight_decay=0.0,
                       eps=1e-8, maximize=False)
    torch.testing.assert_close(p[0], torch.full((3,), 0.9))  # first Adam step: lr * sign(grad)


def test_torch_foreach_copy_and_lerp_sync_a_target_network() -> None:
    """The DQN learner's target sync (hard copy, polyak) in one call over all tensors."""
    dst, src = [torch.zeros(2), torch.zeros(3)], [torch.ones(2), torch.full((3,), 2.0)]
    torch._foreach_lerp_(dst, src, 0.25)
    torch.testing.assert_close(dst[1], torch.full((3,), 0.5))
    torch._foreach_copy_(dst, src)
    assert torch.equal(dst[0], src[0])


def test_torch_aten_activation_backward_kernels() -> None:
    """The hand-written MLP backward uses autograd's own single kernels for ReLU and tanh."""
    grad, h = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 0.5, -1.0])
    assert torch.ops.aten.threshold_backward(grad, h, 0).tolist() == [0.0, 2.0, 0.0]
    torch.testing.assert_close(torch.ops.aten.tanh_backward(grad, h), grad * (1 - h * h))


def test_torch_dynamo_reports_a_backend_failure_with_this_exception() -> None:
    """compile=true turns a failed inductor build into one line by catching this exception."""
    exc = torch._dynamo.exc.BackendCompilerFailed
    assert issubclass(exc, Exception) and "inner_exception" in inspect.signature(exc.__init__).parameters


def test_hydra_optuna_sweeper_internals_the_dqnrun_sweeper_builds_on() -> None:
    """hydra_plugins/dqnrun_sweeper subclasses the upstream sweeper's implementation class and reuses its search
    space parsing and trial configuration (no public API exposes them)."""
    pytest.importorskip("optuna")
    from hydra_plugins.hydra_optuna_sweeper import _impl

    for name in ("_process_searchspace_config", "_parse_sweeper_params_config", "_configure_trials",
                 "_get_directions"):
        assert callable(getattr(_impl.OptunaSweeperImpl, name, None)), name
    assert list(inspect.signature(_impl.OptunaSweeperImpl._configure_trials).parameters)[1:] == [
        "trials", "search_space_distributions", "fixed_params"]
    space, fixed = _impl.create_params_from_overrides(["a=choice(1,2)", "b=3"])
    assert set(space) == {"a"} and fixed == {"b": "3"}


def test_gymnasium_cartpole_and_vector_env_internals_the_together_steppers_write() -> None:
    """dqnrun.envs.together steps several runs' CartPole envs as one and writes back what each env's own step would
    leave: these attributes (tests/unit/test_together.py checks the results against the envs' own steps)."""
    import gymnasium as gym
    import numpy as np
    from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

    vec = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync")
    vec.reset(seed=0)
    vec.step(np.array([0, 1]))
    for name in ("_autoreset_envs", "_env_obs", "_observations", "_rewards", "_terminations", "_truncations"):
        assert isinstance(getattr(vec, name), np.ndarray | list), name
    assert callable(vec._add_info)
    chain: dict[str, object] = {}
    link = vec.envs[0]
    while isinstance(link, gym.Wrapper):
        chain[type(link).__name__] = link
        link = link.env
    assert isinstance(chain["TimeLimit"]._elapsed_steps, int) and chain["TimeLimit"]._max_episode_steps == 500
    assert chain["OrderEnforcing"]._has_reset is True and chain["PassiveEnvChecker"].checked_step is True
    assert link.state.shape == (4,) and link.steps_beyond_terminated is None
    numpy_vec = CartPoleVectorEnv(num_envs=3)
    numpy_vec.reset(seed=0)
    assert numpy_vec.state.shape == (4, 3) and numpy_vec.steps.dtype == np.int32
    assert numpy_vec.prev_done.dtype == np.bool_ and (numpy_vec.low, numpy_vec.high) == (-0.05, 0.05)


def test_torch_disable_dynamo_wrappers_read_a_cached_function() -> None:
    """dqnrun.population.engine.optimizers_without_dynamo seeds the cache that torch's ``_disable_dynamo`` wrappers
    read (``fn.__dynamo_disable``, ``fn`` their ``__wrapped__``), so that a population's optimizers never import
    torch._dynamo. In a fresh interpreter: optimizers made, saved and restored inside it import none; one made after
    it does, as torch does by itself."""
    code = """
import sys, torch
from dqnrun.population.engine import optimizers_without_dynamo
with optimizers_without_dynamo():
    p = [torch.nn.Parameter(torch.zeros(3))]
    for make in (torch.optim.Adam, torch.optim.RAdam, torch.optim.RMSprop, torch.optim.SGD):
        opt = make(p, lr=1e-3)
        opt.load_state_dict(opt.state_dict())
    inside = "torch._dynamo" in sys.modules
torch.optim.Adam(p, lr=1e-3)
print(inside, "torch._dynamo" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]



def test_python_runs_its_exit_handlers_on_request() -> None:
    """`dqnrun.cli.console` runs the exit handlers itself, then skips the interpreter's teardown (os._exit). In a
    fresh interpreter: running them here would run this test session's own."""
    code = ("import atexit, os\natexit.register(print, 'handler ran', flush=True)\natexit._run_exitfuncs()\n"
            "os._exit(0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == "handler ran\n", out
