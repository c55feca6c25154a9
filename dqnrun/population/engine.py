"""The population engine: K DQN runs advanced in lockstep in one process, learning in one batched update.

Each member is a real run, built by the run lifecycle exactly as its solo run would be (`Run.prepare`,
``build``, ``restore``: the same seeds, envs, replay, schedule and initial weights) and recorded as one (its
directory, train.log, results.json, checkpoints, TensorBoard run). The engine then replaces the member's own
training loop with one loop for all of them, which reads as DQN's does (`dqnrun.algos.dqn.DQN.train`)::

    while members remain:
        act       one forward for every member's envs (numpy, stacked weights), each member's own
                  epsilon-greedy draws from its own RNG
        step      each member's own vector env through its own `Session` (autoreset, episodes, counting);
                  every member's actions go out before any step comes back, so Atari's C++ envs play side by side
        store     each member's own replay buffer (its own sampling RNG: the solo run's replay indices)
        learn     target syncs at each member's own interval, then one batched update of every member
                  whose burst is due (`PopulationLearner`)
        after     each member's own logging, evaluation and checkpoints (`Session.after_step`)

PQN members run PQN's loop on this same lifecycle (`dqnrun.population.pqn.PQNPopulation` overrides the acting,
storing and learning). A member that fails (a non-finite loss, an env that raises, a full disk) is recorded as
failed by its own lifecycle and leaves the batch; the others go on. A signal stops every member at the same step
boundary and each saves its last.pt: a population resumes member by member, exactly.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dqnrun import builders
from dqnrun.acting import actions_from_draws
from dqnrun.envs.together import CartPoleTogether
from dqnrun.errors import EnvError, UsageError, write_failure
from dqnrun.population.evaluation import evaluate_together
from dqnrun.population.logs import MemberLogs
from dqnrun.population.member import MemberAlgo, Slot, stack_members, torch_stream
from dqnrun.population.rows import StackedFrames, StackedRows
from dqnrun.population.spec import MemberSpec
from dqnrun.population.stacked import PopulationLearner
from dqnrun.population.watch import Watch
from dqnrun.replay import Batch
from dqnrun.run import artifacts as A
from dqnrun.run import faults
from dqnrun.run.lifecycle import Run, _log_failure, env_failure, owned_dir, run_label
from dqnrun.run.lock import RunDirBusy, RunLock, remove_stale_temp_files
from dqnrun.run.session import Cadence, Session, StopFlag, crossings

log = logging.getLogger("dqnrun.population")


class MemberStop:
    """A member's view of the population's stop flag: it sees the same signal, but never hands it on to a
    launcher's own handler (`StopFlag.chain`); the population does that once, after every member has saved."""

    def __init__(self, flag: StopFlag) -> None:
        self.flag = flag

    @property
    def signum(self) -> int | None:
        return self.flag.signum

    @property
    def requested(self) -> bool:
        return self.flag.requested

    def chain(self) -> bool:
        return False

    def install(self) -> MemberStop:
        return self

    def uninstall(self) -> None:
        pass


class Member:
    """A member's run and where it stands."""

    def __init__(self, spec: MemberSpec, key: str) -> None:
        self.spec, self.key = spec, key
        self.run: Run | None = None
        self.lock: RunLock | None = None
        self.slot = Slot(None)
        self.session: Session | None = None
        self.results: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.left = False  # ended or failed; its row leaves the stacked tensors at the next compaction
        self.eval_result: Any = None  # this step's evaluation, run with the others' (`evaluate_together`)
        self.stream: torch.Tensor | None = None  # its torch RNG state once built or restored (`torch_stream`)

    @property
    def dqn(self) -> Any:
        return self.run.algo.dqn  # type: ignore[union-attr]

    @property
    def training(self) -> bool:
        return self.slot.index is not None and not self.left


def member_evaluation(m: Member) -> Any:
    """The member's evaluate callable: the result `evaluate_together` left for this step, else its own."""
    def evaluate() -> float:
        result, m.eval_result = m.eval_result, None
        if result is None:
            return m.run.evaluate()  # type: ignore[union-attr]
        faults.point("evaluate")
        if isinstance(result, BaseException):
            raise result
        return float(result)
    return evaluate


