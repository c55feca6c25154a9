"""Which jobs of a sweep can train together as one population, and why a job stands alone.

Members of a population share one network architecture, one env, one replay configuration and DQN's switches;
they may differ in what a batched update can hold per member (`MEMBER_KEYS`) and in what each run keeps to
itself (`RUN_KEYS`). Every other key splits groups. A job whose training a population cannot batch (another
algorithm, a network the stacked update does not implement, ...) runs as an ordinary run; `eligibility` says why.
docs/populations.md lists the keys.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence, Sized
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

# What may differ inside a population, per member: the batched update holds each of these per member.
MEMBER_KEYS = ("seed", "optimizer.lr", "learner.gamma", "learner.tau", "learner.max_grad_norm",
               "algo.target_update_interval", "schedule", "algo.q_lambda", "algo.lr_decay_steps")
# What each member's own run keeps to itself (its record, its cadences of evaluation, logging and checkpoints,
# its length): these never touch the batched update either.
RUN_KEYS = ("name", "tags", "objective", "eval", "checkpoint", "log", "total_steps", "stop_when_solved", "resume",
            "init_from", "torch_threads")
PQN = "dqnrun.algos.pqn.PQN"
MIN_SPLIT = 1  # a group is split for n_jobs into populations of at least this many members: every core busy
# dqnrun's Q-networks: plain MLPs and MinAtar's torso take the hand-written stacked update
# (`dqnrun.population.stacked`), every other head, torso and layer the batched autograd path (`.functional`)
PLAIN_MLP = ("dqnrun.networks.MLP", "dqnrun.networks.QNetwork")
TABLE = "dqnrun.networks.QTable"  # the Q-table: its own stacked update (`dqnrun.population.table`), SGD
STACKED_ACTIVATIONS = ("relu", "tanh")  # what the hand-written stack's backward is written for
STACKED_TORSOS = (None, "minatar")  # no torso, or MinAtar's one convolution and a ReLU
# The batched autograd path on a CPU, measured (docs/benchmarks.md, section 12): 8 CartPole seeds of C51 with a
# dueling head took 102 s as populations and 83 s with joblib; the update costs per member what a solo one does
# (vmap batches no arithmetic on a CPU core) plus functorch's own overhead. So by default it runs where a GPU is,
# and on a CPU only where it measured faster than separate runs (`_gains_on_cpu`).
AUTOGRAD_ON_CPU = ("the batched autograd path runs slower than separate runs on a CPU (0.79-0.81x joblib, "
                   "docs/benchmarks.md section 12); hydra.launcher.autograd=true batches it anyway")


def autograd_key(cfg: DictConfig) -> str | None:
    """The first setting that puts a job on the batched autograd path (``key=value``), or None: the stacked
    update takes it (`dqnrun.fastpath.supports`, decided here from the config)."""
    if OmegaConf.select(cfg, "algo._target_", default="") == PQN:
        return "algo=pqn"  # its update runs under vmap (`dqnrun.population.pqn`)
    if str(cfg.network.get("_target_", "")) == TABLE:
        return None  # the stacked tables' own update
    net, lc = cfg.network, cfg.learner
    for key in ("noisy", "dueling", "norm"):
        if net.get(key):
            return f"network.{key}={net.get(key)}"
    if _distributional(lc):
        return f"learner.distributional={lc.get('distributional')}"
    if lc.get("munchausen", False):
        return "learner.munchausen=true"
    if net.get("conv") not in STACKED_TORSOS:
        return f"network.conv={net.get('conv')}"
    act = net.get("activation", "relu")
    if act not in STACKED_ACTIVATIONS or (net.get("conv") and act != "relu"):
        return f"network.activation={act}"
    if not lc.get("fast_mlp", True):
        return "learner.fast_mlp=false"
    return None


def eligibility(cfg: DictConfig, autograd: Any = "auto") -> str | None:
    """None if a job can be a population member, else why it stands alone (one phrase). ``autograd``: whether jobs
    on the batched autograd path join (``auto``: where CUDA is, `AUTOGRAD_ON_CPU`)."""
    algo = str(OmegaConf.select(cfg, "algo._target_", default=""))
    pqn = algo == PQN
    if algo != "dqnrun.algos.dqn.DQN" and not pqn:
        return f"algo={algo.rsplit('.', 1)[-1].lower() or '?'}: populations batch DQN's and PQN's updates only"
    net = cfg.network
    target = str(net.get("_target_", ""))
    if target == TABLE and not pqn:
        return _table_eligibility(cfg)
    if target not in PLAIN_MLP:
        return f"network {target.rsplit('.', 1)[-1]}: populations stack dqnrun's own Q-networks"
    if net.get("noisy") and pqn:
        return "network.noisy=true: a PQN population's update has no NoisyNet noise streams"
    lc = cfg.learner
    if lc.get("loss", "huber") not in ("huber", "mse"):
        return f"learner.loss={lc.get('loss')}: the stacked update has huber and mse"
    opt = str(cfg.optimizer.get("_target_", ""))
    unusual = any(cfg.optimizer.get(k, False) for k in ("maximize", "differentiable", "capturable"))
    if pqn and (opt != "torch.optim.RAdam" or cfg.optimizer.get("decoupled_weight_decay", False) or unusual):
        return f"optimizer {opt.rsplit('.', 1)[-1]}: a PQN population steps RAdam (L2 weight decay, minimizing)"
    if not pqn and (opt != "torch.optim.Adam" or cfg.optimizer.get("amsgrad", False) or unusual):
        return f"optimizer {opt.rsplit('.', 1)[-1]}: a population steps Adam (no amsgrad, minimizing)"
    replay = cfg.get("replay") or {}
    if replay.get("latest", False):
        return "replay=latest: online learning without history stands alone"
    why = _anywhere(cfg)
    if why is not None:
        return why
    device = str(cfg.get("device", "auto"))
    key = autograd_key(cfg)
    if key is not None and autograd is not True and (autograd is False or not (_on_gpu(device) or _gains_on_cpu(cfg))):
        return f"{key}: {AUTOGRAD_ON_CPU}"
    return None


def _table_eligibility(cfg: DictConfig) -> str | None:
    """Why a Q-table job (``network=tabular``) stands alone, or None: its population steps SGD without momentum
    over the tables (`dqnrun.population.table`), with any replay and loss ``half_sse``, ``huber`` or ``mse``."""
    opt = cfg.optimizer
    target = str(opt.get("_target_", ""))
    if target != "torch.optim.SGD" or opt.get("momentum", 0.0) or opt.get("nesterov", False) or any(
            opt.get(k, False) for k in ("maximize", "differentiable")):
        return f"optimizer {target.rsplit('.', 1)[-1]}: a Q-table population steps SGD (no momentum, minimizing)"
    if cfg.learner.get("loss", "huber") not in ("half_sse", "huber", "mse"):
        return f"learner.loss={cfg.learner.get('loss')}: the stacked tables' update has half_sse, huber and mse"
    if cfg.learner.get("munchausen", False):
        return "learner.munchausen=true: the stacked tables' update has the plain TD target"
    return _anywhere(cfg)


def _anywhere(cfg: DictConfig) -> str | None:
    """What keeps any job out of a population, whatever its network."""
    if cfg.env.get("action_mask", False):
        return "env.action_mask=true: a population acts without masks"
    if cfg.get("compile", False):
        return "compile=true: a population runs its own batched update"
    device = str(cfg.get("device", "auto"))
    if device not in ("auto", "cpu") and device.split(":")[0] != "cuda":
        return f"device={device}: populations run on the CPU or on CUDA"
    return None


def _gains_on_cpu(cfg: DictConfig) -> bool:
    """Jobs off the hand-written stack whose population measured faster than separate runs on this CPU: the ones
    over an MLP (no convolutional torso) that learn through the batched products and one backward
    (`dqnrun.population.functional.StackedQ`): PQN (1.47x joblib for 8 CartPole seeds), and DQN with a plain TD
    loss over a dueling head, LayerNorm layers or another activation (8 CartPole seeds: 1.75x with
    ``network=dueling_mlp``, 1.40x with ``network.norm=layernorm``). Over a CNN torso the convolutions are this
    CPU's arithmetic either way (PQN on MinAtar Breakout 0.81x), and NoisyNet, distributional and Munchausen
    updates run under vmap (C51 + dueling 0.81x): docs/benchmarks.md section 12."""
    net, lc = cfg.network, cfg.learner
    if net.get("conv") or net.get("noisy"):
        return False
    return autograd_key(cfg) == "algo=pqn" or not (_distributional(lc) or lc.get("munchausen", False))


def _distributional(lc: Any) -> bool:
    """Whether the learner's head is distributional (C51, QR-DQN, IQN) rather than the Q-value head."""
    return lc.get("distributional", False) not in (False, None, "false", "q")


