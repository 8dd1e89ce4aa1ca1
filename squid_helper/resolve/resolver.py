"""Resolve a repo path to a mirror URL: a pipeline of sources -> survey -> choose -> answer.

1. A fresh memoised answer on a healthy mirror is reused, whichever helper process found it.
2. Otherwise: the repo's mirror list (mirrorlists), which of its mirrors hold the current
   repodata (survey), the healthy ones in order, fastest fresh mirror first, without those
   shunned for the path (decide.candidates), and the answer:
   * repomd.xml: the first mirror that served the current one to the survey just now;
   * a package or checksum-named repodata: the same mirror at once, since it holds the snapshot
     whose repomd.xml it served; the path is verified in the background, and a request for it
     that arrives before the verification ends waits for it, so that dnf's retry after a
     half-synced mirror's 404 goes to a mirror that has the file;
   * the repo root (/<repo>/<releasever>/<arch>/): the base URL of a mirror holding the
     current repodata, preferring one that answers for the base URL itself (see
     verify.Verifier._root_holder);
   * anything else: probed on the mirrors in order (one process at a time, across processes).
3. When nothing can be verified, the last-known answer is reused so that Squid can serve the
   copy it holds; only without one does the client get an error.

Each request's facts are read at once (snapshots.FactReader -> decide.Snapshot), decided on
by the pure policies of decide.py, acted on (mirror list, survey, then verify.Verifier's
probes) and published in one place (Verifier.publish). The watch only tells which repos
changed; its keeper surveys them again (watch.WatchKeeper).
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Callable, List, Optional

from ..config.settings import Config
from ..facts.flight import SingleFlight
from ..facts.lifetimes import Lifetimes
from ..facts.memo import Memo
from . import decide
from .context import Context
from .decide import (  # noqa: F401 (the statuses callers compare with)
    AT_ONCE,
    LAST_KNOWN,
    MEMO,
    NOT_FOUND,
    OPTIMISTIC,
    PUBLISH,
    UNAVAILABLE,
    VERIFIED,
    Resolution,
    Snapshot,
)
from .health import MirrorHealth
from .mirrorlists import MirrorLists
from .probe import Prober
from .probelog import ProbeLog
from .probing import Verifier
from .snapshots import FactReader
from .survey import Surveys
from .urls import RepoPath
from .watch import Watch, WatchKeeper

_BACKGROUND_THREADS = 4


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
        self.flights = SingleFlight(memo, config.probe_timeout * 4 + 2, timer)
        self.probe_log = ProbeLog(memo, self.lifetimes, self._background, self.clock)
        self.health = MirrorHealth(memo, self.lifetimes, listener=self.probe_log.note,
                                   clock=self.clock)
        context = Context(config, memo, self.lifetimes, self.prober, self.flights, self.health,
                          self._pool, self._background, self.clock, timer)
        self.reader = FactReader(context)
        self.mirror_lists = MirrorLists(context)
        self.surveys = Surveys(context, self.mirror_lists)
        self.keeper = WatchKeeper(Watch(context), self.mirror_lists, self.surveys)
        self._draw = random.Random()  # which of the equally fast mirrors leads (by_downloads)
        self.verifier = Verifier(context, self.reader, self.surveys, self.keeper, self._draw)

    def close(self, finish: bool = True) -> None:
        """Release threads and connections (the helper loop calls this when no request of this
        resolver's is left). finish: let queued background work (verifications that other
        processes may wait for) run first; at exit it is dropped."""
        # Never cancel probes: a cancelled Future does not wake concurrent.futures.wait().
        self.verifier.stop()
        self.keeper.stop()
        self._background.shutdown(wait=finish, cancel_futures=not finish)
        self._pool.shutdown(wait=finish)
        self.probe_log.flush()  # a flush cancelled with the background work: one write a host
        self.prober.close()

    # -- memoised answers ---------------------------------------------------------------------
    def cached(self, request: RepoPath, front: bool = True) -> Optional[Resolution]:
        """The memoised answer if it is still fresh and its mirror still good (decide.
        still_good); never probes (the per-request hot path). front=False reads the shared
        memo only, for waiters that need another process's fresh answer."""
        resolution = decide.memo_answer(self.reader.snapshot(request, front))
        if resolution is not None and resolution.base is not None:
            self.keeper.used(resolution.base, request.triple)
        return resolution

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
        started = self.timer()
        snapshot = self.reader.snapshot(request, refresh=refresh, working=True)
        # Of the processes asked at once, one checks again (put_new).
        refresh = decide.refresh_due(snapshot) and self.memo.put_new(
            snapshot.facts.refresh_check, True)
        answer = None if refresh else decide.memo_answer(snapshot)
        if answer is not None and answer.base is not None:
            self.keeper.used(answer.base, request.triple)
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
                          optimistic.trace + settled.trace, fresh_for=settled.fresh_for,
                          base=settled.base)

    def _work_out(self, snapshot: Snapshot, refresh: bool = False) -> Resolution:
        """Mirror list -> (the only mirror, at once) -> survey -> plan -> publish, answer at
        once, or verify."""
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
        may_verify_later = self.verifier.can_verify_later() and not snapshot.verifying
        snapshot = self.reader.with_hosts(snapshot, mirrors.bases)
        only = decide.only_mirror(snapshot, mirrors.bases)
        if only is not None and may_verify_later:
            # Nothing to choose: no survey or probe stands between the client and the mirror,
            # and its verification consults none (an old one's verdicts are not waited for).
            return self.verifier.at_once(replace(snapshot, survey=None), [only], trace,
                                         "the repo's only mirror")
        survey = self.surveys.current(request, mirrors, trace, force=request.is_metadata)
        snapshot = self.reader.with_hosts(snapshot, survey.ranked, speeds=True, survey=survey)
        plan = decide.plan(snapshot, decide.candidates(snapshot, survey.ranked, trace,
                                                       self._draw), may_verify_later)
        if plan.action == PUBLISH:
            return self.verifier.publish(snapshot, plan.candidates[0], trace, plan.why)
        if plan.action == AT_ONCE:
            return self.verifier.at_once(snapshot, list(plan.candidates), trace, plan.why)
        return self.verifier.verify(snapshot, list(plan.candidates), trace)
