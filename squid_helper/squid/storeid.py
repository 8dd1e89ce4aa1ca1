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
import time
from typing import Dict, List, Optional, Tuple, Union

from ..config.settings import Config
from ..facts.lifetimes import BASE_INDEX_KEY
from ..facts.memo import Memo
from ..resolve.urls import RepoPath, canonical_path, relative_path_problem, template_pattern
from .helperloop import SlowAnswer
from .protocol import HelperRequest, Reply, err, ok

log = logging.getLogger("squid_helper.storeid")

STORE_ID_HOST = "squid-helper.invalid"  # squid.conf refuses it to clients (squidconf)
# A URL's store key never changes while the config stays; a new config clears the loop's cache.
KEY_REUSE_SECONDS = 3600.0
# How often the list of known mirror bases is re-read from the memo at most, when a URL matches
# no known base. Zero: the rewrite helper publishes a new list's bases before it answers with a
# URL under one of them, so re-reading at once is what keeps the first objects fetched from a
# new mirror list from being stored under their raw URLs (a key that no later request uses).
_INDEX_REFRESH = 0.0


def store_key(repo: str, releasever: str, arch: str, path: str) -> str:
    return f"http://{STORE_ID_HOST}/{repo}/{releasever}/{arch}/{path}"


def key_for(request: RepoPath) -> str:
    return store_key(request.repo, request.releasever, request.arch, request.path)


class StoreIdMapper:
    """Maps URLs to store keys. Static mirrors come from the config; mirrors named by
    mirrorlists and metalinks come from the base index the rewrite helpers keep in the memo."""

    def __init__(self, config: Config, memo: Memo):
        self.config = config
        self.memo = memo
        self._static = [(name, template_pattern(t)) for name, repo in config.repos.items()
                        if repo.kind == "mirrors" for t in repo.templates]
        self._bases: List[Tuple[str, str]] = []  # (base, triple), longest base first
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()

    def _refresh(self, force: bool) -> None:
        now = time.monotonic()
        if now - self._loaded_at < (_INDEX_REFRESH if force else 30.0):
            return
        with self._lock:
            self._loaded_at = now
            index: Dict[str, str] = self.memo.get(BASE_INDEX_KEY) or {}
            self._bases = sorted(index.items(), key=lambda item: -len(item[0]))

    def _from_bases(self, url: str) -> Optional[Tuple[RepoPath, str]]:
        for base, triple in self._bases:
            if url.startswith(base):
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
            self._refresh(force=False)
            found = self._from_bases(url)
        if found is None:
            self._refresh(force=True)  # a mirror list fetched since we last looked
            found = self._from_bases(url)
        return found

    def key(self, url: str) -> Optional[str]:
        """The shared key of a mirror URL of a repo path, or None for any other URL."""
        found = self.locate(url)
        return key_for(found[0]) if found is not None else None


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
