"""The members' evaluations, run side by side: one batched forward acts for every member's eval envs.

A solo run evaluates by driving its eval episodes (`dqnrun.envs.episode_rounds`) with its own policy, one forward
of (E, obs) per env step (`dqnrun.run.lifecycle.Run.evaluate`). In lockstep, every member evaluates at the same
env step, so a population drives all of their episode generators together: per env step one stacked forward
(`PopulationLearner.greedy`) over the envs whose episode still counts, then each member's own epsilon draws from
its own eval RNG and its own env step. Each member's result is what its solo evaluation returns: the same env
seeds, draws and greedy actions (an env whose first episode has ended takes action 0, which its solo run would
have chosen otherwise; nothing that is returned depends on it, `ActQuery.active`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dqnrun.acting import epsilon_greedy
from dqnrun.envs import Stepped
from dqnrun.envs.together import CartPoleVectorTogether, cartpole_constants, euler_step, fallen, invalid_actions

if TYPE_CHECKING:
    from dqnrun.population.stacked import PopulationLearner
    from dqnrun.run.lifecycle import Run


def evaluate_together(learner: PopulationLearner, members: Sequence[tuple[int, Run]]) -> dict[int, Any]:
    """``members`` ``[(slot, run)]`` -> ``{slot: mean eval return}``, or the exception a member's evaluation
    raised (its env failing), which is that member's alone."""
    if cartpoles_fit(members):
        try:
            return evaluate_cartpoles(learner, members)
        except Exception:  # each member's evaluation on its own below, from its start: the failure is its alone
            pass
    out: dict[int, Any] = {}
    live: dict[int, tuple[Any, Any, np.random.Generator, float, int]] = {}
    for slot, run in members:
        rounds, rng = run.eval_rounds()
        try:
            query = next(rounds)
        except Exception as exc:
            out[slot] = exc
            continue
        live[slot] = (rounds, query, rng, float(run.cfg.eval.epsilon), int(run.spec.n_actions))
    weights: dict = {}  # the evaluating members' weights, copied out once per set of members (they do not change)
    order = list(live)  # the members' eval envs stepped as one where they can be (each its own generator)
    envs = [run.eval_envs for slot, run in members if slot in live]
    together = CartPoleVectorTogether(envs) if len(envs) > 1 and CartPoleVectorTogether.fits(envs) else None
    while live:
        slots = list(live)
        queries = [live[s][1] for s in slots]
        chosen: dict[int, np.ndarray] = dict(zip(slots, counted_actions(
            learner, [q.obs for q in queries], [q.active for q in queries], slots, weights,
            [(live[s][3], live[s][2], live[s][4]) for s in slots]), strict=True))
        replies: dict[int, Any] = chosen
        if together is not None:
            try:
                stepped = together.step([chosen.get(s) for s in order])
                replies = {s: Stepped(r) for s, r in zip(order, stepped, strict=True) if s in chosen}
            except Exception:  # each member's envs step on their own from here, so that a failure is its alone
                together = None
        for s in slots:
            rounds, query, rng, epsilon, n_actions = live[s]
            try:
                live[s] = (rounds, rounds.send(replies[s]), rng, epsilon, n_actions)
            except StopIteration as done:
                out[s] = float(np.asarray(done.value).mean())
                del live[s]
            except Exception as exc:
                out[s] = exc
                del live[s]
    return out


def counted_actions(learner: PopulationLearner, obs: Sequence[np.ndarray], active: Sequence[np.ndarray],
                    slots: Sequence[int], cache: dict, explore: Sequence[tuple[float, np.random.Generator, int]],
                    ) -> list[np.ndarray]:
    """Each evaluating member's actions ``(E_m,)`` for its eval envs' ``obs`` ``(E_m, ...)``: one batched greedy
    forward (members ``slots``, their weights kept in ``cache``) over the envs whose episode still counts
    (``active``), each member's packed to the front; action 0 for the others (nothing returned depends on them,
    `ActQuery.active`); then, where a member's ``explore`` ``(epsilon, rng, n_actions)`` has an epsilon, its own
    draws, as `greedy_actor` makes them for its solo run."""
    picks = [np.flatnonzero(a) for a in active]
    x = np.zeros((len(obs), max(max(len(p) for p in picks), 1), *obs[0].shape[1:]), dtype=obs[0].dtype)
    for i, (o, p) in enumerate(zip(obs, picks, strict=True)):
        x[i, :len(p)] = o[p]
    with learner.evaluation():  # NoisyNet layers on their mean weights, as a solo evaluation acts
        greedy = learner.greedy(x, rows=slots, cache=cache)
    out = []
    for i, (o, p, (epsilon, rng, n_actions)) in enumerate(zip(obs, picks, explore, strict=True)):
        actions = np.zeros(len(o), dtype=np.int64)
        actions[p] = greedy[i, :len(p)]
        if epsilon > 0.0:
            actions = epsilon_greedy(o, lambda _, a=actions: a, epsilon, rng, n_actions)
        out.append(actions)
    return out


