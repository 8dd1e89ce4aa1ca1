"""What the helpers know about each mirror host: whether it is failing, and how fast it answers.

Both facts are learnt from the requests the helper makes anyway (surveys, probes) and shared
through the memo. A host that timed out, refused the connection or answered 5xx is skipped for
unhealthy_ttl; marking one bumps the memo's generation, so that no process keeps answering
with it from an in-process copy of an older answer.
"""

from __future__ import annotations

import logging
import time
from typing import Dict, Iterable, List
from urllib.parse import urlsplit

from .lifetimes import Lifetimes
from .memo import Memo
from .probe import FAILED, ProbeResult

log = logging.getLogger("squid_helper.health")

# Weight of the newest sample in a host's latency estimate: recent enough to follow a mirror
# that slows down, smooth enough that one slow answer does not reorder the mirrors.
_NEWEST_WEIGHT = 0.3


def host_of(url: str) -> str:
    return urlsplit(url).netloc


class MirrorHealth:
    def __init__(self, memo: Memo, lifetimes: Lifetimes):
        self.memo = memo
        self.lifetimes = lifetimes

    def unhealthy(self, bases: Iterable[str]) -> List[str]:
        """The bases whose host is currently marked unhealthy (in-process copy; a new mark
        reaches every process through the memo's generation)."""
        return [b for b in bases
                if self.memo.fresh(self.lifetimes.unhealthy(host_of(b)), front=True)]

    def is_healthy(self, base: str) -> bool:
        return not self.unhealthy([base])

    def record(self, result: ProbeResult) -> None:
        """Learn from one request to a mirror: a failure marks the host, an answer (even a
        404) is a latency sample."""
        host = host_of(result.url)
        if result.outcome == FAILED:
            self.memo.put(self.lifetimes.unhealthy(host), result.detail)
            self.memo.bump_generation()
            log.warning("mirror %s marked unhealthy for %gs: %s", host,
                        self.lifetimes.config.unhealthy_ttl, result.detail)
            return
        fact = self.lifetimes.latency(host)
        known = self.memo.last(fact)
        estimate = result.elapsed if known is None else (
            known.value * (1 - _NEWEST_WEIGHT) + result.elapsed * _NEWEST_WEIGHT)
        self.memo.put(fact, estimate)

    def may_probe(self, base: str) -> bool:
        """Spend one of the mirror host's probes for this second, if any is left: a client
        asking for thousands of paths that exist nowhere must not turn the helpers into a
        probe cannon aimed at the mirrors."""
        fact = self.lifetimes.probe_budget(host_of(base), int(time.time()))
        return self.memo.count(fact) <= self.lifetimes.config.max_probes_per_second

    def heard_from(self, base: str, within: float) -> bool:
        """Whether the mirror answered one of the helpers' requests in the last `within`
        seconds (its latency sample is that recent)."""
        # This process's copy: its own samples replace it, another's reach it with the next
        # change of the memo's generation; at worst a mirror is probed when it need not be.
        known = self.memo.last(self.lifetimes.latency(host_of(base)), front=True)
        return known is not None and time.time() - known.at < within

    def latencies(self, bases: Iterable[str]) -> Dict[str, float]:
        """Each base's latency estimate in seconds, for those measured."""
        found = {}
        for base in bases:
            known = self.memo.last(self.lifetimes.latency(host_of(base)))
            if known is not None:
                found[base] = known.value
        return found
