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
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Dict, Iterator, Optional, Union

from ..config.settings import Config
from ..facts.lifetimes import Lifetimes
from ..facts.memo import Memo
from ..resolve.urls import RepoPath, canonical_path, relative_path_problem, template_pattern
from .helperloop import SlowAnswer
from .protocol import HelperRequest, Reply, err, ok

log = logging.getLogger("squid_helper.storeid")

STORE_ID_HOST = "squid-helper.invalid"  # squid.conf refuses it to clients (squidconf)
# A URL's store key never changes while the config stays; a new config clears the loop's cache.
KEY_REUSE_SECONDS = 3600.0
_UNSEEN = object()


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

    def _from_bases(self, url: str) -> Optional[str]:
        bases = self._bases
        for base in _bases_of(url):  # the longest first
            triple = bases.get(base)
            if triple is not None:
                path = url[len(base):]
                if relative_path_problem(path) is None:
                    return f"http://{STORE_ID_HOST}/{triple}/{canonical_path(path)}"
        return None

    def _from_templates(self, url: str) -> Optional[str]:
        for repo, pattern in self._static:
            match = pattern.fullmatch(url)
            if match and relative_path_problem(match["path"]) is None:
                return store_key(repo, match["releasever"] if "releasever" in
                                 pattern.groupindex else "-", match["arch"] if "arch" in
                                 pattern.groupindex else "-", canonical_path(match["path"]))
        return None

    def key(self, url: str) -> Optional[str]:
        """The shared key of a mirror URL of a repo path, or None for any other URL."""
        if not url.startswith(("http://", "https://")) or "?" in url or "#" in url:
            return None  # a query (S3's ?acl, ?list ...) asks the mirror for another body
        found = self._from_templates(url)
        if found is None:
            self._refresh()
            found = self._from_bases(url)
        return found


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

    def answer(self, request: HelperRequest) -> Union[Reply, SlowAnswer]:
        key = self.mapper.key(request.url)
        # A key never changes for a URL; "no key" may, once a new mirror list is published.
        return ok(store_id=key).reusable_for(KEY_REUSE_SECONDS) if key else err()

    def reuse_token(self) -> object:
        return None  # keys are only ever added to the index, never changed

    def close(self, finish: bool = True) -> None:
        self.mapper.memo.close()
