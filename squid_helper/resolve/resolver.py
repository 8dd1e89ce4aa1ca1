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

Each step reads the facts it needs at once (a decide.Snapshot), decides with the pure policies
of decide.py, acts (mirror list, survey, probes) and publishes what it learnt in one place
(_publish). The watch only tells which repos changed; the resolver's watch thread surveys them.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..config.settings import Config
from ..facts.flight import SingleFlight
from ..facts.lifetimes import WATCH, Lifetimes
from ..facts.memo import Memo
from . import decide
from .context import Context
from .decide import (  # noqa: F401 (LAST_KNOWN, MEMO, VERIFIED: the statuses callers compare)
    AT_ONCE,
    LAST_KNOWN,
    MEMO,
    NOT_FOUND,
    OPTIMISTIC,
    PUBLISH,
    UNAVAILABLE,
    VERIFIED,
    PathFacts,
    Resolution,
    Snapshot,
)
from .health import MirrorHealth
from .mirrorlists import MirrorLists
from .probe import FAILED, FOUND, MISSING, Prober, ProbeResult
from .probelog import ProbeLog
from .survey import Survey, Surveys
from .urls import REPOMD_PATH, RepoPath
from .watch import Watch

log = logging.getLogger("squid_helper.resolver")

_MAX_PARALLEL_PROBES = 4
MAX_BACKGROUND_VERIFICATIONS = 64
_BACKGROUND_THREADS = 4
_PROBE_SLACK = 1.0