def prepare_failed(m: Member, exc: Exception) -> None:
    """As `lifecycle.execute`: a job whose config or resume point is bad gets a failed results.json."""
    spec = m.spec
    message = _log_failure(exc)
    m.error = exc
    m.results = {"status": A.FAILED, "stop_reason": "failed", "error": message,
                 "overrides": list(spec.job.overrides), "seed": spec.cfg.get("seed"),
                 "run_dir": str(spec.job.run_dir), "eval_history": [],
                 "objective": {"name": spec.cfg.get("objective", "auc"), "value": None}}
    if spec.job.run_dir.exists() and not A.results_path(spec.job.run_dir).exists():
        A.write_results(spec.job.run_dir, m.results)


class Population:
    """Trains ``specs`` together; `run` returns each member's results (results.json's contents), in order.

    Args:
        specs: the members; they must be able to share a population (`dqnrun.population.grouping`).
        stop: the process's installed stop flag (signals).
        router: routes each member's log records into its train.log.
        aggregate_root: where the aggregate TensorBoard runs go (``<root>/aggregate/tb/<setting>``); None: none.
        progress: draw a progress bar (on a terminal) or print a progress line per log interval.
        threads: torch threads for the batched update.
        name: how the population's lines name it (``population 2 of 3``).
    """

    def __init__(self, specs: Sequence[MemberSpec], stop: StopFlag, router: MemberLogs,
                 aggregate_root: Path | None = None, progress: bool = True, threads: int = 1,
                 name: str = "population") -> None:
        self.members = [Member(s, f"{i}:{s.job.run_dir}") for i, s in enumerate(specs)]
        self.stop, self.router = stop, router
        self.watch = Watch(name, progress, aggregate_root)
        self.threads, self.name = int(threads), name
        self.learner: PopulationLearner | None = None
        self.rows: StackedRows | StackedFrames | None = None
        self.together: TogetherEnvs | None = None  # the members' envs stepped as one, where they can be
        self._live: list[Member] = []

    # --- the whole population ---------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        try:
            with optimizers_without_dynamo():
                for m in self.members:
                    self._start(m)
                self._stack()
                for m in self._live:
                    self._open_session(m)
                self.together = TogetherEnvs.of(self._live)
                self._loop()
        except BaseException as exc:  # a second Ctrl-C: every member records itself interrupted, at once
            for m in self._live:
                with self.router.member(m.key):
                    m.run.abort(exc)  # type: ignore[union-attr]
            raise
        finally:
            self._close()
        return [m.results or {"status": A.FAILED, "error": str(m.error)} for m in self.members]

    def _close(self) -> None:
        self.watch.close()
        for m in self.members:
            if m.run is not None:
                m.run.close()
            if m.lock is not None:
                m.lock.release()
            self.router.close_member(m.key)

    # --- members starting -------------------------------------------------------------------------------
    def _start(self, m: Member) -> None:
        """Lock, prepare, build and restore one member as `dqnrun.run.lifecycle.execute` does; a failure is
        recorded in its directory and it never joins."""
        spec = m.spec
        run_dir = owned_dir(spec.cfg, spec.job)
        try:
            m.lock = RunLock(run_dir).acquire()
        except (RunDirBusy, OSError) as exc:
            message = str(exc) if isinstance(exc, RunDirBusy) else write_failure(run_dir / ".lock", exc)
            m.error = UsageError(message)
            m.results = {"status": A.FAILED, "stop_reason": "failed", "error": message, "run_dir": str(run_dir)}
            log.error("%s: %s", spec.label, message)
            return
        self.router.open(m.key, run_dir / "train.log", spec.label)
        with self.router.member(m.key):
            remove_stale_temp_files(m.lock.run_dir)
            try:
                m.run = Run.prepare(spec.cfg, spec.job)
            except Exception as exc:
                prepare_failed(m, exc)
                return
            run = m.run
            run.stop = MemberStop(self.stop)  # type: ignore[assignment]
            try:
                if run.ckpt is None:
                    run.write_results(run.results(A.RUNNING, None))
                faults.point("build")
                run.build()
                faults.point("restore")
                run.restore()
                m.stream = torch_stream(run.algo.device)  # its torch RNG as its solo run has it now (NoisyNet's)
                if run.ckpt is not None:
                    if self.stop.requested:
                        m.results = run.left_as_it_was()
                        return
                    run.write_results(run.results(A.RUNNING, None))
            except Exception as exc:
                self._failed(m, exc, joined=False)
                return
        self._live.append(m)

    def _stack(self) -> None:
        """The members' weights, optimizer states and counters into one `PopulationLearner`."""
        live = self._live
        if not live:
            return
        dqns = [m.run.algo for m in live]  # type: ignore[union-attr]
        self.learner = learner = stack_members(dqns, [m.stream for m in live])
        replays = [d.replay for d in dqns]
        # one replay with a member axis: rows (transitions) or frame rings (Atari's, on an accelerator)
        self.rows = (StackedRows(replays) if StackedRows.fits(replays)
                     else StackedFrames.share(replays) if StackedFrames.fits(replays) else None)
        for i, (m, dqn) in enumerate(zip(live, dqns, strict=True)):
            m.slot.index = i
            m.run.algo = MemberAlgo(dqn, learner, m.slot)  # type: ignore[union-attr]
        torch.set_num_threads(self.threads)

    def _open_session(self, m: Member) -> None:
        """The member's `Session`, as `Run.train` opens it (its own cadences, logger and callbacks); no bar: the
        population draws one for all."""
        run = m.run
        cfg = run.cfg  # type: ignore[union-attr]
        cadence = Cadence(total_steps=cfg.total_steps, eval_every=cfg.eval.every, log_every=cfg.log.every,
                          checkpoint_every=cfg.checkpoint.every, solved_score=cfg.env.get("solved_score"),
                          progress=False, stop_when_solved=bool(cfg.get("stop_when_solved", False)))
        purge = run.state.step + 1 if run.ckpt is not None else None  # type: ignore[union-attr]
        label = run_label(cfg, run.job)  # type: ignore[union-attr]
        earlier = sorted(p.name for p in (run.run_dir / "tb").glob("*") if p.is_dir()) if run.ckpt else []
        if earlier:
            label = earlier[0]
        run.population_members = len(self._live)  # type: ignore[union-attr]  # its results.json says so
        with self.router.member(m.key):
            run.logger = builders.build_logger(cfg, run.run_dir, label, purge)  # type: ignore[union-attr]
            log.info("training in %s (pid %d), one of %d members of %s", run.run_dir, os.getpid(),
                     len(self._live), self.name)
            m.session = run.session = Session(  # type: ignore[union-attr]
                run.envs, run.cursor, run.state, cadence, run.rng, run.algo, run.logger,
                member_evaluation(m) if run.eval_envs is not None else None, run.save, run.stop,
                env_id=str(cfg.env.id))

    # --- the lockstep loop ------------------------------------------------------------------------------
    def _loop(self) -> None:
        if self._live:
            self.watch.start(self.members, self._live)
        while self._live:
            for m in list(self._live):
                if not m.session.running():  # type: ignore[union-attr]
                    self._end(m)
            if self.stop.requested:  # a signal: every member stops at this same step boundary and saves
                for m in list(self._live):
                    m.session.running()  # type: ignore[union-attr]  # its stop reason: interrupted
                    self._end(m)
            self._compact()
            if self._live:
                try:
                    self._step()
                except Exception as exc:  # the batched forward or update itself failed (CUDA out of memory, say):
                    for m in list(self._live):  # every member in it is recorded as failed, with the error
                        self._failed(m, exc)
                self._compact()

    def _step(self) -> None:
        stepped = self._act_and_step()
        self._learn(stepped)
        self._evaluate(stepped)
        router = self.router
        for m, t in stepped:
            if not m.training:
                continue
            router.current = m.key
            try:
                if m.session.after_step(t.before):  # type: ignore[union-attr]
                    self._end(m)
            except Exception as exc:
                self._failed(m, exc)
        router.current = None
        if stepped and stepped[0][0].training:
            self.watch.report(self.members, len(self._live), stepped[0][0], stepped[0][1].before)

    def _act_and_step(self) -> list[tuple[Member, Any]]:
        """Every member acts (its own epsilon and draws; one forward and one choice for all), its envs step and its
        replay stores: ``[(member, transition)]`` of the members that moved (one that failed has left)."""
        live, learner = list(self._live), self.learner  # over a copy: a member failing leaves ``_live``
        assert learner is not None
        router = self.router
        ready: list[tuple[int, Member, float]] = []
        draws = np.empty((len(live), 2 * live[0].session.n_envs))  # type: ignore[union-attr]  # one env count
        armed = faults.armed()
        for i, m in enumerate(live):
            router.current = m.key
            try:
                ready.append((i, m, explore_draws(m, draws[len(ready)], armed)))
            except Exception as exc:
                self._failed(m, exc)
        actions = choose_actions(learner, live, ready, draws[:len(ready)])
        sent: list[Member] = []
        sent_actions: list[np.ndarray] = []
        for (_, m, _), a in zip(ready, actions, strict=True):  # every member's actions go out before any
            router.current = m.key                                   # member's step comes back: envs that step in
            try:                                                     # their own threads (Atari's) play side by side
                m.session.env_send(a)  # type: ignore[union-attr]
                sent.append(m)
                sent_actions.append(a)
            except Exception as exc:
                self._failed(m, exc)
        results: list[Any] = [None] * len(sent)
        if self.together is not None and sent:
            results = self.together.step(sent, sent_actions)
        stepped: list[tuple[Member, Any]] = []
        for m, result in zip(sent, results, strict=True):
            router.current = m.key
            try:
                stepped.append((m, receive_and_store(m, result)))
            except Exception as exc:
                self._failed(m, exc)
        router.current = None
        return stepped

    def _evaluate(self, stepped: list[tuple[Member, Any]]) -> None:
        """Every member whose evaluation is due after this step, evaluated side by side; each member's session
        then takes its result as its own evaluation (`member_evaluation`)."""
        due = [m for m, t in stepped if m.training and m.session.eval_due(t.before)]  # type: ignore[union-attr]
        results = evaluate_together(self.learner, [(m.slot.index, m.run) for m in due]) if due else {}  # type: ignore[arg-type]
        for m in due:
            m.eval_result = results[m.slot.index]  # type: ignore[index]

    def _learn(self, stepped: list[tuple[Member, Any]]) -> None:
        """Target syncs at each member's own interval, then one batched update per burst size (one in lockstep)."""
        learner = self.learner
        assert learner is not None
        syncs, due = [], {}
        for m, t in stepped:
            if not m.training:
                continue
            dqn, step = m.dqn, m.session.step
            if step > dqn.learn_after and dqn.replay.size:
                if crossings(t.before, step, dqn.target_update_interval):
                    syncs.append(m.slot.index)
                bursts = crossings(t.before, step, dqn.train_freq)
                if bursts:
                    due.setdefault(bursts * dqn.gradient_steps, []).append(m)
        if syncs:
            learner.sync_targets(syncs)
        for n, members in due.items():
            learn_burst(learner, self.rows, members, n)

    # --- members leaving --------------------------------------------------------------------------------
    def _end(self, m: Member) -> None:
        """A member that completed, solved or was interrupted: last.pt, results.json, as `Run.train` and
        `Run.finish` end a solo run."""
        run, session = m.run, m.session
        with self.router.member(m.key):
            try:
                run.algo.export()  # type: ignore[union-attr]
                run.state, reason = session.finish()  # type: ignore[union-attr]
                run.save("last")  # type: ignore[union-attr]
                session.close_display()  # type: ignore[union-attr]
                m.results = run.finish(reason)  # type: ignore[union-attr]
            except Exception as exc:
                self._failed(m, exc)
                return
        self._leave(m)

    def _failed(self, m: Member, exc: Exception, joined: bool = True) -> None:
        """A member that failed: recorded as its solo run would be (results.json, train.log), out of the batch."""
        run = m.run
        with self.router.member(m.key):
            if joined and m.training:
                try:
                    run.algo.export()  # type: ignore[union-attr]
                except Exception as second:  # the stack itself is broken: its record still says why it failed
                    log.error("%s: could not copy its weights out of the population: %s", m.spec.label, second)
            if m.session is not None:
                run.state, _ = m.session.finish()  # type: ignore[union-attr]
            if isinstance(exc, EnvError):
                log.error("the env failed:\n%s", "".join(traceback.format_exception(exc.cause or exc)))
                error = EnvError(env_failure(run.cfg, exc), exc.where)  # type: ignore[union-attr]
                message = _log_failure(error)
            else:
                message = _log_failure(exc)
            m.error = exc
            try:
                m.results = run.finish("failed", error=message)  # type: ignore[union-attr]
            except Exception as second:  # its record could not be written either (a full disk): say so, go on
                log.error("%s: %s", m.spec.label, second)
                m.results = {"status": A.FAILED, "error": message}
        self._leave(m)

    def _leave(self, m: Member) -> None:
        if m in self._live:
            self._live.remove(m)
        m.left = True

    def _compact(self) -> None:
        """Drop the members that left from the stacked tensors (once per step, after all of them moved): until
        then their rows stay where they were, so every slot index of the step stays valid."""
        learner = self.learner
        if learner is None or len(self._live) == learner.k:
            return
        learner.keep([m.slot.index for m in self._live])  # type: ignore[misc]
        for m in self.members:
            if m.left:
                m.slot.index = None
        for i, m in enumerate(self._live):
            m.slot.index = i


