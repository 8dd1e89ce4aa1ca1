"""The store_id_program: one Squid cache key per repo path, whichever mirror served it.

Squid stores an object under the URL the rewrite helper answered with. After a failover to
another mirror that URL changes, and the cached copy would be lost. This helper maps every
mirror URL of a repo path to the same key:
    http://squid-helper.invalid/<repo>/<releasever>/<arch>/<path>

The key spells the path as the rewrite helper does (urls.canonical_path), so that a file
requested as snap-1.0%5e1.rpm and as snap-1.0^1.rpm is one object.

Only a URL that the rewrite helper could have answered with gets the key: one under a mirror
base of the config or of a fetched mirror list, with a safe path and no query. The virtual
host, accel-port URLs and unknown hosts never do: if Squid ever fetched one of those as it
is (a rewrite helper that died), whatever came back must not land under the key every client
reads. The key's host cannot resolve (.invalid, RFC 6761), and squid.conf refuses it to
clients.

And only a request that can put nothing but the repo's bytes under the key gets it
(may_share): one the rewrite helper answered (its note repo-rewrite=ok, which Squid passes in
store_id_extras), or one carrying only-if-cached (a sibling's fetch, which Squid answers from
its cache or with a 504, never from a mirror). A client asking for a mirror's own URL gets no
key: that mirror may be stale, answer with a redirect or a 410, or be one the helper refused,
and whatever it sends is stored under that URL alone.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple, Union

from ..config.settings import Config
from ..facts.lifetimes import Lifetimes
from ..facts.memo import Memo
from ..resolve.urls import RepoPath, canonical_path, relative_path_problem, template_pattern
from .helperloop import SlowAnswer
from .protocol import HelperRequest, Reply, cache_only, err, ok
from .rewrite import REWRITTEN_NOTE

log = logging.getLogger("squid_helper.storeid")

STORE_ID_HOST = "squid-helper.invalid"  # squid.conf refuses it to clients (squidconf)
# A URL's store key never changes while the config stays; a new config clears the loop's cache.
KEY_REUSE_SECONDS = 3600.0
_UNSEEN = object()


# store_id_extras as squid.conf.in has it: the rewrite helper's note (Squid sends "-" for a
# request it did not rewrite) and the client's cache directives.
STORE_ID_EXTRAS = "myport=%lp rewritten=%{repo-rewrite}note cache-control=%{Cache-Control}>h"
REWRITTEN_EXTRA = "rewritten"


def may_share(extras: Mapping[str, str]) -> bool:
    """Whether a request may be stored under (or read from) the shared key: the rewrite helper
    chose its mirror, or Squid will not fetch it at all (only-if-cached)."""
    rewritten = extras.get(REWRITTEN_EXTRA, "").split(",")
    return REWRITTEN_NOTE["repo_rewrite"] in rewritten or cache_only(extras)


def store_key(repo: str, releasever: str, arch: str, path: str) -> str:
    return f"http://{STORE_ID_HOST}/{repo}/{releasever}/{arch}/{path}"


def key_for(request: RepoPath) -> str:
    return store_key(request.repo, request.releasever, request.arch, request.path)


class StoreIdMapper:
    """Maps URLs to store keys. Static mirrors come from the config; mirrors named by
    mirrorlists and metalinks come from the base index the rewrite helpers keep in the memo.

    The index (some 30,000 bases for 300 releases of 100 mirrors) is copied into this process
    and read again only when it changed: the rewrite helper that adds bases stores a new
    version token and bumps the memo's generation (Memo.add_to_index) before it answers with a
    URL under one of them, and a URL that matches no known base looks at the generation
    (Memo.generation: every GENERATION_CHECK_SECONDS at most, 50 ms with Redis), then at the
    token only when the generation moved. A URL of any other site costs a few dictionary
    lookups, however many mirrors are known."""

    def __init__(self, config: Config, memo: Memo):
        self.config = config
        self.memo = memo
        self.lifetimes = Lifetimes(config)
        self._static = [(name, template_pattern(t)) for name, repo in config.repos.items()
                        if repo.kind == "mirrors" for t in repo.templates]
        self._bases: Dict[str, str] = {}  # base URL (ending in '/') -> triple
        self._generation: Any = _UNSEEN
        self._version: Any = _UNSEEN
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        """Copy the index again if another process added to it since it was last copied."""
        generation = self.memo.generation()
        if generation == self._generation:
            return
        with self._lock:
            if generation == self._generation:
                return
            version = self.memo.get(self.lifetimes.base_index_version().key)
            # No token: an index of an older version's, or none; read it at each new
            # generation (not for each URL) until a token comes with it.
            if version is None or version != self._version:
                index = self.memo.get(self.lifetimes.base_index().key)
                if isinstance(index, dict):
                    self._bases, self._version = dict(index), version
                elif version is not None:
                    # There is an index, but it could not be read now (a busy memo): keep
                    # the copy (keys never change) and try again with the next URL.
                    return
            self._generation = generation

    def _from_bases(self, url: str) -> Optional[Tuple[RepoPath, str]]:
        bases = self._bases
        for base in _bases_of(url):  # the longest first
            triple = bases.get(base)
            if triple is not None:
                path = url[len(base):]
                if relative_path_problem(path) is None:
                    return RepoPath(*triple.split("/", 2), canonical_path(path)), base
        return None

    def _from_templates(self, url: str) -> Optional[Tuple[RepoPath, str]]:
        for repo, pattern in self._static:
            match = pattern.fullmatch(url)
            if match and relative_path_problem(match["path"]) is None:
                request = RepoPath(
                    repo, match["releasever"] if "releasever" in pattern.groupindex else "-",
                    match["arch"] if "arch" in pattern.groupindex else "-",
                    canonical_path(match["path"]))
                return request, url[:match.start("path")]
        return None

    def locate(self, url: str) -> Optional[Tuple[RepoPath, str]]:
        """The repo path a mirror URL holds, and the mirror's base URL; None for any other
        URL (the fetch log daemon learns from Squid's fetches with it)."""
        if not url.startswith(("http://", "https://")) or "?" in url or "#" in url:
            return None  # a query (S3's ?acl, ?list ...) asks the mirror for another body
        found = self._from_templates(url)
        if found is None:
            self._refresh()
            found = self._from_bases(url)
        return found

    def key(self, url: str) -> Optional[str]:
        """The shared key of a mirror URL of a repo path, or None for any other URL."""
        found = self.locate(url)
        return key_for(found[0]) if found is not None else None


def _bases_of(url: str) -> Iterator[str]:
    """Every prefix of url that ends in '/' after its host (a mirror base could be), longest
    first: a base index lookup is one dictionary lookup per path segment."""
    start = url.find("/", url.find("://") + 3)
    end = url.rfind("/")
    while start != -1 and end >= start:
        yield url[:end + 1]
        end = url.rfind("/", start, end)


class StoreIdHandler:
    def __init__(self, mapper: StoreIdMapper):
        self.mapper = mapper
        self._told_extras = False

    def answer(self, request: HelperRequest) -> Union[Reply, SlowAnswer]:
        if REWRITTEN_EXTRA not in request.extras and not self._told_extras:
            self._told_extras = True
            log.warning("Squid sends no %s= in store_id_extras, so only sibling fetches "
                        "(only-if-cached) get the shared cache key: a failover loses the cache. "
                        "squid.conf needs store_id_extras \"%s\" (as squid-helper serve "
                        "renders it)", REWRITTEN_EXTRA, STORE_ID_EXTRAS)
        if not may_share(request.extras):
            # Depends on the extras alone, which the reply cache's key holds.
            return err().reusable_for(KEY_REUSE_SECONDS)
        key = self.mapper.key(request.url)
        # A key never changes for a URL; "no key" may, once a new mirror list is published.
        return ok(store_id=key).reusable_for(KEY_REUSE_SECONDS) if key else err()

    def reuse_token(self) -> object:
        return None  # keys are only ever added to the index, never changed

    def close(self, finish: bool = True) -> None:
        self.mapper.memo.close()
