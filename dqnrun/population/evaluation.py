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
from dqnrun.envs.together import CartPoleVectorTogether

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
        picks = [np.flatnonzero(live[s][1].active) for s in slots]
        width = max(len(p) for p in picks)
        first = live[slots[0]][1].obs
        obs = np.zeros((len(slots), max(width, 1), *first.shape[1:]), dtype=first.dtype)
        for i, (s, p) in enumerate(zip(slots, picks, strict=True)):
            obs[i, :len(p)] = live[s][1].obs[p]
        with learner.evaluation():  # NoisyNet layers on their mean weights, as a solo evaluation acts
            greedy = learner.greedy(obs, rows=slots, cache=weights)
        chosen: dict[int, np.ndarray] = {}
        for i, (s, p) in enumerate(zip(slots, picks, strict=True)):
            rounds, query, rng, epsilon, n_actions = live[s]
            actions = np.zeros(len(query.obs), dtype=np.int64)
            actions[p] = greedy[i, :len(p)]
            if epsilon > 0.0:  # the member's own draws, as `greedy_actor` makes them for its solo run
                actions = epsilon_greedy(query.obs, lambda _, a=actions: a, epsilon, rng, n_actions)
            chosen[s] = actions
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
    `dqnrun.envs.episode_rounds` does for each member (reset its envs from its seed, step until every counted
    episode ended, sum each one's rewards), done for all of them in ``(members, envs)`` arrays, the envs stepped
    as one (`CartPoleVectorTogether.step_rows`). Each member acts as `evaluate_together` has it act: one batched
    greedy forward over the envs still counting, action 0 for the others, its own epsilon draws, and stops stepping
    when its last counted episode ends. A failure (an env raising) fails every member here: the caller then
    evaluates them each on its own."""
    slots = [s for s, _ in members]
    runs = [run for _, run in members]
    plans = [run.eval_plan() for run in runs]  # type: ignore[attr-defined]
    vecs = [run.eval_envs for run in runs]
    stepper = CartPoleVectorTogether(vecs)
    n_envs = vecs[0].num_envs
    obs = np.stack([v.reset(seed=p.seed)[0] for v, p in zip(vecs, plans, strict=True)])  # (K, E, 4)
    ep_ret = np.zeros((len(runs), n_envs), dtype=np.float64)
    active = np.zeros((len(runs), n_envs), dtype=bool)
    for k, p in enumerate(plans):
        active[k, :p.episodes] = True
    live = np.arange(len(runs))  # the members still stepping, as rows of the arrays above
    weights: dict = {}
    out: dict[int, Any] = {}
    while live.size:
        rows = active[live]
        rank = np.cumsum(rows, axis=1) - 1  # each counted env's place among its member's counted envs
        kk, ee = np.nonzero(rows)
        x = np.zeros((live.size, max(int(rank[:, -1].max()) + 1, 1), obs.shape[2]), dtype=obs.dtype)
        x[kk, rank[kk, ee]] = obs[live][kk, ee]
        with learner.evaluation():
            greedy = learner.greedy(x, rows=[slots[k] for k in live], cache=weights)
        actions = np.zeros((live.size, n_envs), dtype=np.int64)
        actions[kk, ee] = greedy[kk, rank[kk, ee]]
        for i, k in enumerate(live.tolist()):
            p = plans[k]
            if p.epsilon > 0.0:  # the member's own draws, as `greedy_actor` makes them for its solo run
                actions[i] = epsilon_greedy(obs[k], lambda _, a=actions[i]: a, p.epsilon, p.rng,
                                            int(runs[k].spec.n_actions))
        new_obs, reward, terminated, truncated = stepper.step_rows([vecs[k] for k in live], actions.reshape(-1))
        shape = (live.size, n_envs)
        obs[live] = new_obs.reshape(*shape, -1)
        ep_ret[live] += np.where(rows, reward.reshape(shape), 0.0)
        active[live] = rows & ~(terminated | truncated).reshape(shape)
        ended = ~active[live].any(axis=1)
        for k in live[ended].tolist():
            out[slots[k]] = float(ep_ret[k, :plans[k].episodes].mean())
        live = live[~ended]
    return out