@contextmanager
def optimizers_without_dynamo() -> Iterator[None]:
    """While a population runs: torch.optim's methods that torch wraps in ``torch._disable_dynamo`` (an optimizer's
    ``add_param_group``, ``load_state_dict``, ``state_dict``...) call their function directly instead of importing
    ``torch._dynamo`` at their first call to wrap it (~1 s of CPU here, in every worker, while the sweep starts).
    A population makes its members' solo optimizers only to build, restore and export their state (its own batched
    step updates the weights) and compiles nothing (``compile=true`` stands alone, `grouping`), so nothing is left
    for dynamo to stay out of. Methods whose wrapper is already made are left as they are; on leaving, the others
    import dynamo again at their next call, as before."""
    import torch.optim

    marker = torch._disable_dynamo(lambda: None).__code__  # every such wrapper runs this code
    seeded = []
    classes = [torch.optim.Optimizer, *(c for c in vars(torch.optim).values()
                                        if isinstance(c, type) and issubclass(c, torch.optim.Optimizer))]
    for cls in classes:
        for attr in vars(cls).values():
            fn = getattr(attr, "__wrapped__", None)
            if getattr(attr, "__code__", None) is marker and fn is not None and not hasattr(fn, "__dynamo_disable"):
                fn.__dynamo_disable = fn  # what the wrapper calls in place of dynamo's wrapping of fn
                seeded.append(fn)
    try:
        yield
    finally:
        for fn in seeded:
            if getattr(fn, "__dynamo_disable", None) is fn:
                del fn.__dynamo_disable


