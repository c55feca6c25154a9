"""`dqnrun export ckpt=PATH format=torchscript|onnx [out=PATH]`: a policy file that needs no dqnrun to run.

The network is rebuilt through `dqnrun.builders` from the config stored in the checkpoint (as `dqnrun eval`
does), put in eval mode (NoisyNet: mean weights) and wrapped so that the file maps float32 observations
``(B, *obs_shape)``, any batch size, to Q-values ``(B, A)`` (expected Q-values for C51). Pixel networks take
raw pixel values (0-255) and scale them inside; Discrete observations are their integer index as a float.

- ``format=torchscript`` -> ``torch.jit.load(path)(obs)`` (traced; ``torch.jit.script`` is deprecated in torch
  2.13 and the network has no data-dependent control flow, so tracing records it exactly).
- ``format=onnx`` -> ``onnxruntime.InferenceSession(path).run(None, {"obs": obs})`` (torch 2.13's dynamo
  exporter, with a dynamic batch dimension; needs onnx and onnxscript, which `make install` installs).

By default the file goes to ``export/policy.pt`` or ``export/policy.onnx`` in the checkpoint's run directory.
Both files carry metadata (env id, observation shape, action count, checkpoint step) as JSON: TorchScript
in the extra file ``dqnrun.json``, ONNX in the model's metadata_props.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dqnrun.errors import UsageError, write_failure

FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}


class ExportedPolicy(nn.Module):
    """float32 observations (B, *obs_shape) -> Q-values (B, A), for a network in eval mode."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).float()


def example_batch(obs_shape: tuple[int, ...], n: int = 2) -> torch.Tensor:
    return torch.zeros((n, *obs_shape), dtype=torch.float32)


def export(ckpt: str | Path, fmt: str = "torchscript", out: str | Path | None = None) -> Path:
    """Write the policy file and return its path."""
    from dqnrun.envs import obs_dtype_and_shape
    from dqnrun.policy import load_policy
    from dqnrun.run.artifacts import run_dir_of

    if fmt not in FORMATS:
        raise UsageError(f"format={fmt!r} is not one of {' | '.join(FORMATS)}")
    loaded = load_policy(ckpt)
    path = run_dir_of(loaded.path) / "export" / f"policy{FORMATS[fmt]}" if out is None else Path(out).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(f".{path.name}.probe"), "wb"):
            pass
        path.with_name(f".{path.name}.probe").unlink()
    except OSError as exc:
        raise UsageError(f"{write_failure(path, exc)}; pass out=PATH to write the policy elsewhere") from None
    policy = ExportedPolicy(loaded.net.cpu().eval()).eval().requires_grad_(False)  # outputs without grad_fn
    _, obs_shape, _ = obs_dtype_and_shape(loaded.spec.observation_space)
    meta = {"env_id": str(loaded.config.env.id), "obs_shape": list(obs_shape), "n_actions": loaded.spec.n_actions,
            "algo": str(loaded.payload["algo"]), "step": loaded.step, "checkpoint": str(loaded.path),
            "input": "float32 (B, *obs_shape)", "output": "Q-values (B, n_actions)"}
    x = example_batch(tuple(obs_shape))
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notice: tracing still works in 2.13
            with torch.no_grad():
                traced = torch.jit.trace(policy, x)
            torch.jit.save(traced, str(path), _extra_files={"dqnrun.json": json.dumps(meta)})
    else:
        _export_onnx(policy, x, path, meta)
    return path


def _export_onnx(policy: nn.Module, x: torch.Tensor, path: Path, meta: dict[str, Any]) -> None:
    try:
        import onnx
        import onnxscript  # noqa: F401 - needed by torch's dynamo exporter
    except ImportError:
        raise UsageError("format=onnx needs onnx and onnxscript: pip install 'dqnrun[export]' "
                         "(make install does)") from None
    from torch.export import Dim

    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(policy, (x,), str(path), dynamo=True, input_names=["obs"], output_names=["q_values"],
                              dynamic_shapes={"obs": {0: Dim("batch", min=1)}}, verbose=False,
                              external_data=False)  # one self-contained file
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"format=onnx: torch.onnx.export failed ({first[:200]}); try format=torchscript") from None
    finally:
        quiet.setLevel(level)
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "dqnrun", json.dumps(meta)
    onnx.save(model, str(path))
