"""PQN's loop (`PQN`): act (epsilon-greedy, recording max_a Q) -> step -> store -> at the rollout's end, returns
and updates -> log / evaluate / checkpoint. The package's face is `dqnrun.algos.pqn`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from dqnrun import metrics as M
from dqnrun.acting import epsilon_greedy, masked_argmax
from dqnrun.algos.base import Algorithm
from dqnrun.algos.pqn.returns import q_lambda_returns
from dqnrun.algos.pqn.rollout import Rollout
from dqnrun.fastpath import LeanStep
from dqnrun.run.session import Session

__all__ = ["LOSSES", "PQN"]
log = logging.getLogger("dqnrun.train")
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": nn.functional.mse_loss,
    "huber": nn.functional.smooth_l1_loss,
}


class PQN(Algorithm):
    """Parallel Q-learning over rollouts.

    Args:
        network: the Q-network (the policy): obs (B, *obs_shape) -> Q (B, A).
        optimizer: its optimizer (RAdam in the presets); ``optimizer.lr`` is the learning rate at env step 0.
        schedule: epsilon as a function of the env step (absolute).
        n_actions, num_envs, obs_shape, obs_dtype, seed: the env's action count, vector size and observations;
            the seed of the minibatch shuffles.
        num_steps: T, vector steps per rollout (each env contributes T steps).
        epochs, minibatches: passes over a rollout, and minibatches per pass.
        q_lambda: lambda of the Q(lambda) returns.
        lr_decay_steps: env steps over which the learning rate decays linearly to 0 (absolute, so a resume that
            raises total_steps keeps the schedule); None keeps it constant.
        reward_clip: the learner sees rewards clipped to [-c, c]; logs keep the raw ones.
        gamma, max_grad_norm, loss: the update's discount, gradient clipping (None: off) and loss (mse | huber).
    """

    def __init__(self, network: nn.Module, optimizer: torch.optim.Optimizer, schedule: Callable[[int], float],
                 n_actions: int, num_envs: int, obs_shape: Sequence[int], obs_dtype: np.dtype, seed: int = 0,
                 num_steps: int = 128, epochs: int = 4, minibatches: int = 4, q_lambda: float = 0.65,
                 lr_decay_steps: int | None = None, reward_clip: float | None = None, gamma: float = 0.99,
                 max_grad_norm: float | None = 10.0, loss: str = "mse") -> None:
        self.policy, self.optimizer, self.schedule = network, optimizer, schedule
        self.device = next(network.parameters()).device
        self.n_actions, self.num_envs = int(n_actions), int(num_envs)
        self.epochs, self.minibatches, self.q_lambda = int(epochs), int(minibatches), float(q_lambda)
        self.lr_decay_steps = None if lr_decay_steps is None else int(lr_decay_steps)
        self.reward_clip = None if reward_clip is None else float(reward_clip)
        self.gamma, self.max_grad_norm, self.loss_fn = float(gamma), max_grad_norm, LOSSES[loss]
        self.rollout = Rollout(num_steps, num_envs, obs_shape, obs_dtype)
        self.base_lr = float(optimizer.param_groups[0]["lr"])
        self.step_optimizer = LeanStep(optimizer)
        self.shuffle = torch.Generator().manual_seed(int(seed))
        self._updates = 0
        self._loss_sum, self._q_sum, self._n = 0.0, 0.0, 0

    @property
    def updates(self) -> int:
        return self._updates

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """Q (E, A) of observations (E, *obs_shape), without a graph."""
        with torch.inference_mode():
            return self.policy(torch.as_tensor(obs, device=self.device)).float().cpu().numpy()

    def act(self, obs: np.ndarray, step: int, rng: np.random.Generator,
            mask: np.ndarray | None = None) -> np.ndarray:
        q = self.q_values(obs)
        return epsilon_greedy(obs, lambda _o, m=None: masked_argmax(q, m), self.schedule(step), rng, self.n_actions,
                              mask)

    def train(self, run: Session) -> None:
        clip = self.reward_clip
        while run.running():
            # --- act: epsilon-greedy over the legal actions (all, without env.action_mask); max_a Q(s, a) over
            # them is kept for the Q(lambda) returns (no target network)
            obs, mask = run.cursor.obs, run.cursor.mask
            q = self.q_values(obs)
            greedy = masked_argmax(q, mask)
            actions = epsilon_greedy(obs, lambda _o, _m=None, g=greedy: g, self.schedule(run.step), run.rng,
                                     self.n_actions, mask)
            t = run.env_step(actions)  # t.valid is False on autoreset steps: they are not transitions
            reward = t.reward if clip is None else np.clip(t.reward, -clip, clip)
            self.rollout.add(t.obs, t.action, reward, t.terminated, t.truncated, t.valid,
                             q[np.arange(len(greedy)), greedy])

            # --- learn at the end of a rollout: returns backward over it, then epochs x minibatches updates
            if self.rollout.full:
                self.learn(run.cursor.obs, rollout_start=run.step - self.rollout.pos * self.num_envs,
                           last_mask=run.cursor.mask)

            # --- log, evaluate, checkpoint
            if run.after_step(t.before):
                break

    def learn(self, last_obs: np.ndarray, rollout_start: int, last_mask: np.ndarray | None = None) -> None:
        """Update on the full rollout; ``last_obs`` (E, *obs_shape) follows its last step (``last_mask``: its
        legal actions)."""
        r = self.rollout
        q_last = self.q_values(last_obs)
        last_value = q_last[np.arange(len(q_last)), masked_argmax(q_last, last_mask)]
        returns = q_lambda_returns(r.reward, r.terminated, r.ended, r.valid, r.value, last_value, self.gamma,
                                   self.q_lambda)
        keep = np.flatnonzero(r.valid.reshape(-1))
        obs = torch.as_tensor(r.obs.reshape(-1, *r.obs.shape[2:])[keep], device=self.device)
        action = torch.as_tensor(r.action.reshape(-1)[keep], device=self.device)
        target = torch.as_tensor(returns.reshape(-1)[keep], dtype=torch.float32, device=self.device)
        if self.lr_decay_steps is not None:  # CleanRL's annealing, in absolute env steps
            self.optimizer.param_groups[0]["lr"] = self.base_lr * max(0.0, 1.0 - rollout_start / self.lr_decay_steps)
        for _ in range(self.epochs):
            order = torch.randperm(len(keep), generator=self.shuffle).to(self.device)
            for mb in order.tensor_split(self.minibatches):
                self._update(obs[mb], action[mb], target[mb])
        r.clear()

    def _update(self, obs: torch.Tensor, action: torch.Tensor, target: torch.Tensor) -> None:
        q = self.policy(obs).gather(1, action.unsqueeze(1)).squeeze(1)
        loss = self.loss_fn(q, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm, foreach=True)
        self.step_optimizer()
        self._updates += 1
        self._loss_sum = self._loss_sum + loss.detach()  # tensors: no device sync per update
        self._q_sum = self._q_sum + q.detach().mean()
        self._n += 1

    def read_metrics(self, step: int) -> dict[str, float]:
        self.check_finite()
        out = {M.EPSILON: self.schedule(step), M.LEARNING_RATE: float(self.optimizer.param_groups[0]["lr"])}
        if self._n:
            out[M.TD_LOSS], out[M.Q_VALUES] = float(self._loss_sum) / self._n, float(self._q_sum) / self._n
            self._loss_sum, self._q_sum, self._n = 0.0, 0.0, 0
        return out

    def check_finite(self) -> None:
        if not np.isfinite(float(self._loss_sum + self._q_sum)):
            raise FloatingPointError("non-finite loss or Q-value")

    def nonfinite_cause(self) -> str | None:
        r = self.rollout
        if r.obs.dtype.kind == "f" and not np.isfinite(r.obs[:r.pos]).all():
            return "the env returned non-finite observations"
        if not np.isfinite(r.reward[:r.pos]).all():
            return "the env returned non-finite rewards"
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "updates": self._updates, "shuffle": self.shuffle.get_state(),
                "metric_sums": {"loss": float(self._loss_sum), "q": float(self._q_sum), "n": self._n}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_optimizer.rebind()
        self._updates = int(state["updates"])
        self.shuffle.set_state(state["shuffle"])
        sums = state["metric_sums"]
        self._loss_sum, self._q_sum, self._n = float(sums["loss"]), float(sums["q"]), int(sums["n"])

    def data_state(self) -> dict[str, Any] | None:
        return self.rollout.state_dict()

    def load_data_state(self, state: dict[str, Any] | None, step: int) -> None:
        """The rollout in progress; without it (not saved, or from another step) a new rollout starts."""
        if state is not None:
            self.rollout.load_state_dict(state)
        else:
            log.warning("resume: no rollout saved for step %d; a new rollout starts", step)
