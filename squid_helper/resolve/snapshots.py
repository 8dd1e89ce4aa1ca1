"""The facts one request needs, read at once: the resolver's decisions (decide.py) are pure
functions of what this returns."""

from __future__ import annotations

from dataclasses import replace
from typing import Dict, Sequence

from .context import Stage
from .decide import PathFacts, Snapshot
from .urls import RepoPath


def shunned_bases(value: object) -> Dict[str, str]:
    """The shunned fact's bases (base URL -> why); anything else stored there shuns none,
    rather than stop the helper answering."""
    if not isinstance(value, dict):
        return {}
    return {str(base): str(why) for base, why in value.items()}


class FactReader(Stage):
    def snapshot(self, request: RepoPath, front: bool = True, refresh: bool = False,
             working: bool = False) -> Snapshot:
        """Read once what the decisions about `request` need: its memoised answer and miss,
        the repo's survey, the mirrors shunned for it, the state of the answer's host and,
        when a client asked for fresh metadata (`refresh`), when the repo was last checked
        again for one. front=False reads the answer from the shared memo, for waiters that
        need another process's fresh answer. working: the answer may have to be worked out:
        whether the path is being verified already, the mirrors shunned for it, and its miss
        beside an answer (memo reads the hot path does without: whoever shuns a mirror drops
        the path's answer and bumps the memo's generation, and a stale answer is worked out).
        The state of other mirrors is added once they are known (with_hosts)."""
        facts = PathFacts(self.lifetimes.answer(request), self.lifetimes.miss(request),
                          self.lifetimes.refresh_check(request.triple) if refresh else None)
        answer = self.memo.last(facts.answer, front)
        survey = self.memo.last(self.lifetimes.survey(request.triple), front=True)
        shunned = self.memo.fresh(self.lifetimes.shunned(request), front=True) \
            if working else None
        hosts = self.health.states([answer.value["base"]] if answer is not None else [],
                                   heard=False)
        return Snapshot(
            request, self.clock(), facts, answer=answer,
            miss=self.memo.last(facts.miss, front) if answer is None or working else None,
            survey=survey.value if survey is not None else None, hosts=hosts,
            shunned=shunned_bases(shunned.value if shunned is not None else None),
            refresh_asked=refresh,
            refresh_checked=self.memo.last(facts.refresh_check) if facts.refresh_check else None,
            verifying=working and self.flights.busy(facts.answer.key))

    def with_hosts(self, snapshot: Snapshot, bases: Sequence[str], speeds: bool = False,
                   **changes) -> Snapshot:
        """The snapshot with the current state of `bases` (after a survey or probes, which
        judge hosts) and, with `speeds`, how fast Squid downloaded from them (the shared
        memo: one read a base), and any other fields replaced."""
        if speeds:
            changes["speeds"] = {**snapshot.speeds, **self.health.download_speeds(bases)}
        return replace(snapshot, hosts={**snapshot.hosts, **self.health.states(bases)},
                       now=self.clock(), **changes)

