"""What a population shows while it trains: one progress bar (members alive, aggregate steps/s, the IQM across
seeds so far) and the aggregate TensorBoard run of each setting (`dqnrun.population.aggregate`).

Without a terminal (or with ``log.progress=false`` on every member) the bar is a line per log interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dqnrun import metrics as M
from dqnrun.population.aggregate import EVAL, RETURN, AggregateBoard
from dqnrun.population.stats import bootstrap_ci, iqm
from dqnrun.run import artifacts as A
from dqnrun.run.session import crossings

log = logging.getLogger("dqnrun.population")


class Watch:
    """The population's bar, progress lines and aggregate board.

    Args:
        name: how the lines name the population (``population 2``).
        progress: draw a bar on a terminal, else a line per log interval; False: neither.
        aggregate_root: the sweep directory (aggregate runs go to ``<root>/aggregate/tb/<setting>``); None: none.
    """

    def __init__(self, name: str, progress: bool, aggregate_root: Path | None) -> None:
        self.name, self.progress, self.root = name, progress, aggregate_root
        self.aggregate: AggregateBoard | None = None
        self._bar: Any = None
        self._started = time.perf_counter()
        self._steps_at_start = 0

    def start(self, members: Sequence[Any], live: Sequence[Any]) -> None:
        """Before the first step: a resumed population's aggregate runs drop what was written after its members'
        checkpoints (as each member's own logger does)."""
        steps = [m.run.state.step for m in live]
        resumed = any(m.run.ckpt is not None for m in live)
        if self.root is not None:
            self.aggregate = AggregateBoard(self.root, purge_step=min(steps) + 1 if resumed else None)
        self._steps_at_start = total_steps(members)
        self._bar = M.progress_bar(sum(m.run.cfg.total_steps for m in live), initial=self._steps_at_start,
                                   enabled=self.progress, desc=self.name)
        M.quiet_console(not self._bar.disable)
        self._started = time.perf_counter()

    def report(self, members: Sequence[Any], alive: int, m: Any, before: int) -> None:
        """The aggregate statistics, the bar and the progress line, at member ``m``'s log and eval cadences (the
        members step in lockstep)."""
        c, step = m.session.cadence, m.session.step  # the member's cadences as plain values: read every step
        logged = crossings(before, step, c.log_every) > 0 or step >= c.total_steps
        evaluated = c.eval_every > 0 and (crossings(before, step, c.eval_every) > 0 or step >= c.total_steps)
        if not (logged or evaluated):
            return
        returns, evals = by_setting(members, step)
        if self.aggregate is not None:
            if logged:
                for setting, values in returns.items():
                    self.aggregate.log(setting, RETURN, values, step, members=len(values))
            if evaluated:
                for setting, values in evals.items():
                    self.aggregate.log(setting, EVAL, values, step)
            self.aggregate.flush()
        if logged:
            self._show(members, alive, step, returns, evals)

    def _show(self, members: Sequence[Any], alive: int, step: int, returns: dict[str, list[float]],
              evals: dict[str, list[float]]) -> None:
        total = total_steps(members)
        sps = (total - self._steps_at_start) / max(time.perf_counter() - self._started, 1e-9)
        all_returns = [v for vs in returns.values() for v in vs]
        all_evals = [v for vs in evals.values() for v in vs]
        members_alive = f"{alive}/{len(members)} members"
        ret = f"return IQM {iqm(all_returns):.1f}" if all_returns else "return -"
        if len(all_returns) > 1:
            low, high = bootstrap_ci(all_returns)
            ret += f" [{low:.1f}, {high:.1f}]"
        ev = f"eval IQM {iqm(all_evals):.1f}" if all_evals else None
        if self._bar is not None and not self._bar.disable:
            self._bar.n = total
            self._bar.set_postfix_str(", ".join(x for x in (members_alive, f"{sps:.0f} steps/s", ret, ev) if x),
                                      refresh=False)
            self._bar.refresh()
        elif self.progress:
            log.info("%s: step %d | %s | %.0f steps/s | %s%s", self.name, step, members_alive, sps, ret,
                     f" | {ev}" if ev else "")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            M.quiet_console(False)
        if self.aggregate is not None:
            self.aggregate.close()


def total_steps(members: Sequence[Any]) -> int:
    return sum(m.run.state.step for m in members if m.run is not None)


def by_setting(members: Sequence[Any], step: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each setting's recent training returns, and its evaluations at ``step``, over its members that have not
    failed."""
    returns: dict[str, list[float]] = {}
    evals: dict[str, list[float]] = {}
    for m in members:
        if m.run is None or (m.results is not None and m.results.get("status") == A.FAILED):
            continue
        st = m.run.state
        if st.recent_train_return is not None:
            returns.setdefault(m.spec.setting, []).append(st.recent_train_return)
        if st.eval_history and st.eval_history[-1][0] == step:
            evals.setdefault(m.spec.setting, []).append(st.eval_history[-1][1])
    return returns, evals
