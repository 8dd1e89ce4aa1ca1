"""The first stage of a resolution: a repo's mirrors for one releasever and arch.

Static mirrors come from the config. Mirrorlists and metalinks are fetched, parsed and memoised,
shared by every helper process (one fetch at a time across them), and refetched with the
validators the server gave (If-None-Match / If-Modified-Since), so an unchanged document costs a
304. A metalink also carries the current repomd.xml's hashes, so it holds only as long as a
repomd.xml answer (metadata_ttl); a plain mirrorlist holds for mirrorlist_ttl.

A list past its time is refetched on the request path only when that request needs the current
hashes (a metalink, for repomd.xml); every other request gets the list it had at once, and the
refetch happens in the background. When a refetch fails, the last good list is kept and the
source is left alone for a while.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Optional, Tuple

from ..facts.lifetimes import Fact
from ..facts.memo import Stored
from .context import Stage
from .probe import FAILED, FOUND, UNCHANGED
from .sources import MirrorSet, SourceError, parse_metalink, parse_mirrorlist
from .urls import RepoPath, expand_template

log = logging.getLogger("squid_helper.mirrorlists")


@dataclass(frozen=True)
class SourceDocument:
    """A fetched mirror list as the memo holds it."""

    mirrors: MirrorSet
    validators: Tuple[Tuple[str, str], ...] = ()  # what the server gave to send back


@dataclass(frozen=True)
class _Source:
    """A repo's mirrorlist or metalink for one releasever and arch, and its facts."""

    kind: str  # "mirrorlist" or "metalink"
    url: str
    triple: str
    fact: Fact  # the fetched document
    retry: Fact  # the source sent something unusable: not asked again for a while


# What to do with a repo's memoised mirror list (list_action).
USE, REFETCH_LATER, FETCH = "use", "refetch later", "fetch"


def list_action(known: Optional[Stored], fact: Fact, now: float, force: bool,
                needs_current_hashes: bool) -> str:
    """The freshness policy of mirror lists: a fresh list is used (unless forced); a list
    past its time is used at once and refetched in the background, unless the request needs
    the current hashes (a metalink, for repomd.xml) or the refetch is forced; without a list,
    it is fetched."""
    if known is None:
        return FETCH
    if not force and known.fresh_for(fact, now) > 0:
        return USE
    if not force and not needs_current_hashes:
        return REFETCH_LATER
    return FETCH


class MirrorLists(Stage):
    def mirrors(self, request: RepoPath, trace: List[str],
                force: bool = False) -> Optional[MirrorSet]:
        """The repo's mirrors: the memoised list, refetched as described above; the last good
        list when a refetch fails; None when no list was ever had. force: refetch now even a
        fresh list (a metalink that the mirrors contradict, a client asking for a refresh;
        the callers limit how often)."""
        repo = self.config.repos[request.repo]
        if repo.kind == "mirrors":
            return MirrorSet(tuple(expand_template(t, request.releasever, request.arch)
                                   for t in repo.templates))
        source = _Source(repo.kind, expand_template(repo.templates[0], request.releasever,
                                                    request.arch), request.triple,
                         self.lifetimes.mirror_list(request),
                         self.lifetimes.source_retry(request.triple))
        known = self.memo.last(source.fact)
        action = list_action(known, source.fact, self.clock(), force,
                             needs_current_hashes=repo.kind == "metalink" and request.is_metadata)
        if action == USE:
            return known.value.mirrors
        resting = self._resting(source)
        if resting:
            # The source failed a moment ago: one timeout is enough, whatever is asked next.
            trace.append(resting)
            return known.value.mirrors if known is not None else None
        if action == REFETCH_LATER:
            self._refetch_later(source)
            return known.value.mirrors

        def published() -> Optional[MirrorSet]:
            latest = self.memo.last(source.fact)
            if latest is not None and (known is None or latest.at > known.at):
                return latest.value.mirrors
            return None

        return self.flights.run(source.fact.key, lambda: self._fetch(source, trace), published)

    def _resting(self, source: _Source) -> Optional[str]:
        """Why the source is not asked now, if it is not: its host failed (timed out, refused,
        5xx: health, shared with every repo it serves) or it sent an unusable document."""
        if self.health.unhealthy([source.url]):
            return f"{source.url}: its host is marked unhealthy; not asked again yet"
        unusable = self.memo.fresh(source.retry)
        if unusable is not None:
            ago = self.clock() - unusable.at
            return f"{source.url}: {unusable.value} {ago:.0f}s ago; not asked again yet"
        return None

    def _refetch_later(self, source: _Source) -> None:
        future, owner = self.flights.claim(source.fact.key)
        if not owner:
            return
        try:
            self.background.submit(self.flights.finish, source.fact.key, future,
                                   lambda: self._fetch(source, []), lambda: None)
        except RuntimeError:  # closing (a reload): the next request will refetch
            self.flights.abandon(source.fact.key, future)

    def _fetch(self, source: _Source, trace: List[str]) -> Optional[MirrorSet]:
        kind, url, fact = source.kind, source.url, source.fact
        previous = self.memo.last(fact)
        result = self.prober.fetch(url, previous.value.validators if previous else ())
        self.health.record(result)
        if result.outcome == UNCHANGED and previous is not None:
            self.memo.put(fact, previous.value)  # fresh again, as it was
            trace.append(f"{kind} {url}: unchanged")
            return previous.value.mirrors
        if result.outcome == FOUND:
            try:
                mirrors = (parse_metalink(result.content) if kind == "metalink"
                           else parse_mirrorlist(result.content.decode("utf-8", "replace")))
            except SourceError as exc:
                problem = str(exc)
            else:
                self.memo.put(fact, SourceDocument(mirrors, result.validators))
                self.memo.add_to_index(self.lifetimes.base_index(),
                                       self.lifetimes.base_index_version(),
                                       dict.fromkeys(mirrors.bases, source.triple))
                trace.append(f"{kind} {url}: {len(mirrors.bases)} mirrors")
                if mirrors.skipped:
                    log.warning("%s %s: skipped %d unusable entr%s: %s", kind, url,
                                len(mirrors.skipped), "y" if len(mirrors.skipped) == 1 else
                                "ies", ", ".join(mirrors.skipped[:5]))
                return mirrors
        else:
            problem = result.detail
        if result.outcome != FAILED:  # a failing host is marked unhealthy (health) already
            self.memo.put(source.retry, problem)
        log.warning("%s %s unusable: %s%s", kind, url, problem,
                    "; keeping the last good list" if previous else "")
        trace.append(f"{kind} {url}: {problem}")
        return previous.value.mirrors if previous else None
