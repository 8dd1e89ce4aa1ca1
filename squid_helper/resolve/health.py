"""What the helpers know about each mirror host: whether it is failing, and how fast it answers.

Both facts are learnt from the requests the helper makes anyway (surveys, probes) and shared
through the memo. A host that timed out, refused the connection or answered 5xx is skipped for
unhealthy_ttl; marking one bumps the memo's generation, so that no process keeps answering
with it from an in-process copy of an older answer.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional
from urllib.parse import urlsplit

from ..facts.lifetimes import HOST_ERROR_PATHS, HOST_ERROR_WINDOW, MAX_BACKOFF, Lifetimes
from ..facts.memo import Memo, Stored
from ..redaction import host_of  # hosts are keyed and named without credentials
from .probe import ERROR, FAILED, ProbeResult
from .selection import DownloadSpeed

log = logging.getLogger("squid_helper.health")

# Weight of the newest sample in a host's latency estimate: recent enough to follow a mirror
# that slows down, smooth enough that one slow answer does not reorder the mirrors.
_NEWEST_WEIGHT = 0.3


# The weight of a download in a host's usual speed: slow, so that a mirror that slows down
# shows as slower than it used to be for a dozen downloads or so (selection.SLOWED_DOWN).
_USUAL_WEIGHT = 0.05


def moving_average(known: Optional[float], sample: float, weight: float) -> float:
    """The estimate after one more sample (the sample itself when there was none)."""
    return sample if known is None else known * (1 - weight) + sample * weight


@dataclass(frozen=True)
class HostState:
    """What the helpers know of one mirror host."""

    failing: bool  # marked unhealthy, or asked us to back off: skipped
    on_probation: bool  # failed, its mark ran out, not heard from since: probed, not trusted
    heard_at: Optional[float] = None  # wall-clock time of its latest answer (latency sample)

    @property
    def trusted(self) -> bool:
        """Answered unprobed or from the memo: healthy, and not on probation."""
        return not self.failing and not self.on_probation

    def heard_within(self, seconds: float, now: float) -> bool:
        return self.heard_at is not None and now - self.heard_at < seconds


UNKNOWN_HOST = HostState(failing=False, on_probation=False)


def host_state(mark: Optional[Stored], mark_ttl: float, backoff_until: Optional[float],
               heard_at: Optional[float], now: float) -> HostState:
    """A host's state from its facts: its unhealthy mark (kept past its freshness, for
    probation), the end of the back-off it asked for, its latest latency sample."""
    marked = mark is not None and mark.fresh_left(mark_ttl, now) > 0
    backing_off = backoff_until is not None and backoff_until > now
    return HostState(failing=marked or backing_off, on_probation=mark is not None and not marked,
                     heard_at=heard_at)


class MirrorHealth:
    def __init__(self, memo: Memo, lifetimes: Lifetimes,
                 listener: Optional[Callable[[str, ProbeResult], None]] = None,
                 clock: Callable[[], float] = time.time):
        """listener(host, result): told of every result before it is judged; must not block
        (probelog). clock: the wall clock (a back-off ends at a wall-clock time)."""
        self.memo = memo
        self.lifetimes = lifetimes
        self.listener = listener
        self.clock = clock

    def states(self, bases: Iterable[str], heard: bool = True) -> Dict[str, HostState]:
        """Each base's host state, read once (in-process copies; a new mark reaches every
        process through the memo's generation). heard: with when it last answered (one read
        more a host; a memoised answer does not need it)."""
        now = self.clock()
        found = {}
        for base in bases:
            host = host_of(base)
            marked = self.lifetimes.unhealthy(host)
            mark = self.memo.last(marked, front=True)
            backoff = self.memo.fresh(self.lifetimes.backoff(host), front=True)
            latency = self.memo.last(self.lifetimes.latency(host), front=True) if heard else None
            found[base] = host_state(mark, marked.fresh_for,
                                     backoff.value if backoff is not None else None,
                                     latency.at if latency is not None else None, now)
        return found

    def unhealthy(self, bases: Iterable[str]) -> List[str]:
        """The bases whose host is currently marked unhealthy or asked us to back off."""
        return [base for base, state in self.states(bases, heard=False).items()
                if state.failing]

    def is_healthy(self, base: str) -> bool:
        return not self.unhealthy([base])

    def record(self, result: ProbeResult) -> None:
        """Learn from one request to a mirror. A host that cannot be reached (refused, timed
        out) is marked at once. A 5xx or 429 is that path's answer: the host is marked only
        when HOST_ERROR_PATHS distinct paths failed within HOST_ERROR_WINDOW, or when it asks
        to be left alone (Retry-After), for as long as it asks. Any answer is a latency
        sample."""
        host = host_of(result.url)
        if self.listener is not None:
            self.listener(host, result)
        if result.outcome == FAILED:
            self._mark(host, result.detail)
            return
        if result.outcome == ERROR:
            self._count_error(host, result)
            return
        mark = self.lifetimes.unhealthy(host)
        if self.memo.last(mark, front=True) is not None and self.memo.delete(mark.key):
            self.memo.bump_generation()
            log.warning("mirror %s answers again: %s", host, result.detail)
        fact = self.lifetimes.latency(host)
        known = self.memo.last(fact)
        self.memo.put(fact, moving_average(None if known is None else known.value,
                                           result.elapsed, _NEWEST_WEIGHT))

    def _mark(self, host: str, detail: str) -> None:
        self.memo.put(self.lifetimes.unhealthy(host), detail)
        self.memo.bump_generation()
        log.warning("mirror %s marked unhealthy for %gs: %s", host,
                    self.lifetimes.config.unhealthy_ttl, detail)

    def _count_error(self, host: str, result: ProbeResult) -> None:
        now = self.clock()
        if result.retry_after:
            wait = min(result.retry_after, MAX_BACKOFF)
            self.memo.put(self.lifetimes.backoff(host), now + wait)
            self.memo.bump_generation()
            log.warning("mirror %s asked to be left alone for %gs: %s", host, wait,
                        result.detail)
            return
        path = urlsplit(result.url).path

        def add(paths: Optional[Dict[str, float]]) -> Dict[str, float]:
            recent = {p: t for p, t in (paths or {}).items() if now - t < HOST_ERROR_WINDOW}
            recent[path] = now
            return recent

        failing = self.memo.update(self.lifetimes.host_errors(host), add, {path: now})
        if len(failing) >= HOST_ERROR_PATHS:
            self._mark(host, f"{result.detail} for {len(failing)} paths within "
                       f"{HOST_ERROR_WINDOW:g}s")

    def may_probe(self, base: str) -> bool:
        """Spend one of the mirror host's probes for this second, if any is left: a client
        asking for thousands of paths that exist nowhere must not turn the helpers into a
        probe cannon aimed at the mirrors."""
        fact = self.lifetimes.probe_budget(host_of(base), int(self.clock()))
        return self.memo.count(fact) <= self.lifetimes.config.max_probes_per_second

    def latencies(self, bases: Iterable[str]) -> Dict[str, float]:
        """Each base's latency estimate in seconds, for those measured."""
        found = {}
        for base in bases:
            known = self.memo.last(self.lifetimes.latency(host_of(base)))
            if known is not None:
                found[base] = known.value
        return found

    def record_downloads(self, host: str, rates: Iterable[float]) -> None:
        """Learn from Squid's complete downloads from a host (bytes/s each, oldest first):
        the moving averages every process ranks fresh mirrors by (selection.by_downloads)."""
        samples = list(rates)

        def add(known: Optional[Dict[str, float]]) -> Dict[str, float]:
            rate, usual, count = (None, None, 0) if not known else (
                known["rate"], known["usual"], known["samples"])
            for sample in samples:
                rate = moving_average(rate, sample, _NEWEST_WEIGHT)
                usual = moving_average(usual, sample, _USUAL_WEIGHT)
            return {"rate": rate, "usual": usual, "samples": count + len(samples)}

        if samples:
            self.memo.update(self.lifetimes.throughput(host), add, None)

    def download_speeds(self, bases: Iterable[str]) -> Dict[str, DownloadSpeed]:
        """Each base's download speed, for those Squid has downloaded from (the shared memo:
        every proxy's daemon adds to it, and no generation change announces a new sample)."""
        found = {}
        for base in bases:
            known = self.memo.last(self.lifetimes.throughput(host_of(base)))
            if known is not None and isinstance(known.value, dict):
                found[base] = DownloadSpeed(known.value["rate"], known.value["usual"])
        return found
