"""DQN's training loop (`DQN`): act -> step -> store -> (sync target) -> (update burst) -> log / evaluate /
checkpoint, in the order it happens (CleanRL's ``dqn.py`` reads the same way). The package's face is
`dqnrun.algos.dqn`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from dqnrun import metrics as M
from dqnrun.acting import epsilon_greedy
from dqnrun.algos.base import Algorithm
from dqnrun.algos.dqn.learner import Learner
from dqnrun.replay import ReplayBuffer
from dqnrun.run.session import Session, crossings

__all__ = ["DQN"]
log = logging.getLogger("dqnrun.train")


class DQN(Algorithm):
    """DQN with a replay buffer and a target network.

    Args:
        learner: the online and target networks, the optimizer and the update (`Learner`).
        replay: the replay buffer.
        schedule: epsilon as a function of the env step.
        n_actions: A, the size of the Discrete action space.
        train_freq: env steps between update bursts (summed over the vector envs, as SB3 counts them).
        gradient_steps: gradient steps per burst.
        learning_starts: env steps of uniform-random acting before the first update.
        target_update_interval: env steps between target syncs (hard copy, or polyak with ``learner.tau``).
        reward_clip: the learner sees rewards clipped to [-c, c] (Atari); logs and evaluation keep raw scores.
    """

    def __init__(self, learner: Learner, replay: ReplayBuffer, schedule: Callable[[int], float], n_actions: int,
                 train_freq: int = 4, gradient_steps: int = 1, learning_starts: int = 1000,
                 target_update_interval: int = 200, reward_clip: float | None = None) -> None:
        self.learner, self.replay, self.schedule, self.n_actions = learner, replay, schedule, int(n_actions)
        self.train_freq, self.gradient_steps = int(train_freq), int(gradient_steps)
        self.learning_starts, self.target_update_interval = int(learning_starts), int(target_update_interval)
        self.reward_clip = None if reward_clip is None else float(reward_clip)
        self.learn_after = self.learning_starts  # env step after which updates run (later after a refill)
        self.policy = learner.online
        self.device = learner.device

    @property
    def updates(self) -> int:
        return self.learner.updates

    def act(self, obs: np.ndarray, step: int, rng: np.random.Generator,
            mask: np.ndarray | None = None) -> np.ndarray:
        """Uniform-random before learning starts, then epsilon-greedy; the Q forward runs only for the envs that
        act greedily. With ``mask`` (E, A) bool (``env.action_mask``) both are over the legal actions only."""
        epsilon = 1.0 if step < self.learning_starts else self.schedule(step)
        return epsilon_greedy(obs, self.learner.greedy_actions, epsilon, rng, self.n_actions, mask)

    def train(self, run: Session) -> None:
        clip = self.reward_clip
        while run.running():
            # --- act, then step the envs. NEXT_STEP autoreset: the step after an episode's end returns the reset
            # observation (action ignored, reward 0): t.valid is False there and the replay skips that row.
            # t.next_obs of an ending step is the true final observation, so a truncation bootstraps correctly.
            # With env.action_mask the cursor and each transition carry the legal actions of their observations:
            # acting picks among those of obs, and the replay keeps next_obs's for the bootstrap's max.
            actions = self.act(run.cursor.obs, run.step, run.rng, run.cursor.mask)
            t = run.env_step(actions)
            reward = t.reward if clip is None else np.clip(t.reward, -clip, clip)
            self.replay.add(t.obs, t.action, reward, t.next_obs, t.terminated, t.truncated, t.valid, t.next_mask)

            # --- learn: target sync first (SB3's order), then one burst; the target is frozen within a burst.
            # Never from an empty buffer (n-step rows appear only once a window fills).
            if run.step > self.learn_after and self.replay.size:
                if crossings(t.before, run.step, self.target_update_interval):
                    self.learner.sync_target()
                bursts = crossings(t.before, run.step, self.train_freq)
                if bursts:
                    batch = self.replay.sample(n_batches=bursts * self.gradient_steps, step=run.step)
                    for rows, td_abs in self.learner.update(batch):  # prioritized replay only
                        self.replay.update_priorities(rows, td_abs)

            # --- log, evaluate, checkpoint (at their cadences; evaluation is not training time)
            if run.after_step(t.before):
                break

    def read_metrics(self, step: int) -> dict[str, float]:
        out = {M.EPSILON: self.schedule(step),  # the epsilon the step's actions were taken with
               M.LEARNING_RATE: float(self.learner.optimizer.param_groups[0]["lr"])}
        learned = self.learner.read_metrics()
        if learned is not None:
            out[M.TD_LOSS], out[M.Q_VALUES] = learned["td_loss"], learned["q_values"]
        return out

    def check_finite(self) -> None:
        self.learner.check_finite()

    def nonfinite_cause(self) -> str | None:
        """Whether the experience itself holds NaN or inf (an env's bug rather than a diverging update)."""
        r = self.replay
        n = r.size
        for name in ("obs", "next_obs", "reward"):
            data = getattr(r, name, None)
            if isinstance(data, torch.Tensor) and data.is_floating_point() and n:
                bad = int((~torch.isfinite(data[:n].reshape(n, -1))).any(1).sum())
                if bad:
                    what = "rewards" if name == "reward" else "observations"
                    return f"the env returned non-finite {what} ({bad} of {n} stored transitions hold NaN or inf)"
        return None

    def state_dict(self) -> dict[str, Any]:
        return self.learner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state)

    def data_state(self) -> dict[str, Any] | None:
        return self.replay.state_dict()

    def load_data_state(self, state: dict[str, Any] | None, step: int) -> None:
        """The saved replay buffer; without one (not saved, too large, or torn by a crash) the buffer is refilled
        for ``learning_starts`` env steps, acting on the schedule, before updates resume."""
        if state is not None:
            self.replay.load_state_dict(state)
            return
        self.learn_after = step + self.learning_starts
        log.warning("resume: no replay buffer saved for step %d; refilling it for %d env steps (algo.learning_starts) "
                    "before updating again", step, self.learning_starts)

    def init_from(self, policy_state: dict[str, Any]) -> None:
        """Trained weights into both networks; optimizer, counters, replay and exploration start fresh."""
        self.policy.load_state_dict(policy_state)
        with torch.no_grad():
            self.learner.sync_target(hard=True)