class Resolver:
    def __init__(self, config: Config, memo: Memo, prober: Optional[Prober] = None,
                 timer: Callable[[], float] = time.monotonic):
        """The wall clock is the memo's (memo.clock); timer measures waits and durations."""
        self.config = config
        self.memo = memo
        self.prober = prober or Prober.for_config(config)
        self.lifetimes = Lifetimes(config)
        self.clock = memo.clock
        self.timer = timer
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
        self.probe_log = ProbeLog(memo, self.lifetimes, self._background, self.clock)
        self.health = MirrorHealth(memo, self.lifetimes, listener=self.probe_log.note,
                                   clock=self.clock)
        context = Context(config, memo, self.lifetimes, self.prober, self.flights, self.health,
                          self._pool, self._background, self.clock, timer)
        self.mirror_lists = MirrorLists(context)
        self.surveys = Surveys(context, self.mirror_lists)
        self.watch = Watch(context)
        self._watch_thread = threading.Thread(target=self._keep_watch, name="watch",
                                              daemon=True)
        self._watch_lock = threading.Lock()
        self._stopped = threading.Event()

    def close(self, finish: bool = True) -> None:
        """Release threads and connections (the helper loop calls this when no request of this
        resolver's is left). finish: let queued background work (verifications that other
        processes may wait for) run first; at exit it is dropped."""
        # Never cancel probes: a cancelled Future does not wake concurrent.futures.wait().
        self._closing = True
        self._stopped.set()
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

    # -- the facts a request needs ------------------------------------------------------------
    def _snapshot(self, request: RepoPath, front: bool = True, bases: Sequence[str] = (),
                  refresh: bool = False) -> Snapshot:
        """Read once what the decisions about `request` need: its memoised answer and miss,
        the repo's survey, the mirrors shunned for it, the state of the hosts involved (the
        answer's, and `bases`) and, when a client asked for fresh metadata (`refresh`), when
        the repo was last checked again for one. front=False reads the answer from the shared
        memo, for waiters that need another process's fresh answer."""
        facts = PathFacts(self.lifetimes.answer(request), self.lifetimes.miss(request),
                          self.lifetimes.refresh_check(request.triple))
        answer = self.memo.last(facts.answer, front)
        survey = self.memo.last(self.lifetimes.survey(request.triple), front=True)
        shunned = self.memo.fresh(self.lifetimes.shunned(request), front=True)
        involved = list(bases) + ([answer.value["base"]] if answer is not None else [])
        return Snapshot(request, self.clock(), facts, answer, self.memo.last(facts.miss, front),
                        survey.value if survey is not None else None,
                        self.health.states(involved),
                        dict(shunned.value) if shunned is not None else {},
                        refresh, self.memo.last(facts.refresh_check) if refresh else None)

    def _with_hosts(self, snapshot: Snapshot, bases: Sequence[str], **changes) -> Snapshot:
        """The snapshot with the current state of `bases` (after a survey or probes, which
        judge hosts), and any other fields replaced."""
        return replace(snapshot, hosts={**snapshot.hosts, **self.health.states(bases)},
                       now=self.clock(), **changes)

    # -- memoised answers ---------------------------------------------------------------------
    def cached(self, request: RepoPath, front: bool = True) -> Optional[Resolution]:
        """The memoised answer if it is still fresh and its mirror still good (decide.
        still_good); never probes (the per-request hot path). front=False reads the shared
        memo only, for waiters that need another process's fresh answer."""
        snapshot = self._snapshot(request, front)
        return self._used_if_answered(snapshot, decide.memo_answer(snapshot))

    def _used_if_answered(self, snapshot: Snapshot, resolution: Optional[Resolution]
                          ) -> Optional[Resolution]:
        """A memoised answer given: its mirror is watched meanwhile."""
        if resolution is not None and resolution.url is not None:
            self._used(snapshot.answer.value["base"], snapshot.request.triple)
        return resolution

    def forget(self, request: RepoPath) -> int:
        """Drop what the memo knows about one path (used by purge), in every process."""
        dropped = sum(self.memo.delete(fact.key) for fact in (
            self.lifetimes.answer(request), self.lifetimes.miss(request)))
        self.memo.bump_generation()
        return dropped

    # -- the watch ----------------------------------------------------------------------------
    def _used(self, base: str, triple: str) -> None:
        """This process answers with base for the repo: the watch looks at it meanwhile."""
        self.watch.used(base, triple)
        with self._watch_lock:
            if not self._watch_thread.is_alive() and not self._stopped.is_set():
                self._watch_thread.start()

    def _keep_watch(self) -> None:
        while not self._stopped.wait(WATCH / 2):
            try:
                changed = self.watch.changes()
            except RuntimeError:  # the probe pool is closing (a reload, the exit)
                return
            for triple in changed:
                if self._stopped.is_set():
                    return
                try:
                    self._resurvey(triple)
                except RuntimeError:
                    return
                except Exception:  # a bug must not end the watch
                    log.exception("bug while surveying %s again", triple)

    def _resurvey(self, triple: str) -> None:
        """Survey a repo again now (the watch saw a mirror's snapshot change)."""
        request = RepoPath(*triple.split("/"), REPOMD_PATH)
        trace: List[str] = []
        mirrors = self.mirror_lists.mirrors(request, trace)
        if mirrors is not None:
            self.surveys.current(request, mirrors, trace, force=True)
            log.info("survey of %s after a change: %s", triple, "; ".join(trace))

    # -- the pipeline -------------------------------------------------------------------------
    def resolve(self, request: RepoPath, settle: bool = False,
                refresh: bool = False) -> Resolution:
        """Answer for one path; works it out only when no fresh answer is memoised.
        settle: an optimistic answer is not enough, wait for its verification (for operators
        asking why, not for Squid). refresh: the client asked for fresh metadata (no-cache);
        for repomd.xml the repo's freshness is checked again, at most once per
        refresh_interval, even while the memoised answer holds."""
        started = self.timer()
        snapshot = self._snapshot(request, refresh=refresh)
        # Of the processes asked at once, one checks again (put_new).
        refresh = decide.refresh_due(snapshot) and self.memo.put_new(
            snapshot.facts.refresh_check, True)
        answer = None if refresh else self._used_if_answered(snapshot,
                                                             decide.memo_answer(snapshot))
        if answer is None:
            answer = self._work_out(snapshot, refresh)
            if settle and answer.status == OPTIMISTIC:
                answer = self._settled(snapshot, answer)
        answer.elapsed = self.timer() - started
        return answer

    def _settled(self, snapshot: Snapshot, optimistic: Resolution) -> Resolution:
        verifying = self.flights.running(snapshot.facts.answer.key)
        settled = verifying.result() if verifying is not None else self.cached(snapshot.request)
        if settled is None:
            return optimistic
        return Resolution(settled.url, settled.status, settled.reason,
                          optimistic.trace + settled.trace, fresh_for=settled.fresh_for)

    def _work_out(self, snapshot: Snapshot, refresh: bool = False) -> Resolution:
        request = snapshot.request
        flight = snapshot.facts.answer.key
        verifying = self.flights.running(flight)
        if verifying is not None:
            return verifying.result()  # e.g. dnf's retry while its 404 is being looked into
        trace: List[str] = ["a client asked for fresh metadata: checking again"] if refresh else []
        mirrors = self.mirror_lists.mirrors(request, trace, force=refresh)
        if mirrors is None:
            return decide.fallback(snapshot, trace, f"no mirror list is available for "
                                   f"{request.triple}" + (f" ({trace[-1]})" if trace else ""))
        may_verify_later = self._can_verify_later() and not self.flights.busy(flight)
        snapshot = self._with_hosts(snapshot, mirrors.bases)
        only = decide.only_mirror(snapshot, mirrors.bases)
        if only is not None and may_verify_later:
            # Nothing to choose: no survey or probe stands between the client and the mirror.
            return self._answer_at_once(snapshot, [only], trace, "the repo's only mirror")
        survey = self.surveys.current(request, mirrors, trace, force=request.is_metadata)
        snapshot = self._with_hosts(snapshot, survey.ranked, survey=survey)
        plan = decide.plan(snapshot, decide.candidates(snapshot, survey.ranked, trace),
                           may_verify_later)
        if plan.action == PUBLISH:
            return self._publish(snapshot, plan.candidates[0], trace, plan.why)
        if plan.action == AT_ONCE:
            return self._answer_at_once(snapshot, list(plan.candidates), trace, plan.why)
        return self.flights.run(flight, lambda: self._verify(snapshot, list(plan.candidates),
                                                             trace),
                                lambda: self.cached(request, front=False))

    def _answer_at_once(self, snapshot: Snapshot, candidates: List[str], trace: List[str],
                        why: str) -> Resolution:
        """The first candidate, unprobed; the path is verified in the background."""
        request = snapshot.request
        self._verify_later(snapshot, candidates)
        base = candidates[0]
        self._used(base, request.triple)
        trace.append(f"{base}: {why}; verifying in the background")
        return Resolution(request.on(base), OPTIMISTIC, f"on {base} ({why})", trace)

    def _publish(self, snapshot: Snapshot, base: str, trace: List[str],
                 why: str) -> Resolution:
        """A verified answer: memoised for every process, and its mirror watched."""
        request = snapshot.request
        value = decide.answer_value(request, base)
        self._used(base, request.triple)
        self.memo.put(snapshot.facts.answer, value)
        self.memo.delete(snapshot.facts.miss.key)
        trace.append(f"{base}: {why}")
        return Resolution(value["url"], VERIFIED, f"verified on {base}", trace)

    # -- verification -------------------------------------------------------------------------
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

    def _verify(self, snapshot: Snapshot, candidates: List[str],
                trace: List[str]) -> Resolution:
        request, survey = snapshot.request, snapshot.survey
        candidates = decide.retry_candidates(snapshot, candidates, trace)
        base, results = self._probe_in_order(candidates, request)
        if base is None and survey is not None and not survey.complete:
            # Mirrors still being surveyed may have it (a push that the fastest mirror has not
            # synced yet): hear their verdicts before saying that nobody has it.
            complete = self.surveys.completed(request, survey, self.config.probe_timeout + 1)
            snapshot = self._with_hosts(snapshot, complete.ranked, survey=complete)
            later = [b for b in decide.candidates(snapshot, complete.ranked, trace)
                     if b not in candidates]
            if later:
                candidates = candidates + later
                base, more = self._probe_in_order(later, request)
                results.update(more)
        for probed, result in results.items():
            trace.append(f"{probed}: {result.detail} ({result.elapsed:.2f}s)")
        if base is not None:
            return self._publish(snapshot, base, trace, "answered")
        if request.is_root:
            base = self._root_holder(request, candidates, results, snapshot.survey, trace)
            if base is not None:
                return self._publish(snapshot, base, trace, "holds the repo, and lists no "
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
        return decide.fallback(self._snapshot(request, front=False), trace,
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
                running[self._pool.submit(self.prober.probe, urls[started])] = (started, now)
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
