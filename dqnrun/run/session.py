"""The chores every training loop shares, so that an algorithm's loop reads top to bottom.

An algorithm's ``train(session)`` does::

    while session.running():
        actions = ...                            # its own acting
        t = session.env_step(actions)            # one vector step: autoreset, episode statistics, counting
        ...                                      # its own storing and learning, from t
        if session.after_step(t.before):         # logging, evaluation and checkpoints at their cadences
            break

Counting: ``step`` is env transitions summed over the vector envs; each cadence is in env steps and fires once
for every multiple of it that a vector step crosses (`crossings`).

Autoreset. Gymnasium 1.x NEXT_STEP: the step after an episode ends is a reset step (its action is ignored, its
reward is 0); `env_step` marks it invalid (``t.valid``), so nothing learns from it. ``t.next_obs`` of an ending
step is the true final observation, so bootstrapping through a truncation is right. An env may report, in its
step info, a ``GAME_OVER`` mask beside ``terminated``: Atari with life loss sets ``terminated`` at every lost life
while the game plays on, and only a game over (or a truncation) makes the next step an autoreset. So the
autoreset mask and the episode statistics follow ``GAME_OVER`` (whole games); an algorithm's bootstrap follows
``terminated`` and ``truncated``. Without the key a game is an episode.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from dqnrun import metrics as M
from dqnrun.envs import GAME_OVER, shares_obs_buffer, steps_in_two_halves
from dqnrun.envs.masks import vector_mask
from dqnrun.errors import EnvError, TrainingError
from dqnrun.loggers import Logger, flush_logger

progress_log = logging.getLogger(M.PROGRESS_LOGGER)


class Learning(Protocol):
    """What a session reads from the algorithm it runs (`dqnrun.algos.base.Algorithm` has both)."""

    def read_metrics(self, step: int) -> dict[str, float]: ...

    def check_finite(self) -> None: ...


@dataclass(frozen=True)
class Cadence:
    """When a run logs, evaluates, checkpoints and stops; all in env steps summed over the vector envs."""

    total_steps: int
    eval_every: int
    log_every: int
    checkpoint_every: int
    solved_score: float | None = None
    progress: bool = True
    stop_when_solved: bool = False  # end at the first evaluation that reaches solved_score
    label: str | None = None  # shown before the bar (a sweep job's number)


@dataclass
class LoopState:
    """Counters and statistics that a checkpoint must carry for an exact resume."""

    step: int = 0
    train_seconds: float = 0.0
    best_eval_return: float | None = None
    last_eval_return: float | None = None
    solved_at_step: int | None = None
    solved_at_seconds: float | None = None
    eval_history: list[tuple[int, float]] = field(default_factory=list)
    episodes: int = 0
    recent_train_return: float | None = None  # mean raw return of the last RECENT training episodes
    recent_returns: list[float] = field(default_factory=list)  # those returns, oldest first

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> LoopState:
        d = dict(d)
        d["eval_history"] = [tuple(x) for x in d.get("eval_history", [])]
        d["recent_returns"] = [float(x) for x in d.get("recent_returns", [])]
        return cls(**d)


@dataclass
class EnvCursor:
    """Where the vector env stands between steps: its current observation (E, *obs_shape), the mask of
    envs whose last step ended an episode (their next step is an autoreset, to be skipped), and the
    running episode statistics (E,). The session updates it in place; resume restores it with the env."""

    obs: np.ndarray
    autoreset: np.ndarray
    ep_return: np.ndarray
    ep_length: np.ndarray
    mask: np.ndarray | None = None  # (E, A) bool: the legal actions of ``obs`` (env.action_mask), else None

    @classmethod
    def start(cls, obs: np.ndarray, mask: np.ndarray | None = None) -> EnvCursor:
        n = len(obs)
        return cls(obs, np.zeros(n, bool), np.zeros(n, np.float64), np.zeros(n, np.int64), mask)


@dataclass(slots=True)  # built every env step: slots, not frozen (a frozen dataclass's __init__ costs 4x)
class Transition:
    """One vector step, (E,) leading dims: what an algorithm stores or learns from. ``before`` is the env step
    count before it; ``valid`` is False for autoreset steps, which are not transitions."""

    before: int
    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    valid: np.ndarray
    info: dict[str, Any]
    next_mask: np.ndarray | None = None  # (E, A) bool legal actions of next_obs (env.action_mask), else None


class StopFlag:
    """Turns SIGINT, SIGTERM and SIGUSR2 into a request the loop honours at a step boundary.

    A second SIGINT aborts at once. SIGUSR2 is what submitit (SLURM) sends before preempting a job; once the
    caller has saved its checkpoint it calls ``chain()``, which hands the signal on to the handler installed
    before ours (submitit's checkpoint-and-requeue).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self, signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)) -> StopFlag:
        for s in signums:
            try:
                self._previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (a notebook's worker thread): signals stay as they are
                break
        return self

    def chain(self) -> bool:
        """Call the previous handler of the received signal if it was a Python callable; True if called."""
        previous = self._previous.get(self.signum) if self.signum is not None else None
        if callable(previous):
            previous(self.signum, None)
            return True
        return False

    def uninstall(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None


RECENT = 20  # training episodes in the recent return (progress bar, log lines, results.json)


def crossings(before: int, after: int, every: int) -> int:
    """How many multiples of ``every`` lie in (before, after]."""
    return after // every - before // every if every > 0 else 0


class Session:
    """A training run in progress, as an algorithm's loop sees it.

    Owns the vector env's cursor, the counters (``state``), the exploration RNG (``rng``) and the stop flag;
    calls back ``evaluate()`` (a greedy mean return) and ``checkpoint(kind)`` (``periodic``, ``best`` and
    ``progress``, the live results.json) at their cadences. Evaluation and checkpoints are excluded from
    ``state.train_seconds``.
    """

    def __init__(self, envs: gym.vector.VectorEnv, cursor: EnvCursor, state: LoopState, cadence: Cadence,
                 rng: np.random.Generator, algo: Learning, logger: Logger,
                 evaluate: Callable[[], float] | None, checkpoint: Callable[[str], None],
                 stop: StopFlag | None = None, env_id: str = "the env", masked: bool = False) -> None:
        self.env_id = env_id
        self.masked = masked  # the env reports legal actions: the cursor and each Transition carry them
        self.envs, self.cursor, self.state, self.cadence = envs, cursor, state, cadence
        self.rng, self.algo, self.logger = rng, algo, logger
        self.evaluate, self.checkpoint, self.stop = evaluate, checkpoint, stop
        self.n_envs = envs.num_envs
        self.n_actions = int(envs.single_action_space.n)
        self.reason = "completed"
        self._shared_obs = shares_obs_buffer(envs)  # the env overwrites its obs array in place on every step
        self._two_halves = steps_in_two_halves(envs)
        self._sent: np.ndarray | None = None
        self._all_valid = np.ones(self.n_envs, dtype=bool)  # ``valid`` of a step without autoresets (read-only)
        self._all_valid.flags.writeable = False
        if self._shared_obs:
            cursor.obs = cursor.obs.copy()
        self._pending: list[tuple[int, float, int]] = []
        self._recent: deque[float] = deque(state.recent_returns, maxlen=RECENT)
        self._bar = M.progress_bar(cadence.total_steps, initial=state.step, enabled=cadence.progress,
                                   desc=cadence.label)
        M.quiet_console(not self._bar.disable)
        self._last_log_step = state.step
        self._seg_start = time.perf_counter()
        hook = os.environ.get("DQNRUN_TEST_SIGNAL_AT_STEP")  # test hook: a real signal at a chosen env step
        self._signal_at = int(hook) if hook else None
        self._quiet_until = self._next_due(state.step)

    @property
    def step(self) -> int:
        return self.state.step

    def running(self) -> bool:
        """True while the run has steps left and no stop was requested (then ``reason`` is ``interrupted``)."""
        if self.state.step >= self.cadence.total_steps:
            return False
        if self.stop is not None and self.stop.requested:
            self.reason = "interrupted"
            return False
        if self._signal_at is not None and self.state.step >= self._signal_at:
            self._signal_at = None  # like a signal arriving mid-step: honoured at the next step boundary
            os.kill(os.getpid(), int(os.environ.get("DQNRUN_TEST_SIGNAL", signal.SIGTERM)))
        return True

    def env_step(self, actions: np.ndarray) -> Transition:
        """Step the vector env with ``actions`` (E,), keep the episode statistics, count the steps."""
        self.env_send(actions)
        return self.env_recv()

    def env_send(self, actions: np.ndarray) -> None:
        """The first half of `env_step`: an env that steps in its own threads (ale_py's C++ vector env) starts
        on ``actions`` and runs while the caller goes on (a population sends every member's actions before it
        receives any); any other env steps in `env_recv`."""
        self._sent = actions
        if self._two_halves:
            try:
                self.envs.send(actions)  # type: ignore[attr-defined]
            except Exception as exc:
                raise EnvError(f"step() raised {type(exc).__name__}: {exc}", "step", exc) from exc

    def env_recv(self, stepped: tuple | None = None) -> Transition:
        """The second half of `env_step`: the step's results, the episode statistics, the count. ``stepped``: what
        ``envs.step`` returned for the sent actions, where the caller stepped the envs itself (a population steps
        its members' envs together, `dqnrun.envs.together`)."""
        c, state, actions = self.cursor, self.state, self._sent
        obs = c.obs
        try:
            if stepped is None:
                if self._two_halves:
                    next_obs, reward, terminated, truncated, info = self.envs.recv()  # type: ignore[attr-defined]
                else:
                    next_obs, reward, terminated, truncated, info = self.envs.step(actions)
            elif isinstance(stepped, Exception):  # its envs, stepped with others', raised
                raise stepped
            else:
                next_obs, reward, terminated, truncated, info = stepped
        except Exception as exc:  # the env's own bug: named by the lifecycle (`dqnrun.envs.diagnose`)
            raise EnvError(f"step() raised {type(exc).__name__}: {exc}", "step", exc) from exc
        done = info[GAME_OVER] if GAME_OVER in info else terminated | truncated  # a whole game ended
        if np.count_nonzero(c.autoreset):  # some env's step was its autoreset, which counts for nothing
            valid = ~c.autoreset
            c.ep_return += reward * valid
            c.ep_length += valid
            ended = done & valid
        else:  # every env's step is a transition (most steps): the same sums, three operations fewer
            valid = self._all_valid
            c.ep_return += reward
            c.ep_length += 1
            ended = done
        before = state.step
        state.step += self.n_envs
        if np.count_nonzero(ended):
            for e in np.flatnonzero(ended):
                self._pending.append((state.step, float(c.ep_return[e]), int(c.ep_length[e])))
                self._recent.append(float(c.ep_return[e]))
            c.ep_return[ended] = 0.0
            c.ep_length[ended] = 0
            state.episodes += int(ended.sum())
        c.autoreset = done
        c.obs = next_obs.copy() if self._shared_obs else next_obs
        next_mask = None
        if self.masked:  # the mask of each env's returned observation (a reset one after an autoreset)
            try:
                next_mask = c.mask = vector_mask(info, self.n_envs)
            except RuntimeError as exc:
                raise EnvError(f"step() {exc}", "step", exc) from exc
        return Transition(before, obs, actions, reward, next_obs, terminated, truncated, valid, info, next_mask)

    def after_step(self, before: int) -> bool:
        """Log, evaluate and checkpoint where the step from ``before`` crossed their cadences. Returns True when
        the run must stop now (``stop_when_solved`` and the evaluation reached the solved score)."""
        s, state = self.cadence, self.state
        if state.step < self._quiet_until:  # no cadence crossed since the last check (most steps)
            return False
        do_eval = self.eval_due(before)
        self._quiet_until = self._next_due(state.step)
        if crossings(before, state.step, s.log_every) or state.step >= s.total_steps:
            self._log(before)
        do_ckpt = crossings(before, state.step, s.checkpoint_every) > 0
        if not (do_eval or do_ckpt):
            return False
        self._check_finite()  # never checkpoint non-finite weights
        state.train_seconds += time.perf_counter() - self._seg_start
        if do_eval and self._evaluate():
            self.reason = "solved"
            return True
        if do_ckpt:
            flush_logger(self.logger)  # every record up to the checkpoint's step on disk before it is written
            self.checkpoint("periodic")
        self._seg_start = time.perf_counter()
        return False

    def _next_due(self, step: int) -> int:
        """The first env step after ``step`` at which a step may cross a cadence (log, eval, checkpoint, the end):
        until the count reaches it, `after_step` has nothing to do. Steps only grow and each `after_step` gets the
        count before its step (at least the count of the previous call), so no crossing is skipped."""
        s = self.cadence
        return min([s.total_steps] + [(step // e + 1) * e for e in (s.log_every, s.eval_every, s.checkpoint_every)
                                      if e > 0])

    def eval_due(self, before: int) -> bool:
        """Whether `after_step` evaluates after the step from ``before`` (an eval interval crossed, or the end).
        Called before that `after_step`."""
        s, step = self.cadence, self.state.step
        if step < self._quiet_until:  # no cadence can have been crossed: `after_step` will return at once
            return False
        return self.evaluate is not None and (crossings(before, step, s.eval_every) or step >= s.total_steps)

    def _log(self, before: int) -> None:
        """The only place that reads device-side metrics, so the only host sync."""
        state = self.state
        now = time.perf_counter()
        state.train_seconds += now - self._seg_start
        self._seg_start = now
        sps = state.step / max(state.train_seconds, 1e-9)
        self._check_finite()
        scalars = {**self.algo.read_metrics(before), M.SPS: sps}  # before: the step these actions were taken at
        self._last_log_step = state.step
        self._flush_episodes()  # in step order, before the interval's scalars
        self.logger.log(scalars, state.step)
        flush_logger(self.logger)  # what an interval logged reaches the disk now, not at the next log point
        progress_log.info("%s", self._progress_line(scalars))
        self._show()

    def _progress_line(self, scalars: dict[str, float]) -> str:
        """step, episodes, recent return, last eval, epsilon, loss, SPS: what train.log says every log interval."""
        state = self.state
        parts = [f"step {state.step}/{self.cadence.total_steps}", f"episodes {state.episodes}",
                 f"return {np.mean(self._recent):.2f}" if self._recent else "return -"]
        if state.last_eval_return is not None:
            parts.append(f"eval {state.last_eval_return:.2f} (best {state.best_eval_return:.2f})")
        if M.EPSILON in scalars:
            parts.append(f"epsilon {scalars[M.EPSILON]:.3f}")
        if M.TD_LOSS in scalars:
            parts.append(f"loss {scalars[M.TD_LOSS]:.4g}")
        parts.append(f"{scalars[M.SPS]:.0f} steps/s")
        return " | ".join(parts)

    def _show(self) -> None:
        state = self.state
        self._bar.n = state.step
        self._bar.set_postfix_str(
            ", ".join([f"{state.step / max(state.train_seconds, 1e-9):.0f} steps/s",
                       f"ret {np.mean(self._recent):.1f}" if self._recent else "ret -",
                       "eval -" if state.last_eval_return is None else f"eval {state.last_eval_return:.1f}"]),
            refresh=False)
        self._bar.refresh()

    def _evaluate(self) -> bool:
        """One evaluation: history, best.pt, the live results.json. True if it solved and the run should stop."""
        state, s = self.state, self.cadence
        ret = self.evaluate()  # type: ignore[misc]
        state.last_eval_return = ret
        state.eval_history.append((state.step, ret))
        self.logger.log({M.EVAL_RETURN: ret}, state.step)
        flush_logger(self.logger)
        solved = s.solved_score is not None and ret >= s.solved_score
        if solved and state.solved_at_step is None:
            state.solved_at_step, state.solved_at_seconds = state.step, state.train_seconds
        if state.best_eval_return is None or ret > state.best_eval_return:
            state.best_eval_return = ret
            self.checkpoint("best")
        self.checkpoint("progress")
        self._show()  # the bar's eval is this one, not the one before
        return solved and s.stop_when_solved

    def _flush_episodes(self) -> None:
        for step_i, ret, length in self._pending:
            self.logger.log({M.EPISODIC_RETURN: ret, M.EPISODIC_LENGTH: length}, step_i)
        self._pending.clear()
        if self._recent:
            self.state.recent_train_return = float(np.mean(self._recent))
            self.state.recent_returns = list(self._recent)

    def _check_finite(self) -> None:
        try:
            self.algo.check_finite()
        except FloatingPointError:
            where = f"between env steps {self._last_log_step} and {self.state.step}"
            cause = getattr(self.algo, "nonfinite_cause", lambda: None)()
            if cause:  # the data, not the learning rate
                raise TrainingError(f"non-finite loss or Q-value {where}: env.id={self.env_id}: {cause}; fix the "
                                    "env (its observations or rewards); the last checkpoint is left intact") from None
            raise TrainingError(f"non-finite loss or Q-value {where}; the last checkpoint is left intact. Lower "
                                "optimizer.lr, or set learner.max_grad_norm") from None

    def finish(self) -> tuple[LoopState, str]:
        """Book the last stretch of training time, write the episodes not yet logged; (state, stop reason)."""
        if self.reason != "solved":  # a solved stop booked its time before the evaluation
            self.state.train_seconds += time.perf_counter() - self._seg_start
        self._flush_episodes()
        return self.state, self.reason

    def close_display(self) -> None:
        """Close the progress bar (after the last checkpoint is written: a terminal gone away cannot lose it)."""
        self._bar.n = self.state.step
        self._bar.close()
        M.quiet_console(False)
