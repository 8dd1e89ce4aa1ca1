"""The second stage of a resolution: which mirrors hold the repo's current repodata.

A freshness survey GETs repodata/repomd.xml from the first survey_limit healthy mirrors at once
and judges each answer: against the metalink's hashes, or by age among the answers. It decides
as soon as the answers allow (selection.survey_wait): at the first hash match, or a short window
after the first answer, so that a hanging mirror never holds a client up. The survey goes on in
the background until every mirror it asked has answered or failed, and then publishes its
complete verdicts, which later answers use. Every answer is a latency sample for the mirror and
every failure marks it unhealthy (health.MirrorHealth).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, List, Optional, Tuple

from .context import Context, Stage
from .mirrorlists import MirrorLists
from .probe import ERROR, FAILED, FOUND, MISSING, ProbeResult
from .selection import (
    FRESH,
    STALE,
    Observation,
    digest_usable,
    newer_than_metalink,
    observe,
    order_by_speed,
    rank_mirrors,
    survey_wait,
    verdicts,
)
from .sources import MirrorSet
from .urls import REPOMD_PATH, RepoPath, join_under_base

log = logging.getLogger("squid_helper.survey")


@dataclass(frozen=True)
class Survey:
    """What one survey found for a repo's releasever and arch (the memo's survey fact)."""

    bases: Tuple[str, ...]  # the mirror list it judged, in the source's order
    verdicts: Dict[str, Optional[str]]  # selection's verdict per base; None: unusable
    ranked: Tuple[str, ...]  # usable mirrors, best verdict first, fastest first within one
    complete: bool  # every mirror asked has answered or failed
    run: str  # which survey produced it (a later run's result replaces it)
    # (revision, timestamp) of the repomd.xml each mirror served it: what the liveness watch
    # compares with, to notice a mirror whose snapshot changed since
    ages: Dict[str, Tuple[int, int]] = field(default_factory=dict)

    @property
    def fresh(self) -> FrozenSet[str]:
        """Mirrors that served the current repomd.xml to this survey."""
        return frozenset(b for b, v in self.verdicts.items() if v == FRESH)

    def usable(self, base: str) -> bool:
        """False for a mirror this survey found stale or unusable (a mismatching or missing
        repomd.xml); True for the others, judged or not."""
        return base not in self.verdicts or self.verdicts[base] not in (STALE, None)


class _Answers:
    """A running survey's answers as they arrive from the pool's threads."""

    def __init__(self, asked: List[str], timer: Callable[[], float]):
        self.asked = asked
        self.timer = timer
        self.results: Dict[str, ProbeResult] = {}
        self.started = timer()
        self.first_answer: Optional[float] = None
        self._changed = threading.Condition()
        self._when_complete: Optional[Callable[[Dict[str, ProbeResult]], None]] = None

    def add(self, base: str, result: ProbeResult) -> None:
        with self._changed:
            self.results[base] = result
            if self.first_answer is None and result.outcome == FOUND:
                self.first_answer = self.timer()
            complete = len(self.results) == len(self.asked)
            then = self._when_complete if complete else None
            self._changed.notify_all()
        if then is not None:
            then(dict(self.results))

    def wait(self, how_long: Callable[[Dict[str, ProbeResult], Optional[float]],
                                      Optional[float]], limit: float) -> Dict[str, ProbeResult]:
        """Wait until how_long(results, first_answer) says to decide, or `limit` passed."""
        deadline = self.timer() + limit
        with self._changed:
            while True:
                remaining = how_long(self.results, self.first_answer)
                left = deadline - self.timer()
                if remaining is None or left <= 0:
                    return dict(self.results)
                self._changed.wait(min(remaining, left))

    def when_complete(self, then: Callable[[Dict[str, ProbeResult]], None]) -> None:
        with self._changed:
            if len(self.results) < len(self.asked):
                self._when_complete = then
                return
            results = dict(self.results)
        then(results)


class Surveys(Stage):
    """The fetches run on the probe pool; a survey is completed, after it decided, on the
    background threads."""

    def __init__(self, context: Context, mirror_lists: MirrorLists):
        """mirror_lists: to read a metalink again when the mirrors contradict it."""
        super().__init__(context)
        self.mirror_lists = mirror_lists
        self._runs = itertools.count()
        self._done: Dict[str, threading.Event] = {}  # this process's surveys still running

    def current(self, request: RepoPath, mirrors: MirrorSet, trace: List[str],
                force: bool = False) -> Survey:
        """The repo's survey: the memoised one while fresh (and of this mirror list), else a
        new one, decided as early as the answers allow. force: a new one in any case."""
        fact = self.lifetimes.survey(request.triple)
        known = self.memo.last(fact, front=True)  # a new survey bumps the memo's generation
        if (known is not None and not force and known.value.bases == mirrors.bases
                and known.fresh_for(fact, self.clock()) > 0):
            return known.value

        def published() -> Optional[Survey]:
            latest = self.memo.last(fact)
            if latest is not None and (known is None or latest.at > known.at):
                return latest.value
            return None

        previous = known.value if known is not None else None
        return self.flights.run(fact.key, lambda: self._survey(request, mirrors, previous,
                                                               trace), published)

    def _survey(self, request: RepoPath, mirrors: MirrorSet, previous: Optional[Survey],
                trace: List[str]) -> Survey:
        unhealthy = set(self.health.unhealthy(mirrors.bases))
        asked = [b for b in mirrors.bases if b not in unhealthy][: self.config.survey_limit]
        run = f"{os.getpid()}.{next(self._runs)}"
        answers = _Answers(asked, self.timer)
        self._done[run] = threading.Event()
        for base in asked:
            future = self.pool.submit(self.prober.fetch, join_under_base(base, REPOMD_PATH))
            future.add_done_callback(lambda done, base=base: self._arrived(answers, base, done))
        has_digest = mirrors.expected is not None

        def how_long(results: Dict[str, ProbeResult], first: Optional[float]) -> Optional[float]:
            seen = {b: _observation(r, mirrors) for b, r in results.items()}
            return survey_wait(len(asked), seen, has_digest, answers.started, first,
                               self.config.survey_window, self.timer())

        # Bounded by the probes' own time limit: a probe outliving it is a hanging one.
        results = answers.wait(how_long, self.config.probe_timeout + 1)
        for result in results.values():
            self.health.record(result)
        head = previous.ranked[0] if previous is not None and previous.ranked else None
        survey, mirrors = self._judge(request, mirrors, asked, results, head, run, trace)
        self._publish(request, survey)
        if survey.complete:
            self._finished(run)
        else:
            answers.when_complete(lambda everything: self._complete_later(
                request, mirrors, asked, everything, survey, results))
        return survey

    def completed(self, request: RepoPath, early: Survey, timeout: float) -> Survey:
        """The survey once `early` has completed (waiting at most `timeout` seconds), or the
        latest one published meanwhile."""
        fact = self.lifetimes.survey(request.triple)
        done = self._done.get(early.run)
        if done is not None:
            done.wait(timeout)
        else:  # surveyed by another process: watch the memo
            deadline = self.timer() + timeout
            while self.timer() < deadline:
                latest = self.memo.last(fact)
                if latest is None or latest.value.complete or latest.value.run != early.run:
                    break
                time.sleep(0.05)
        latest = self.memo.last(fact)
        return latest.value if latest is not None else early

    @staticmethod
    def _arrived(answers: _Answers, base: str, done: Future) -> None:
        if done.cancelled():
            result = ProbeResult(base, MISSING, "not judged: survey cancelled", 0.0)
        elif done.exception() is not None:
            # A bug of ours, not the mirror's failure: logged as such, the mirror not judged.
            log.error("bug while surveying %s", base, exc_info=done.exception())
            result = ProbeResult(base, MISSING, f"not judged: {done.exception()!r}", 0.0)
        else:
            result = done.result()
        answers.add(base, result)

    def _judge(self, request: RepoPath, mirrors: MirrorSet, asked: List[str],
               results: Dict[str, ProbeResult], head: Optional[str], run: str,
               trace: List[str]) -> Tuple[Survey, MirrorSet]:
        observations = {b: _observation(r, mirrors) for b, r in results.items()}
        use_digest = mirrors.expected is not None
        if use_digest and push_suspected(observations) and self.memo.put_new(
                self.lifetimes.push_check(request.triple), True):
            # A mirror newer than the metalink, or none matching it: our copy of the metalink
            # may predate a push. Read it again (at most once per refresh_interval).
            refreshed = self.mirror_lists.mirrors(request, trace, force=True)
            if refreshed is not None and refreshed.expected != mirrors.expected:
                trace.append("the metalink changed: judging the mirrors by its new hashes")
                mirrors = refreshed
                observations = {b: _observation(r, mirrors) for b, r in results.items()}
        if use_digest and not digest_usable(observations):
            trace.append("no mirror matches the metalink's repomd.xml; ranking by age")
            use_digest = False
        verdict = verdicts(mirrors.bases, observations, use_digest)
        for base in asked:
            if base not in results:
                verdict[base] = None  # asked, no answer yet: not usable before it is judged
        ranked = order_by_speed(rank_mirrors(mirrors.bases, verdict), verdict,
                                self.health.latencies(asked), head)
        for base in mirrors.bases:
            result = results.get(base)
            if result is not None or base in asked:
                trace.append(f"survey {base}: " + (
                    f"{verdict[base] or 'excluded'} ({result.detail}, {result.elapsed:.2f}s)"
                    if result else "no answer yet"))
        complete = all(b in results for b in asked)
        ages = {b: o.age_key for b, o in observations.items() if o.outcome == "ok" and o.age_key}
        return Survey(mirrors.bases, verdict, tuple(ranked), complete, run, ages), mirrors

    def _complete_later(self, request: RepoPath, *args) -> None:
        try:
            self.background.submit(self._complete, request, *args)
        except RuntimeError:  # the helper is closing (a reload): the next survey is complete
            self._finished(args[3].run)

    def _complete(self, request: RepoPath, mirrors: MirrorSet, asked: List[str],
                  results: Dict[str, ProbeResult], early: Survey,
                  recorded: Dict[str, ProbeResult]) -> None:
        """Publish the complete survey in place of the early one, unless a newer run replaced
        it meanwhile; a mirror found stale after its repomd.xml was answered loses that
        answer. Whoever waits for the survey to complete is woken in any case."""
        try:
            for base, result in results.items():
                if base not in recorded:
                    self.health.record(result)
            fact = self.lifetimes.survey(request.triple)
            stored = self.memo.last(fact)
            if stored is None or stored.value.run != early.run:
                return
            trace: List[str] = []
            head = early.ranked[0] if early.ranked else None
            survey, _ = self._judge(request, mirrors, asked, results, head, early.run, trace)
            self._publish(request, survey, at=stored.at)
            demoted = early.fresh - survey.fresh
            if demoted:
                self._forget_repomd_answers(request, demoted)
            log.info("survey of %s complete%s: %s", request.triple,
                     f" ({len(demoted)} mirror(s) no longer fresh)" if demoted else "",
                     "; ".join(trace))
        finally:
            self._finished(early.run)

    def _finished(self, run: str) -> None:
        done = self._done.pop(run, None)
        if done is not None:
            done.set()

    def _publish(self, request: RepoPath, survey: Survey, at: Optional[float] = None) -> None:
        """Store a survey for every process; their in-process copies of the previous one go
        (surveys are rare: once per metadata_ttl and repo, and once more when complete)."""
        self.memo.put(self.lifetimes.survey(request.triple), survey, at=at)
        self.memo.bump_generation()

    def _forget_repomd_answers(self, request: RepoPath, demoted: FrozenSet[str]) -> None:
        repomd = RepoPath(request.repo, request.releasever, request.arch, REPOMD_PATH)
        fact = self.lifetimes.answer(repomd)
        answer = self.memo.last(fact)
        if answer is not None and answer.value["base"] in demoted:
            self.memo.delete(fact.key)
            self.memo.bump_generation()


def push_suspected(observations: Dict[str, Observation]) -> bool:
    """The push policy: a mirror newer than the metalink, or answers none of which matches
    it, mean that our copy of the metalink may predate a push (read it again)."""
    return bool(newer_than_metalink(observations)) or (
        not digest_usable(observations)
        and any(o.outcome == "ok" for o in observations.values()))


def _observation(result: ProbeResult, mirrors: MirrorSet) -> Observation:
    if result.outcome == FOUND:
        return observe(result.content or b"", mirrors)
    return Observation("failed" if result.outcome in (FAILED, ERROR) else "missing")
