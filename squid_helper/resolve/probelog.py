"""Each mirror host's last probe result, for `squid-helper status`, written off the request path.

MirrorHealth.record() hears every answer a helper gets from a mirror (survey, probe, watch,
mirror list fetch), often on a thread that a client's request waits for. Writing the result to
the memo there would add a database write to that wait; instead note() keeps the latest result
per host in a dict and has one flush queued on the resolver's background threads, which writes
whatever has gathered by the time it runs (a burst of probes costs one write per host).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Executor
from typing import Callable, Dict, Optional, Tuple

from ..facts.lifetimes import Lifetimes
from ..facts.memo import Memo
from .probe import ProbeResult


def summary(result: ProbeResult) -> Dict[str, object]:
    """What the memo keeps of one result (never its content)."""
    return {"url": result.url, "outcome": result.outcome, "detail": result.detail,
            "elapsed": round(result.elapsed, 6)}


class ProbeLog:
    def __init__(self, memo: Memo, lifetimes: Lifetimes, background: Executor,
                 clock: Callable[[], float] = time.time):
        self.memo = memo
        self.clock = clock
        self.lifetimes = lifetimes
        self.background = background
        self._pending: Dict[str, Tuple[float, Dict[str, object]]] = {}  # host -> (when, what)
        self._scheduled = False
        self._lock = threading.Lock()

    def note(self, host: str, result: ProbeResult) -> None:
        """Remember `result` as the host's latest; costs a dict update on the caller's thread."""
        entry = (self.clock(), summary(result))
        with self._lock:
            self._pending[host] = entry
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.background.submit(self.flush)
        except RuntimeError:  # the resolver is closing: close() flushes what is left
            with self._lock:
                self._scheduled = False

    def flush(self) -> None:
        """Write what was noted since the last flush (the background thread, or close())."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._scheduled = False
        for host, (at, value) in pending.items():
            self.memo.put(self.lifetimes.last_probe(host), value, at=at)

    def latest(self, host: str) -> Optional[Dict[str, object]]:
        """The noted result not written yet, if any (for tests)."""
        with self._lock:
            entry = self._pending.get(host)
        return entry[1] if entry else None