def cartpoles_fit(members: Sequence[tuple[int, Run]]) -> bool:
    """Whether `evaluate_cartpoles` takes these members' evaluations: Gymnasium's numpy CartPoles stepped together
    (`CartPoleVectorTogether`), as many envs each, every member's episodes in one round of its envs, no masks."""
    envs = [run.eval_envs for _, run in members]
    if not envs or not CartPoleVectorTogether.fits(envs, reset=False) or len({e.num_envs for e in envs}) != 1:
        return False
    return all(run.cfg.eval.episodes <= run.eval_envs.num_envs and not run.cfg.env.get("action_mask", False)
               for _, run in members)


def evaluate_cartpoles(learner: PopulationLearner, members: Sequence[tuple[int, Run]]) -> dict[int, Any]:
    """`evaluate_together` for members whose evaluations are one round of CartPole envs each (`cartpoles_fit`): what
    `dqnrun.envs.episode_rounds` returns for each member (reset its envs from its seed, step until every counted
    episode ended, sum each one's rewards), computed for all of them in ``(members, envs)`` arrays. Each member acts
    as `evaluate_together` has it act: one batched greedy forward, its own epsilon draws, and stops when its last
    counted episode ends.

    Every env of the members still stepping steps, with ``CartPoleVectorEnv.step``'s arithmetic (`euler_step`,
    `fallen`, its step count and time limit), element by element as its own env computes it; an env whose counted
    episode has ended steps on unread (in its solo evaluation it resets and steps on, and nothing it returns depends
    on that), so its greedy action and state cost nothing to pick out. The envs themselves are reset and read,
    never stepped: an evaluation starts by reseeding them, and nothing else reads them. A failure (an env raising,
    an action outside CartPole's) fails every member here: the caller then evaluates them each on its own."""
    slots = [s for s, _ in members]
    runs = [run for _, run in members]
    plans = [run.eval_plan() for run in runs]  # type: ignore[attr-defined]
    vecs = [run.eval_envs for run in runs]
    c = cartpole_constants(vecs[0])
    for v, p in zip(vecs, plans, strict=True):
        v.reset(seed=p.seed)
    state = np.stack([v.state for v in vecs], axis=1)  # (4, L, E) float64: each member's (4, E), as its env keeps it
    limit = np.array([v.max_episode_steps for v in vecs])[:, None]
    steps = np.zeros(state.shape[1:], dtype=np.int64)  # of each env's first episode: its return (1 a step)
    active = np.zeros(state.shape[1:], dtype=bool)  # the counted episodes still going
    for k, p in enumerate(plans):
        active[k, :p.episodes] = True
    live = list(range(len(members)))  # the members still stepping: row i of the arrays is member live[i]

    def acting(live: list[int]) -> tuple[list[int], list[tuple[int, Any, int]]]:
        """The live members' slots, and the rows, plans and action counts of those that explore (set when members
        leave, not every step)."""
        return ([slots[k] for k in live],
                [(i, plans[k], int(runs[k].spec.n_actions)) for i, k in enumerate(live) if plans[k].epsilon > 0.0])

    rows, exploring = acting(live)
    weights: dict = {}
    out: dict[int, Any] = {}
    with np.errstate(over="ignore", invalid="ignore"):  # an ended episode's env steps on unread, wherever it goes
        while live:
            obs = state.transpose(1, 2, 0).astype(np.float32)  # (L, E, 4), as CartPoleVectorEnv returns it
            with learner.evaluation():
                act = learner.greedy(obs, rows=rows, cache=weights)
            for i, plan, n_actions in exploring:  # its own draws, as `greedy_actor` makes them for its solo run
                act[i] = epsilon_greedy(obs[i], lambda _, a=act[i]: a, plan.epsilon, plan.rng, n_actions)
            if invalid_actions(act):
                raise ValueError("an action outside CartPole's 0 and 1")
            force = np.sign(act - 0.5) * c["force_mag"]  # CartPoleVectorEnv's
            state = np.stack(euler_step(c, *state, force))
            steps += active  # CartPole's reward is 1 a step, the step that ends an episode included
            active &= ~(fallen(c, state[0], state[2]) | (steps >= limit))
            done = ~active.any(axis=1)
            if done.any():
                for i in np.flatnonzero(done).tolist():
                    out[slots[live[i]]] = float(steps[i, :plans[live[i]].episodes].mean())
                keep = np.flatnonzero(~done)
                live = [live[i] for i in keep.tolist()]
                state, steps, active, limit = state[:, keep], steps[keep], active[keep], limit[keep]
                rows, exploring = acting(live)
    return out
