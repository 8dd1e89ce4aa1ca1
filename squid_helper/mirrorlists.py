"""The first stage of a resolution: a repo's mirrors for one releasever and arch.

Static mirrors come from the config. Mirrorlists and metalinks are fetched, parsed and memoised
for mirrorlist_ttl, shared by every helper process (one fetch at a time across them). When a
refetch fails, the last good list is kept and the source is left alone for a while.
"""

from __future__ import annotations

import logging
import time
from typing import List, Optional

from .config import Config
from .flight import SingleFlight
from .lifetimes import BASE_INDEX_KEY, Lifetimes
from .memo import Memo
from .probe import FOUND, Prober
from .sources import MirrorSet, SourceError, parse_metalink, parse_mirrorlist
from .urls import RepoPath, expand_template

log = logging.getLogger("squid_helper.mirrorlists")


class MirrorLists:
    def __init__(self, config: Config, memo: Memo, lifetimes: Lifetimes, prober: Prober,
                 flights: SingleFlight):
        self.config = config
        self.memo = memo
        self.lifetimes = lifetimes
        self.prober = prober
        self.flights = flights

    def source_url(self, request: RepoPath) -> Optional[str]:
        """The mirrorlist or metalink URL for this releasever and arch (None: static)."""
        repo = self.config.repos[request.repo]
        if repo.kind == "mirrors":
            return None
        return expand_template(repo.templates[0], request.releasever, request.arch)

    def mirrors(self, request: RepoPath, trace: List[str],
                force: bool = False) -> Optional[MirrorSet]:
        """The repo's mirrors, memoised; the last good list when a refetch fails; None when no
        list was ever had. force: refetch even a fresh list (a metalink that all mirrors
        contradict may be older than they are)."""
        repo = self.config.repos[request.repo]
        if repo.kind == "mirrors":
            return MirrorSet(tuple(expand_template(t, request.releasever, request.arch)
                                   for t in repo.templates))
        fact = self.lifetimes.mirror_list(request.triple)
        known = self.memo.last(fact)
        if known is not None and not force and (
                known.fresh_for(fact, time.time()) > 0 or self.memo.fresh(
                    self.lifetimes.source_retry(request.triple))):
            return known.value  # fresh, or the source failed a moment ago: do not hammer it

        def fetch() -> Optional[MirrorSet]:
            return self._fetch(request, known.value if known else None, trace)

        def published() -> Optional[MirrorSet]:
            latest = self.memo.last(fact)
            if latest is not None and (known is None or latest.at > known.at):
                return latest.value
            return None

        return self.flights.run(fact.key, fetch, published)

    def _fetch(self, request: RepoPath, previous: Optional[MirrorSet],
               trace: List[str]) -> Optional[MirrorSet]:
        kind = self.config.repos[request.repo].kind
        url = self.source_url(request)
        result = self.prober.fetch(url)
        if result.outcome == FOUND:
            try:
                mirrors = (parse_metalink(result.content) if kind == "metalink"
                           else parse_mirrorlist(result.content.decode("utf-8", "replace")))
            except SourceError as exc:
                problem = str(exc)
            else:
                self.memo.put(self.lifetimes.mirror_list(request.triple), mirrors)
                self.memo.add_to_dict(BASE_INDEX_KEY,
                                      dict.fromkeys(mirrors.bases, request.triple),
                                      expire=self.config.last_known_ttl)
                trace.append(f"{kind} {url}: {len(mirrors.bases)} mirrors")
                return mirrors
        else:
            problem = result.detail
        self.memo.put(self.lifetimes.source_retry(request.triple), True)
        log.warning("%s %s unusable: %s%s", kind, url, problem,
                    "; keeping the last good list" if previous else "")
        trace.append(f"{kind} {url}: {problem}")
        return previous
