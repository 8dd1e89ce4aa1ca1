"""Resolve a repo path to a mirror URL: a pipeline of sources -> survey -> choose -> answer.

1. A fresh memoised answer on a healthy mirror is reused, whichever helper process found it.
2. Otherwise: the repo's mirror list (mirrorlists), which of its mirrors hold the current
   repodata (survey), the healthy ones in order, fastest fresh mirror first (choose), and the
   answer:
   * repomd.xml: the first mirror that served the current one to the survey just now;
   * a package or checksum-named repodata: the same mirror at once, since it holds the snapshot
     whose repomd.xml it served; the path is verified in the background, and a request for it
     that arrives before the verification ends waits for it, so that dnf's retry after a
     half-synced mirror's 404 goes to a mirror that has the file;
   * the repo root (/<repo>/<releasever>/<arch>/): the base URL of a mirror holding the
     current repodata, preferring one that answers for the base URL itself (see _root_holder);
   * anything else: probed on the mirrors in order (one process at a time, across processes).
3. When nothing can be verified, the last-known answer is reused so that Squid can serve the
   copy it holds; only without one does the client get an error.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..config.settings import Config
from ..facts.flight import SingleFlight
from ..facts.lifetimes import Lifetimes
from ..facts.memo import Memo
from .health import MirrorHealth
from .mirrorlists import MirrorLists
from .probe import ERROR, FAILED, FOUND, MISSING, Prober, ProbeResult
from .probelog import ProbeLog
from .selection import by_downloads
from .survey import Survey, Surveys
from .urls import REPOMD_PATH, RepoPath
from .watch import Watch

log = logging.getLogger("squid_helper.resolver")

VERIFIED, OPTIMISTIC, MEMO, LAST_KNOWN, NOT_FOUND, UNAVAILABLE = (
    "verified", "optimistic", "memo", "last-known", "not-found", "unavailable")
_MAX_PARALLEL_PROBES = 4
# An unprobed answer goes only to a mirror that answered the helpers this recently: one that
# started to hang since would stall Squid's fetch (and dnf) until their own timeouts, where a
# probe finds out within hedge_delay. During a dnf run the background verifications keep the
# chosen mirror's record fresh.
RECENTLY = 30.0
MAX_BACKGROUND_VERIFICATIONS = 64
_BACKGROUND_THREADS = 4
_PROBE_SLACK = 1.0


@dataclass
class Resolution:
    url: Optional[str]
    status: str  # VERIFIED, OPTIMISTIC, MEMO, LAST_KNOWN, NOT_FOUND or UNAVAILABLE
    reason: str
    trace: List[str] = field(default_factory=list)
    elapsed: float = 0.0
    fresh_for: float = 0.0  # seconds this memoised answer stays fresh


class Resolver:
    def __init__(self, config: Config, memo: Memo, prober: Optional[Prober] = None):
        self.config = config
        self.memo = memo
        self.prober = prober or Prober.for_config(config)
        self.lifetimes = Lifetimes(config)
        # Probe threads only talk HTTP. What the answers mean (health, memo) is worked out by
        # the threads waiting for them: the helper loop's workers, and background threads
        # for verifications and survey completions. Background work waits on probes, so it
        # has threads of its own (it could otherwise take every probe thread and wait on
        # probes that never start), and only threads that use the memo open a connection to
        # its database (some 0.3 MB each).
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="probe")
        self._background = ThreadPoolExecutor(max_workers=_BACKGROUND_THREADS,
                                              thread_name_prefix="background")
        # Long enough to cover a survey plus a probe round, so a live holder is never
        # overtaken; short enough that a crashed holder blocks others only briefly.
        self.flights = SingleFlight(memo, config.probe_timeout * 4 + 2)
        self._verifying = 0  # background verifications queued or running
        self._closing = False
        self._verifying_lock = threading.Lock()
        self.health = MirrorHealth(memo, self.lifetimes)
        self._draw = random.Random()  # which of the equally fast mirrors leads (by_downloads)
        self.probe_log = ProbeLog(memo, self.lifetimes, self._background)
        self.health.on_result = self.probe_log.note
        self.mirror_lists = MirrorLists(config, memo, self.lifetimes, self.prober, self.flights,
                                        self.health, self._background)
        self.surveys = Surveys(config, memo, self.lifetimes, self.prober, self.flights,
                               self.health, self.mirror_lists, self._pool, self._background)
        self.watch = Watch(memo, self.lifetimes, self.health, self.prober, self._pool,
                           self._surveyed_ages, self._resurvey)

    def close(self, finish: bool = True) -> None:
        """Release threads and connections (the helper loop calls this when no request of this
        resolver's is left). finish: let queued background work (verifications that other
        processes may wait for) run first; at exit it is dropped."""
        # Never cancel probes: a cancelled Future does not wake concurrent.futures.wait().
        self._closing = True
        self.watch.stop()
        self._background.shutdown(wait=finish, cancel_futures=not finish)
        self._pool.shutdown(wait=finish)
        self.probe_log.flush()  # a flush cancelled with the background work: one write a host
        self.prober.close()

    def _verifications(self, delta: int) -> None:
        with self._verifying_lock:
            self._verifying += delta

    def _can_verify_later(self) -> bool:
        """Whether another background verification may queue: a burst of new paths (a
        scanner, thousands of typos) is verified before it is answered instead, at the pace
        of the helper loop's workers, rather than growing a queue without bound."""
        return self._verifying < MAX_BACKGROUND_VERIFICATIONS

    # -- memoised answers ---------------------------------------------------------------------
    def cached(self, request: RepoPath, front: bool = True) -> Optional[Resolution]:
        """The memoised answer if it is still fresh and its mirror healthy; never probes (the
        per-request hot path). front=False reads the shared memo only, for waiters that need
        another process's fresh answer."""
        now = time.time()
        fact = self.lifetimes.answer(request)
        answer = self.memo.fresh(fact, front)
        if answer is not None and self._still_good(request, answer.value["base"]):
            self.watch.used(answer.value["base"], request.triple)
            return Resolution(answer.value["url"], MEMO, "memoised answer",
                              fresh_for=answer.fresh_for(fact, now))
        fact = self.lifetimes.miss(request)
        miss = self.memo.fresh(fact, front)
        if miss is not None:
            return Resolution(None, NOT_FOUND, miss.value, fresh_for=miss.fresh_for(fact, now))
        return None

    def _still_good(self, request: RepoPath, base: str) -> bool:
        """Whether a memoised answer's mirror may still be answered with: trusted (healthy,
        not on probation), and not found stale by the repo's latest survey. Freshness is one
        fact, like health: a mirror that fell behind loses every answer it had."""
        if not self.health.trusted(base):
            return False
        survey = self.memo.last(self.lifetimes.survey(request.triple), front=True)
        return survey is None or survey.value.usable(base)

    def _shunned(self, request: RepoPath) -> Dict[str, str]:
        """The bases that must not answer for this path (base -> why): Squid's fetch from
        them failed (squid/fetchdaemon) or its copy disagreed with the repo's checksums
        (verify/). A probe that succeeds does not clear it. Read when an answer is worked
        out, never on the hot path: whoever shuns a base drops the path's memoised answer and
        bumps the generation too."""
        shunned = self.memo.fresh(self.lifetimes.shunned(request), front=True)
        return shunned.value if shunned is not None and isinstance(shunned.value, dict) else {}

    def _surveyed_ages(self, triple: str) -> Dict[str, Tuple[int, int]]:
        survey = self.memo.last(self.lifetimes.survey(triple))
        return survey.value.ages if survey is not None else {}

    def _resurvey(self, triple: str) -> None:
        """Survey a repo again now (the watch saw a mirror's snapshot change)."""
        request = RepoPath(*triple.split("/"), REPOMD_PATH)
        trace: List[str] = []
        mirrors = self.mirror_lists.mirrors(request, trace)
        if mirrors is not None:
            self.surveys.current(request, mirrors, trace, force=True)
            log.info("survey of %s after a change: %s", triple, "; ".join(trace))

    def forget(self, request: RepoPath) -> int:
        """Drop what the memo knows about one path (used by purge), in every process."""
        return self.memo.forget(*self.lifetimes.purged(request))

    # -- the pipeline -------------------------------------------------------------------------
    def resolve(self, request: RepoPath, settle: bool = False,
                refresh: bool = False) -> Resolution:
        """Answer for one path; works it out only when no fresh answer is memoised.
        settle: an optimistic answer is not enough, wait for its verification (for operators
        asking why, not for Squid). refresh: the client asked for fresh metadata (no-cache);
        for repomd.xml the repo's freshness is checked again, at most once per
        refresh_interval, even while the memoised answer holds."""
        started = time.monotonic()
        refresh = refresh and request.is_metadata and self.memo.put_new(
            self.lifetimes.refresh_check(request.triple), True)
        answer = None if refresh else self.cached(request)
        if answer is None:
            answer = self._work_out(request, refresh)
            if settle and answer.status == OPTIMISTIC:
                answer = self._settled(request, answer)
        answer.elapsed = time.monotonic() - started
        return answer

    def _settled(self, request: RepoPath, optimistic: Resolution) -> Resolution:
        verifying = self.flights.running(self.lifetimes.answer(request).key)
        settled = verifying.result() if verifying is not None else self.cached(request)
        if settled is None:
            return optimistic
        return Resolution(settled.url, settled.status, settled.reason,
                          optimistic.trace + settled.trace, fresh_for=settled.fresh_for)

    def _work_out(self, request: RepoPath, refresh: bool = False) -> Resolution:
        flight = self.lifetimes.answer(request).key
        verifying = self.flights.running(flight)
        if verifying is not None:
            return verifying.result()  # e.g. dnf's retry while its 404 is being looked into
        trace: List[str] = ["a client asked for fresh metadata: checking again"] if refresh else []
        mirrors = self.mirror_lists.mirrors(request, trace, force=refresh)
        if mirrors is None:
            return self._fallback(request, trace, f"no mirror list is available for "
                                  f"{request.triple}" + (f" ({trace[-1]})" if trace else ""))
        at_once = self._can_verify_later() and not self.flights.busy(flight)
        shunned = self._shunned(request)
        if (len(mirrors.bases) == 1 and at_once and self.health.trusted(mirrors.bases[0])
                and mirrors.bases[0] not in shunned):
            # Nothing to choose: no survey or probe stands between the client and the mirror.
            return self._answer_at_once(request, list(mirrors.bases), None, trace,
                                        "the repo's only mirror")
        survey = self.surveys.current(request, mirrors, trace, force=request.is_metadata)
        candidates = self._choose(survey, trace)
        if shunned:
            trace.append("shunned for this path: " + ", ".join(shunned))
            candidates = [b for b in candidates if b not in shunned]
        fresh = candidates[0] if candidates and candidates[0] in survey.fresh else None
        if fresh is not None and request.is_metadata:
            return self._publish(request, fresh, trace, "served the current repomd.xml to "
                                 "the survey")
        if (fresh is not None and request.in_snapshot and at_once
                and self.health.heard_from(fresh, RECENTLY) and self.health.trusted(fresh)):
            return self._answer_at_once(request, candidates, survey, trace,
                                        "it served the current repomd.xml")
        if request.is_root and survey.fresh:
            # A stale mirror's listing shows an old repo: only the current ones may answer.
            candidates = [b for b in candidates if b in survey.fresh] or candidates
        return self.flights.run(flight, lambda: self._verify(request, candidates, trace, survey),
                                lambda: self.cached(request, front=False))

    def _answer_at_once(self, request: RepoPath, candidates: List[str],
                        survey: Optional[Survey], trace: List[str], why: str) -> Resolution:
        """The first candidate, unprobed; the path is verified in the background."""
        self._verify_later(request, candidates, survey)
        base = candidates[0]
        self.watch.used(base, request.triple)
        trace.append(f"{base}: {why}; verifying in the background")
        return Resolution(request.on(base), OPTIMISTIC, f"on {base} ({why})",
                          trace)

    def _choose(self, survey: Survey, trace: List[str]) -> List[str]:
        unhealthy = self.health.unhealthy(survey.ranked)
        if unhealthy:
            trace.append("skipped unhealthy: " + ", ".join(unhealthy))
        healthy = [b for b in survey.ranked if b not in unhealthy]
        return by_downloads(healthy, survey.fresh, self.health.download_speeds(healthy),
                            self._draw)

    def _publish(self, request: RepoPath, base: str, trace: List[str],
                 why: str) -> Resolution:
        url = request.on(base)
        self.watch.used(base, request.triple)
        self.memo.put(self.lifetimes.answer(request), {"url": url, "base": base})
        self.memo.delete(self.lifetimes.miss(request).key)
        trace.append(f"{base}: {why}")
        return Resolution(url, VERIFIED, f"verified on {base}", trace)

    # -- verification -------------------------------------------------------------------------
    def _verify_later(self, request: RepoPath, candidates: List[str],
                      survey: Optional[Survey]) -> None:
        """Verify an optimistic answer in the background. The flight is claimed before the
        answer goes out, so that a request for the same path arriving meanwhile waits for it."""
        name = self.lifetimes.answer(request).key
        future, owner = self.flights.claim(name)
        if not owner:
            return
        trace: List[str] = []

        answered = request.on(candidates[0])

        def verify() -> Optional[Resolution]:
            try:
                resolution = self.flights.finish(
                    name, future, lambda: self._verify(request, candidates, trace, survey),
                    lambda: self.cached(request, front=False))
            except Exception:  # a bug: the waiters got it too; nobody else would see it
                if not self._closing:  # else: the helper is exiting, probes cannot start
                    log.exception("bug while verifying %s in the background", request.key)
                return None
            finally:
                self._verifications(-1)
            if resolution.url != answered:
                log.warning("optimistic answer for %s corrected: %s [%s] %s; %s", request.key,
                            resolution.url or "ERR", resolution.status, resolution.reason,
                            "; ".join(trace))
            return resolution

        self._verifications(+1)
        self._background.submit(verify)

    def _verify(self, request: RepoPath, candidates: List[str], trace: List[str],
                survey: Optional[Survey]) -> Resolution:
        if not candidates and survey is not None and survey.ranked:
            # Every usable mirror is marked unhealthy: one may be back. Ask them before
            # falling back to a last-known answer that names a mirror known to fail.
            shunned = self._shunned(request)
            candidates = [b for b in survey.ranked if b not in shunned]
            trace.append("every usable mirror is marked unhealthy: asking them again")
        base, results = self._probe_in_order(candidates, request)
        if base is None and survey is not None and not survey.complete:
            # Mirrors still being surveyed may have it (a push that the fastest mirror has not
            # synced yet): hear their verdicts before saying that nobody has it.
            complete = self.surveys.completed(request, survey, self.config.probe_timeout + 1)
            shunned = self._shunned(request)
            later = [b for b in self._choose(complete, trace)
                     if b not in candidates and b not in shunned]
            if later:
                candidates = candidates + later
                base, more = self._probe_in_order(later, request)
                results.update(more)
        for probed, result in results.items():
            trace.append(f"{probed}: {result.detail} ({result.elapsed:.2f}s)")
        if base is not None:
            return self._publish(request, base, trace, "answered")
        if request.is_root:
            base = self._root_holder(request, candidates, results, survey, trace)
            if base is not None:
                return self._publish(request, base, trace, "holds the repo, and lists no "
                                     "directory: the client gets the mirror's own answer")
        unasked = [b for b in candidates if b not in results]
        if unasked:
            # Those mirrors' probes for this second are spent (a flood of new paths): the
            # client gets the first one's own answer, and nothing is memoised.
            trace.append(f"probe budget spent on {', '.join(unasked)}: answered unprobed")
            return Resolution(request.on(unasked[0]), OPTIMISTIC,
                              f"on {unasked[0]} (unprobed: max_probes_per_second spent)", trace)
        failures = [r for r in results.values() if r.outcome in (FAILED, ERROR)]
        what = request.path or "the repo root"
        if results and not failures and all(r.outcome == MISSING for r in results.values()):
            reason = f"no mirror has {what} ({len(results)} answered 404)"
            self.memo.put(self.lifetimes.miss(request), reason)
            return Resolution(None, NOT_FOUND, reason, trace)
        if not candidates:
            why = "no healthy mirror holds the current metadata"
        else:
            why = f"no mirror answered for {what} ({len(failures)} failed)"
        return self._fallback(request, trace, why)

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
            now = time.monotonic()
            may_hedge = (now - last_start >= self.config.hedge_delay
                         and len(running) < _MAX_PARALLEL_PROBES)
            if started < len(urls) and (started <= first_open or may_hedge):
                running[self._pool.submit(self.prober.probe, urls[started])] = (started, now)
                started += 1
                last_start = now
                continue
            timeout = min(began + limit for _, began in running.values()) - now
            if started < len(urls) and len(running) < _MAX_PARALLEL_PROBES:
                timeout = min(timeout, self.config.hedge_delay - (now - last_start))
            done, _ = wait(list(running), timeout=max(0.0, timeout),
                           return_when=FIRST_COMPLETED)
            now = time.monotonic()
            for future in list(running):
                index, began = running[future]
                if future in done:
                    results[index] = future.result()
                elif now - began >= limit:  # left to finish on its own; its answer is late
                    results[index] = ProbeResult(urls[index], FAILED, "no answer within "
                                                 f"{self.config.probe_timeout:g}s", now - began,
                                                 timed_out=True)
                else:
                    continue
                del running[future]
                self.health.record(results[index])
        return None, {candidates[i]: r for i, r in results.items()}

    def _fallback(self, request: RepoPath, trace: List[str], why: str) -> Resolution:
        known = self.memo.last(self.lifetimes.answer(request))
        if known is not None:
            trace.append(f"{why}; using the last-known answer")
            return Resolution(known.value["url"], LAST_KNOWN, f"{why}; last-known mirror",
                              trace)
        return Resolution(None, UNAVAILABLE, why, trace)
