"""Verification: which mirror answers for one path, found by probing the candidates in order,
and the verified answer published for every process.

An answer given at once (decide.plan's AT_ONCE) is verified in the background; the flight of
its path is claimed before it goes out, so that a request for the same path arriving meanwhile
(dnf's retry after a 404) waits for the verification. A burst of new paths is verified before
it is answered instead, rather than growing a queue of background work without bound.
"""

from __future__ import annotations

import logging
import random
import threading
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Dict, List, Optional, Tuple

from . import decide
from .context import Context, Stage
from .decide import NOT_FOUND, OPTIMISTIC, VERIFIED, Resolution, Snapshot
from .probe import FAILED, FOUND, MISSING, ProbeResult
from .snapshots import FactReader
from .survey import Survey, Surveys
from .urls import REPOMD_PATH, RepoPath
from .watch import WatchKeeper

log = logging.getLogger("squid_helper.resolver")

_MAX_PARALLEL_PROBES = 4
MAX_BACKGROUND_VERIFICATIONS = 64
_PROBE_SLACK = 1.0


class Verifier(Stage):
    def __init__(self, context: Context, reader: FactReader, surveys: Surveys,
                 keeper: WatchKeeper, draw: random.Random):
        """draw: which of the equally fast mirrors leads (decide.candidates)."""
        super().__init__(context)
        self.draw = draw
        self.reader = reader
        self.surveys = surveys
        self.keeper = keeper  # told of every mirror answered with
        self.closing = False  # the helper is exiting: probes cannot start any more
        self._verifying = 0  # background verifications queued or running
        self._verifying_lock = threading.Lock()

    def stop(self) -> None:
        self.closing = True

    def _count(self, delta: int) -> None:
        with self._verifying_lock:
            self._verifying += delta

    def can_verify_later(self) -> bool:
        """Whether another background verification may queue: a burst of new paths (a
        scanner, thousands of typos) is verified before it is answered instead, at the pace
        of the helper loop's workers, rather than growing a queue without bound."""
        return self._verifying < MAX_BACKGROUND_VERIFICATIONS

    def published(self, request: RepoPath) -> Optional[Resolution]:
        """The answer another process published for the path (the shared memo), if it is
        still good."""
        resolution = decide.memo_answer(self.reader.snapshot(request, front=False))
        if resolution is not None and resolution.base is not None:
            self.keeper.used(resolution.base, request.triple)
        return resolution

    def verify(self, snapshot: Snapshot, candidates: List[str], trace: List[str]
               ) -> Resolution:
        """Probe for the path (one process at a time, across processes) and publish."""
        request = snapshot.request
        return self.flights.run(snapshot.facts.answer.key,
                                lambda: self._verify(snapshot, candidates, trace),
                                lambda: self.published(request))

    def at_once(self, snapshot: Snapshot, candidates: List[str], trace: List[str],
                why: str) -> Resolution:
        """The first candidate, unprobed; the path is verified in the background."""
        request = snapshot.request
        self._verify_later(snapshot, candidates)
        base = candidates[0]
        self.keeper.used(base, request.triple)
        trace.append(f"{base}: {why}; verifying in the background")
        return Resolution(request.on(base), OPTIMISTIC, f"on {base} ({why})", trace, base=base)

    def publish(self, snapshot: Snapshot, base: str, trace: List[str],
                why: str) -> Resolution:
        """A verified answer: memoised for every process, and its mirror watched."""
        request = snapshot.request
        value = decide.answer_value(request, base)
        self.keeper.used(base, request.triple)
        self.memo.put(snapshot.facts.answer, value)
        self.memo.delete(snapshot.facts.miss.key)
        trace.append(f"{base}: {why}")
        return Resolution(value["url"], VERIFIED, f"verified on {base}", trace, base=base)

    def _verify_later(self, snapshot: Snapshot, candidates: List[str]) -> None:
        """Verify an optimistic answer in the background. The flight is claimed before the
        answer goes out, so that a request for the same path arriving meanwhile waits for it."""
        request = snapshot.request
        name = snapshot.facts.answer.key
        future, owner = self.flights.claim(name)
        if not owner:
            return
        trace: List[str] = []

        answered = request.on(candidates[0])

        def verify() -> Optional[Resolution]:
            try:
                resolution = self.flights.finish(
                    name, future, lambda: self._verify(snapshot, candidates, trace),
                    lambda: self.published(request))
            except Exception:  # a bug: the waiters got it too; nobody else would see it
                if not self.closing:  # else: the helper is exiting, probes cannot start
                    log.exception("bug while verifying %s in the background", request.key)
                return None
            finally:
                self._count(-1)
            if resolution.url != answered:
                log.warning("optimistic answer for %s corrected: %s [%s] %s; %s", request.key,
                            resolution.url or "ERR", resolution.status, resolution.reason,
                            "; ".join(trace))
            return resolution

        self._count(+1)
        self.background.submit(verify)

    def _verify(self, snapshot: Snapshot, candidates: List[str],
                trace: List[str]) -> Resolution:
        request, survey = snapshot.request, snapshot.survey
        candidates = decide.retry_candidates(snapshot, candidates, trace)
        base, results = self._probe_in_order(candidates, request)
        if base is None and survey is not None and not survey.complete:
            # Mirrors still being surveyed may have it (a push that the fastest mirror has not
            # synced yet): hear their verdicts before saying that nobody has it.
            complete = self.surveys.completed(request, survey, self.config.probe_timeout + 1)
            snapshot = self.reader.with_hosts(snapshot, complete.ranked, speeds=True,
                                              survey=complete)
            later = [b for b in decide.candidates(snapshot, complete.ranked, trace, self.draw)
                     if b not in candidates]
            if later:
                candidates = candidates + later
                base, more = self._probe_in_order(later, request)
                results.update(more)
        for probed, result in results.items():
            trace.append(f"{probed}: {result.detail} ({result.elapsed:.2f}s)")
        if base is not None:
            return self.publish(snapshot, base, trace, "answered")
        if request.is_root:
            base = self._root_holder(request, candidates, results, snapshot.survey, trace)
            if base is not None:
                return self.publish(snapshot, base, trace, "holds the repo, and lists no "
                                    "directory: the client gets the mirror's own answer")
        spent = decide.unprobed(request, candidates, results, trace)
        if spent is not None:
            return spent
        outcomes = {b: r.outcome for b, r in results.items()}
        missing = decide.nobody_has(request, outcomes)
        if missing is not None:
            self.memo.put(snapshot.facts.miss, missing)
            return Resolution(None, NOT_FOUND, missing, trace)
        # The probes took a while: the last-known answer is read again (another process may
        # have published one meanwhile).
        return decide.fallback(self.reader.snapshot(request, front=False), trace,
                               decide.unavailable_why(request, candidates, outcomes))

    def _root_holder(self, request: RepoPath, candidates: List[str],
                     results: Dict[str, ProbeResult], survey: Optional[Survey],
                     trace: List[str]) -> Optional[str]:
        """The mirror to answer the repo root with when none answered for its base URL.

        What probing a directory means: a directory has no content of its own. Its listing
        is a server setting (nginx and Apache answer 403 or 404 with indexes off, object
        stores 404), so a mirror that refuses it may hold the whole repo, and one that lists
        it may hold an old one. The base URL is probed first, like any path, among the
        mirrors holding the current repodata, so that a client (a person browsing, a health
        check) gets a listing wherever a current mirror offers one; the original repoproxy
        also asked the mirrors for '/'. When they all refuse it (4xx), the repo is still
        there: the first of them that holds it is answered all the same (the client gets its
        403/404 page, not a 'no mirror has' from us). Holding it means serving the current
        repomd.xml: to the survey, or else (a single mirror is never surveyed) to a probe of
        its repodata/repomd.xml now."""
        listless = [b for b in candidates
                    if b in results and results[b].outcome == MISSING]
        vouched = [b for b in listless if survey is not None and b in survey.fresh]
        if vouched:
            trace.append(f"{vouched[0]}: served the current repomd.xml to the survey")
            return vouched[0]
        if not listless:
            return None
        repomd = RepoPath(request.repo, request.releasever, request.arch, REPOMD_PATH)
        base, probed = self._probe_in_order(listless, repomd)
        for mirror, result in probed.items():
            trace.append(f"{mirror}: {REPOMD_PATH}: {result.detail} ({result.elapsed:.2f}s)")
        return base

    def _probe_in_order(self, candidates: List[str], request: RepoPath
                        ) -> Tuple[Optional[str], Dict[str, ProbeResult]]:
        """First mirror, in candidate order, that answers for the path. A slow mirror gets
        company after hedge_delay: the next one is probed in parallel, but an earlier mirror's
        good answer still wins over a later one's. A probe that has not answered
        _PROBE_SLACK seconds after probe_timeout counts as timed out, whatever it does. A
        mirror whose probes for this second are spent (max_probes_per_second) is passed
        over, and has no result."""
        candidates = [b for b in candidates if self.health.may_probe(b)]
        urls = [request.on(b) for b in candidates]
        results: Dict[int, ProbeResult] = {}
        running: Dict[Future, Tuple[int, float]] = {}  # -> (index, started)
        started = 0
        last_start = 0.0
        limit = self.config.probe_timeout + _PROBE_SLACK
        while True:
            first_open = next((i for i in range(len(urls))
                               if i not in results or results[i].outcome == FOUND), None)
            if first_open is None:
                break
            if first_open in results:  # earlier mirrors all failed or lacked it: this one wins
                return candidates[first_open], {candidates[i]: r for i, r in results.items()}
            now = self.timer()
            may_hedge = (now - last_start >= self.config.hedge_delay
                         and len(running) < _MAX_PARALLEL_PROBES)
            if started < len(urls) and (started <= first_open or may_hedge):
                running[self.pool.submit(self.prober.probe, urls[started])] = (started, now)
                started += 1
                last_start = now
                continue
            timeout = min(began + limit for _, began in running.values()) - now
            if started < len(urls) and len(running) < _MAX_PARALLEL_PROBES:
                timeout = min(timeout, self.config.hedge_delay - (now - last_start))
            done, _ = wait(list(running), timeout=max(0.0, timeout),
                           return_when=FIRST_COMPLETED)
            now = self.timer()
            for future in list(running):
                index, began = running[future]
                if future in done:
                    results[index] = future.result()
                elif now - began >= limit:  # left to finish on its own; its answer is late
                    results[index] = ProbeResult(urls[index], FAILED, "no answer within "
                                                 f"{self.config.probe_timeout:g}s", now - began)
                else:
                    continue
                del running[future]
                self.health.record(results[index])
        return None, {candidates[i]: r for i, r in results.items()}