def _on_gpu(device: str) -> bool:
    """Whether a job with this ``device`` setting trains on CUDA (``auto``: where CUDA is)."""
    if device != "auto":
        return device.startswith("cuda")
    import torch

    return torch.cuda.is_available()


def _strip(tree: Any, keys: Sequence[str]) -> Any:
    for key in keys:
        *path, last = key.split(".")
        node = tree
        for p in path:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return tree


def group_key(cfg: DictConfig) -> str:
    """Jobs with equal keys can share a population: the resolved config without `MEMBER_KEYS` and `RUN_KEYS`."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    return json.dumps(_strip(tree, (*MEMBER_KEYS, *RUN_KEYS)), sort_keys=True, default=str)


def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def differing_keys(a: str, b: str) -> list[str]:
    """The keys in which two group keys differ (what splits two groups)."""
    fa, fb = flat(json.loads(a)), flat(json.loads(b))
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


@dataclass
class Plan:
    """How a sweep's jobs (by index) train: ``populations`` (each a list of job indices, trained together),
    ``alone`` (job index -> why it runs as an ordinary run) and ``splits`` (why groups were formed apart)."""

    populations: list[list[int]] = field(default_factory=list)
    alone: dict[int, str] = field(default_factory=dict)
    splits: list[str] = field(default_factory=list)


def plan(configs: Sequence[DictConfig], max_members: int, n_jobs: int = 1,
         jobs: Sequence[int] | None = None, others: int = 0, autograd: Any = "auto") -> Plan:
    """Group jobs: eligible jobs with equal `group_key` form a group (in job order); a group larger than
    ``max_members`` becomes several populations of balanced sizes, and groups are split further (largest first)
    until there are ``n_jobs`` populations to run side by side, as long as each keeps `MIN_SPLIT` members. A group
    of one job is a population of one (its run is the same either way). ``jobs``: the job number of each config,
    for the lines that say why groups were formed apart (default: the indices). ``others``: runs outside ``configs``
    that take workers too (a sweep's jobs that stand alone). ``autograd``: as for `eligibility`."""
    num = list(jobs) if jobs is not None else list(range(len(configs)))
    out = Plan()
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(configs):
        why = eligibility(cfg, autograd)
        if why is not None:
            out.alone[i] = why
            continue
        groups.setdefault(group_key(cfg), []).append(i)
    keys = list(groups)
    for key in keys[1:]:
        diff = differing_keys(keys[0], key)
        shown = ", ".join(diff[:4]) + (f" and {len(diff) - 4} more" if len(diff) > 4 else "")
        these, first = _jobs_of(groups[key], num), _jobs_of(groups[keys[0]], num)
        verb = "differs" if len(these) == 1 else "differ"
        out.splits.append(f"{jobs_word(these)} {span(these)} {verb} from {jobs_word(first)} {span(first)} in {shown}")
    chunks = {key: max(1, math.ceil(len(jobs) / max(1, max_members))) for key, jobs in groups.items()}
    while sum(chunks.values()) + len(out.alone) + others < n_jobs:  # jobs that stand alone keep workers busy too
        key = max(keys, key=lambda k: len(groups[k]) / chunks[k], default=None)
        if key is None or len(groups[key]) // (chunks[key] + 1) < MIN_SPLIT:
            break
        chunks[key] += 1
    for key in keys:
        out.populations += balanced(groups[key], chunks[key])
    return out


def _jobs_of(members: Sequence[int], num: Sequence[int]) -> list[int]:
    return sorted({num[i] for i in members})


def jobs_word(jobs: Sized) -> str:
    return "job" if len(jobs) == 1 else "jobs"


def balanced(items: Sequence[int], parts: int) -> list[list[int]]:
    """``items`` in order, cut into ``parts`` runs of sizes differing by at most one."""
    n = len(items)
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [list(items[bounds[i]:bounds[i + 1]]) for i in range(parts) if bounds[i + 1] > bounds[i]]


def span(jobs: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2, 5``."""
    parts, start = [], None
    for i, j in enumerate(jobs):
        if start is None:
            start = j
        if i + 1 == len(jobs) or jobs[i + 1] != j + 1:
            parts.append(str(start) if start == j else f"{start}-{j}")
            start = None
    return ", ".join(parts)