class TogetherEnvs:
    """The members' envs stepped as one where they can be (`dqnrun.envs.together`: CartPole's); each member's envs
    stay its own (its seeds, generators and checkpoints) and step as they would alone."""

    def __init__(self, stepper: CartPoleTogether, members: Sequence[Member]) -> None:
        self.stepper = stepper
        self.slot = {id(m): i for i, m in enumerate(members)}  # a member's place in the stepper, for good

    @classmethod
    def of(cls, members: Sequence[Member]) -> TogetherEnvs | None:
        envs = [m.run.envs for m in members]  # type: ignore[union-attr]
        return cls(CartPoleTogether(envs), members) if len(envs) > 1 and CartPoleTogether.fits(envs) else None

    def step(self, sent: Sequence[Member], actions: Sequence[np.ndarray]) -> list[Any]:
        """The sent members' env steps on their ``actions``, taken together: what each one's ``envs.step`` returns,
        or the exception its own envs raised (its member alone fails: `Session.env_recv` raises it)."""
        by_slot: list[Any] = [None] * len(self.stepper.vecs)
        for m, a in zip(sent, actions, strict=True):
            by_slot[self.slot[id(m)]] = a
        out = self.stepper.step(by_slot)
        return [out[self.slot[id(m)]] for m in sent]


