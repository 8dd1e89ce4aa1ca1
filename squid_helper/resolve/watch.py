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
from typing import Dict, List, Tuple

from ..facts.lifetimes import WATCH
from .context import Context, Stage
from .mirrorlists import MirrorLists
from .probe import FOUND, UNCHANGED
from .sources import SourceError, repomd_age_key
from .survey import Surveys
from .urls import REPOMD_PATH, RepoPath, join_under_base

log = logging.getLogger("squid_helper.watch")


class Watch(Stage):
    """The mirrors in use and what they serve now. It only looks and tells: its keeper asks
    changes() every WATCH / 2 seconds and surveys again the repos it names."""

    def __init__(self, context: Context):
        super().__init__(context)
        self.in_use_for = context.config.path_ttl  # how long an answer given may be reused
        self._used: Dict[Tuple[str, str], float] = {}  # (base, triple) -> last answered with
        self._validators: Dict[str, tuple] = {}  # base -> its repomd.xml's, for a 304
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def used(self, base: str, triple: str) -> None:
        """This process answered with base for the repo `triple`: watch it for as long as that
        answer may be reused."""
        with self._lock:
            self._used[(base, triple)] = self.timer()

    def stop(self) -> None:
        self._stopped.set()

    def changes(self) -> List[str]:
        """Look at each mirror in use (those another process looked at just now, and those
        marked unhealthy, are left alone): the repos whose survey saw another snapshot on one
        of them than it serves now. Raises RuntimeError when the probe pool is closing."""
        now = self.timer()
        with self._lock:
            for gone in [k for k, at in self._used.items() if now - at > self.in_use_for]:
                del self._used[gone]
            watched = list(self._used)
        changed: List[str] = []
        for base, triple in watched:
            if self._stopped.is_set():
                break
            try:
                if self._changed(base, triple) and triple not in changed:
                    changed.append(triple)
            except RuntimeError:
                raise
            except Exception:  # a bug must not end the watch
                log.exception("bug while watching %s", base)
        return changed

    def _changed(self, base: str, triple: str) -> bool:
        # One process looks at a mirror per WATCH seconds; a marked one is left alone.
        if not self.health.is_healthy(base) or not self.memo.put_new(
                self.lifetimes.watched(base), True):
            return False
        url = join_under_base(base, REPOMD_PATH)
        result = self.pool.submit(self.prober.fetch, url,
                                  self._validators.get(base, ())).result()
        self.health.record(result)
        if result.outcome == UNCHANGED:
            return False
        if result.outcome != FOUND:
            log.info("watch: %s: %s", url, result.detail)
            return False
        self._validators[base] = result.validators
        try:
            age = repomd_age_key(result.content or b"")
        except SourceError:
            return False
        survey = self.memo.last(self.lifetimes.survey(triple))
        seen = survey.value.ages.get(base) if survey is not None else None
        if seen is not None and seen != age:
            log.warning("watch: %s changed from revision %s to %s since the survey of %s: "
                        "surveying again", url, seen[0], age[0], triple)
            return True
        return False


class WatchKeeper:
    """Runs the watch on a thread of its own, started with the first answer given: every
    WATCH / 2 seconds it asks the watch what changed, and surveys those repos again."""

    def __init__(self, watch: Watch, mirror_lists: MirrorLists, surveys: Surveys):
        self.watch = watch
        self.mirror_lists = mirror_lists
        self.surveys = surveys
        self._thread = threading.Thread(target=self._keep, name="watch", daemon=True)
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def used(self, base: str, triple: str) -> None:
        """This process answered with base for the repo `triple` (Watch.used)."""
        self.watch.used(base, triple)
        if self._thread.ident is not None:  # started (the hot path ends here)
            return
        with self._lock:
            if self._thread.ident is None and not self._stopped.is_set():
                self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self.watch.stop()

    def _keep(self) -> None:
        while not self._stopped.wait(WATCH / 2):
            try:
                for triple in self.watch.changes():
                    if self._stopped.is_set():
                        return
                    self.resurvey(triple)
            except RuntimeError:  # the probe pool is closing (a reload, the exit)
                return
            except Exception:  # a bug must not end the watch
                log.exception("bug while keeping the watch")

    def resurvey(self, triple: str) -> None:
        """Survey a repo again now (the watch saw a mirror's snapshot change)."""
        request = RepoPath(*triple.split("/"), REPOMD_PATH)
        trace: List[str] = []
        mirrors = self.mirror_lists.mirrors(request, trace)
        if mirrors is not None:
            self.surveys.current(request, mirrors, trace, force=True)
            log.info("survey of %s after a change: %s", triple, "; ".join(trace))
