"""The watch: the mirrors a helper answers with are looked at every few seconds.

The helpers learn of a mirror's troubles only from their own requests, and a busy lab's
requests are mostly answered from memory, without any. A mirror that dies, starts to hang or
rolls back to an older snapshot after its answers were memoised would go on receiving Squid's
fetches, each failing, stalling or 404ing, until some survey or probe happened to notice.

So every WATCH seconds each mirror a process answered with lately (while those answers may
still be reused) is asked for its repomd.xml, conditionally (an unchanged file costs a 304),
by one helper process at a time:
* no answer: the mirror is marked unhealthy (health), and every answer moves off it at once;
* another snapshot than the repo's survey saw: the repo is surveyed again at once (a rollback
  makes the mirror stale and it loses its answers; a push makes it the freshest).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Executor
from typing import Callable, Dict, Tuple

from ..facts.lifetimes import WATCH, Lifetimes
from ..facts.memo import Memo
from .health import MirrorHealth
from .probe import FOUND, UNCHANGED, Prober
from .sources import SourceError, repomd_age_key
from .urls import REPOMD_PATH, join_under_base

log = logging.getLogger("squid_helper.watch")


class Watch:
    def __init__(self, memo: Memo, lifetimes: Lifetimes, health: MirrorHealth, prober: Prober,
                 pool: Executor, surveyed_ages: Callable[[str], Dict[str, Tuple[int, int]]],
                 resurvey: Callable[[str], None]):
        """surveyed_ages(triple): what the repo's latest survey saw of each mirror;
        resurvey(triple): survey that repo again now."""
        self.memo = memo
        self.lifetimes = lifetimes
        self.health = health
        self.prober = prober
        self.pool = pool
        self.surveyed_ages = surveyed_ages
        self.resurvey = resurvey
        self.in_use_for = lifetimes.config.path_ttl  # how long an answer given may be reused
        self._used: Dict[Tuple[str, str], float] = {}  # (base, triple) -> last answered with
        self._validators: Dict[str, tuple] = {}  # base -> its repomd.xml's, for a 304
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="watch", daemon=True)

    def used(self, base: str, triple: str) -> None:
        """This process answered with base for the repo `triple`: watch it for as long as that
        answer may be reused."""
        with self._lock:
            self._used[(base, triple)] = time.monotonic()
            if not self._thread.is_alive() and not self._stopped.is_set():
                self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        while not self._stopped.wait(WATCH / 2):
            now = time.monotonic()
            with self._lock:
                for gone in [k for k, at in self._used.items() if now - at > self.in_use_for]:
                    del self._used[gone]
                watched = list(self._used)
            for base, triple in watched:
                if self._stopped.is_set():
                    return
                try:
                    self._look_at(base, triple)
                except RuntimeError:  # the probe pool is closing (a reload, the exit)
                    return
                except Exception:  # a bug must not end the watch
                    log.exception("bug while watching %s", base)

    def _look_at(self, base: str, triple: str) -> None:
        # One process looks at a mirror per WATCH seconds; a marked one is left alone.
        if not self.health.is_healthy(base) or not self.memo.put_new(
                self.lifetimes.watched(base), True):
            return
        url = join_under_base(base, REPOMD_PATH)
        result = self.pool.submit(self.prober.fetch, url,
                                  self._validators.get(base, ())).result()
        self.health.record(result, conclusive=True)  # no client chose this request
        if result.outcome == UNCHANGED:
            return
        if result.outcome != FOUND:
            log.info("watch: %s: %s", url, result.detail)
            return
        self._validators[base] = result.validators
        try:
            age = repomd_age_key(result.content or b"")
        except SourceError:
            return
        seen = self.surveyed_ages(triple).get(base)
        if seen is not None and seen != age:
            log.warning("watch: %s changed from revision %s to %s since the survey of %s: "
                        "surveying again", url, seen[0], age[0], triple)
            self.resurvey(triple)
