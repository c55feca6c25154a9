"""DQN's own keys: their rules and the checks across them, read before any run starts (no torch here: the command
line checks a sweep's jobs in a process that never trains). What the network must fit is checked where the
network is built (`dqnrun.algos.dqn.build.preflight`).
"""

from __future__ import annotations

from omegaconf import DictConfig

from dqnrun.algos.dqn.heads import HEADS, head_of
from dqnrun.config.rules import Rule, cross_check
from dqnrun.errors import UsageError

# Keys whose change would make a resume meaningless (other network shape, other buffer).
# Acts, explores and bootstraps (the max, Double DQN's argmax, C51's, QR's and IQN's greedy a*) only through the
# legal actions of envs that report them (env.action_mask); the replay keeps each row's next legal actions.
ACTION_MASKS = True
FROZEN_ON_RESUME = ("network", "replay.capacity", "replay.storage")

# Validation rules of DQN's own keys: (kind, low, high, low_inclusive, high_inclusive, nullable).
RULES: dict[str, Rule] = {
    "algo.train_freq": ("int", 1, float("inf"), True, True, False),
    "algo.gradient_steps": ("int", 1, float("inf"), True, True, False),
    "algo.learning_starts": ("int", 0, float("inf"), True, True, False),
    "algo.target_update_interval": ("int", 1, float("inf"), True, True, False),
    "algo.reward_clip": ("float", 0, float("inf"), False, False, True),
    "learner.gamma": ("float", 0, 1, True, True, False),
    "learner.tau": ("float", 0, 1, False, True, False),
    "learner.max_grad_norm": ("float", 0, float("inf"), False, False, True),
    "replay.capacity": ("int", 1, float("inf"), True, True, False),
    "replay.batch_size": ("int", 1, float("inf"), True, True, False),
    "replay.n_step": ("int", 1, 1000, True, True, False),
    "replay.alpha": ("float", 0, 1, True, True, False),
    "replay.beta": ("float", 0, 1, True, True, False),
    "replay.beta_steps": ("int", 0, float("inf"), True, True, False),
    "network.quantiles": ("int", 2, 10_000, True, True, False),
    "network.quantile_embedding": ("int", 1, 10_000, True, True, False),
    "learner.iqn_n": ("int", 1, 10_000, True, True, False),
    "learner.iqn_n_prime": ("int", 1, 10_000, True, True, False),
    "learner.iqn_k": ("int", 1, 10_000, True, True, False),
    "learner.munchausen_alpha": ("float", 0, 1, True, True, False),
    "learner.munchausen_tau": ("float", 0, float("inf"), False, False, False),
    "learner.munchausen_clip": ("float", -float("inf"), 0, False, True, False),
}
BOOL_KEYS = ("learner.double", "learner.fast_mlp", "learner.munchausen")
CHOICES = {
    "learner.loss": ("huber", "mse", "half_sse"),
    "replay.storage": ("transitions", "frames"),
    "replay.device": ("auto", "cpu", "cuda"),
}


def check(cfg: DictConfig) -> None:
    """DQN's rules across keys; each raises UsageError naming the keys and what to do."""
    cross_check(cfg, RULES, BOOL_KEYS, CHOICES)
    algo, replay = cfg.algo, cfg.replay
    _check_heads(cfg)
    if head_of(cfg.learner.get("distributional", False)) == "c51":
        if not {"atoms", "v_min", "v_max"} <= set(cfg.network):
            raise UsageError(f"learner.distributional=true needs a network with a C51 support (network.atoms, "
                             f"v_min, v_max); {cfg.network.get('_target_')} has none: use network=mlp or a CNN")
        if not cfg.network.v_min < cfg.network.v_max:
            raise UsageError(f"network.v_min={cfg.network.v_min} must be below network.v_max={cfg.network.v_max}")
    if replay.get("storage") == "frames" and replay.get("latest"):
        raise UsageError("replay.storage=frames does not apply to replay=latest; use replay=uniform or prioritized")
    if replay.batch_size > replay.capacity:
        raise UsageError(f"replay.batch_size={replay.batch_size} exceeds replay.capacity={replay.capacity}; "
                         "lower the batch size or raise the capacity")
    if replay.get("latest") and algo.train_freq != cfg.env.num_envs:
        raise UsageError(
            f"replay=latest learns from each vector step once, so algo.train_freq={algo.train_freq} must equal "
            f"env.num_envs={cfg.env.num_envs}; set algo.train_freq={cfg.env.num_envs}")
    if cfg.total_steps <= algo.learning_starts:
        raise UsageError(f"total_steps={cfg.total_steps} is not above algo.learning_starts={algo.learning_starts}: "
                         "the run would never update; raise total_steps or lower learning_starts")


def _check_heads(cfg: DictConfig) -> None:
    """``learner.distributional`` and ``learner.munchausen`` against each other and the rest."""
    lc = cfg.learner
    dist = lc.get("distributional", False)
    # bool, or one of the named heads (an int 0/1 would pass a plain `in` test: False == 0)
    if not (isinstance(dist, bool) or (isinstance(dist, str) and dist in HEADS)):
        raise UsageError(f"learner.distributional={dist!r} is not one of false | true (C51) | c51 | qr | iqn")
    head = head_of(dist)
    need = {"qr": "quantiles", "iqn": "quantile_embedding"}.get(head)
    if need is not None and need not in cfg.network:
        raise UsageError(f"learner.distributional={dist} needs a network with a quantile head (network.{need}); "
                         f"{cfg.network.get('_target_')} has none: use network=mlp or a CNN")
    if not lc.get("munchausen", False):
        return
    if head == "c51":
        # M-DQN's bootstrap is a softmax-weighted sum of the next Q-values; on C51 that is a mixture of shifted
        # categorical distributions, which neither paper defines (the paper's distributional variant is M-IQN)
        raise UsageError("learner.munchausen=true does not apply to C51 (learner.distributional=true); use "
                         "learner.distributional=iqn (M-IQN, as in the paper) or qr, or drop one of them")
    if cfg.env.get("action_mask", False):
        # the log-policy bonus needs pi(.|s) over the legal actions at s, and the replay keeps only s' legal actions
        raise UsageError("learner.munchausen=true does not act through action masks yet (env.action_mask=true): its "
                         "bonus needs the legal actions of s, which the replay does not keep; drop one of them")
    if lc.get("double", False):
        # the soft bootstrap averages over pi(.|s'): there is no argmax for the online net to pick
        raise UsageError("learner.munchausen=true and learner.double=true exclude each other: Munchausen's target "
                         "averages the next Q-values under its softmax policy, so there is no argmax to decouple; "
                         "drop learner.double")