def explore_draws(m: Member, out: np.ndarray, armed: bool) -> float:
    """Member ``m``'s epsilon at this step; its uniform draws ``(2E,)`` from its own generator into ``out``: what its
    solo run's `dqnrun.acting.epsilon_greedy` draws (the first E decide who explores, the last E the random
    actions). ``armed``: a fault is set (`faults.armed`), so mark the point ``act``."""
    if armed:
        faults.point("act")
    dqn, session = m.dqn, m.session
    assert session is not None
    step = session.step
    session.rng.random(out=out)
    return 1.0 if step < dqn.learning_starts else dqn.schedule(step)


def choose_actions(learner: PopulationLearner, live: Sequence[Member], ready: Sequence[tuple[int, Member, float]],
                   u: np.ndarray) -> list[np.ndarray]:
    """Each ready member's actions ``(E,)`` from its epsilon and draws ``u`` ``(R, 2E)`` (`explore_draws`), as
    `epsilon_greedy` chooses them for its solo run (`dqnrun.acting.actions_from_draws`, each member with its own
    epsilon). One greedy forward serves every member (``live``: the members in slot order, ``i`` of ``ready`` their
    slot), and only where one of them acts greedily."""
    if not ready:
        return []
    n_actions = ready[0][1].dqn.n_actions  # members share their env (grouping): one action space, one env count
    epsilon = np.asarray([eps for _, _, eps in ready])[:, None]
    slots = [i for i, _, _ in ready]
    return list(actions_from_draws(
        u, epsilon, n_actions,
        lambda: learner.greedy(np.stack([m.session.cursor.obs for m in live]))[slots]))  # type: ignore[union-attr]


def receive_and_store(m: Member, stepped: Any = None) -> Any:
    """The member's env step comes back (or ``stepped``: its envs' step, taken with the others'); store it in its
    replay."""
    dqn, session = m.dqn, m.session
    assert session is not None
    t = session.env_recv(stepped)
    clip = dqn.reward_clip
    reward = t.reward if clip is None else np.clip(t.reward, -clip, clip)
    dqn.replay.add(t.obs, t.action, reward, t.next_obs, t.terminated, t.truncated, t.valid)
    return t


def learn_burst(learner: PopulationLearner, rows: StackedRows | StackedFrames | None, members: Sequence[Member],
                n: int) -> None:
    """One batched update of ``members``, each due ``n`` gradient steps: each draws its rows with its own sampler,
    as its solo run does; one gather serves them all where their replays share tensors (`StackedRows`,
    `StackedFrames`), else each gathers its own (`update_together`). Then prioritized replay's new priorities, each
    member's from its rows."""
    if rows is not None:
        draws = {m.slot.index: (*m.dqn.replay.sampler.draw(n, m.session.step), m.dqn.replay) for m in members}
        faults.point("learn")
        out = learner.update(rows.gather(draws, learner.k), [s in draws for s in range(learner.k)])  # type: ignore[arg-type]
        drawn = {s: d[0] for s, d in draws.items()}
    else:
        batches = {m.slot.index: m.dqn.replay.sample(n_batches=n, step=m.session.step) for m in members}
        faults.point("learn")
        out = update_together(learner, batches)
        drawn = {s: b.indices for s, b in batches.items()}
    for m in members:
        for g, td_abs in enumerate(out):
            if td_abs is not None:  # prioritized replay
                m.dqn.replay.update_priorities(drawn[m.slot.index][g], td_abs[m.slot.index])  # type: ignore[index]


def update_together(learner: PopulationLearner, batches: dict[int, Batch]) -> list[np.ndarray | None]:
    """One batched update of the members that have a batch (by slot); what `PopulationLearner.update` returns. A
    member whose batch has no rows (``latest`` replay after a reset-only vector step) learns nothing, as its solo
    run; members' batches of different widths (``latest`` again) go in padded, with each member's own width."""
    batches = {s: b for s, b in batches.items() if b.action.shape[-1]}
    if not batches:
        return []
    active = [s in batches for s in range(learner.k)]
    widths = [batches[s].action.shape[-1] if s in batches else 0 for s in range(learner.k)]
    stacked = stack_batches(batches, learner.k)
    if len({widths[s] for s in batches}) > 1:
        return learner.update(stacked, active, widths=widths)  # type: ignore[call-arg]
    return learner.update(stacked, active)


def stack_batches(batches: dict[int, Batch], k: int) -> Batch:
    """Members' batches ``(G, B, ...)`` by slot -> one ``(K, G, B, ...)`` batch; a slot without one (a member not
    due to learn) gets zeros, and its update is masked out. Batches narrower than the widest (``latest`` replay)
    are padded with zeros after their own rows."""
    width = max(b.action.shape[1] for b in batches.values())
    first = next(iter(batches.values()))
    fields = {}
    for name in ("obs", "action", "reward", "next_obs", "terminated", "discount", "weights"):
        ref = getattr(first, name)
        if ref is None:
            fields[name] = None
            continue
        shape = (ref.shape[0], width, *ref.shape[2:])
        rows = []
        for s in range(k):
            x = getattr(batches[s], name) if s in batches else None
            if x is None or x.shape[1] != width:
                pad = ref.new_zeros(shape)
                if x is not None:
                    pad[:, :x.shape[1]] = x
                x = pad
            rows.append(x)
        fields[name] = torch.stack(rows)
    return Batch(**fields)  # type: ignore[arg-type]
