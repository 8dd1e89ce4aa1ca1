"""The store_id_program: one Squid cache key per repo path, whichever mirror served it.

Squid stores an object under the URL the rewrite helper answered with. After a failover to
another mirror that URL changes, and the cached copy would be lost. This helper maps both the
client's virtual URL and every mirror URL of a repo path to the same key:
    http://squid-helper.internal/<repo>/<releasever>/<arch>/<path>
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Dict, List, Optional, Tuple, Union

from .config import Config
from .helperloop import SlowAnswer
from .lifetimes import BASE_INDEX_KEY
from .memo import Memo
from .protocol import HelperRequest, Reply, err, ok
from .urls import RepoPath, map_url, relative_path_problem, template_pattern

log = logging.getLogger("squid_helper.storeid")

STORE_ID_HOST = "squid-helper.internal"
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

    def _from_bases(self, url: str) -> Optional[str]:
        for base, triple in self._bases:
            if url.startswith(base):
                path = url[len(base):].split("?", 1)[0].split("#", 1)[0]
                if relative_path_problem(path) is None:
                    return f"http://{STORE_ID_HOST}/{triple}/{path}"
        return None

    def _mirror_key(self, url: str, force: bool) -> Optional[str]:
        for repo, pattern in self._static:
            match = pattern.match(url)
            if match and relative_path_problem(match["path"]) is None:
                return store_key(repo, match["releasever"] if "releasever" in
                                 pattern.groupindex else "-", match["arch"] if "arch" in
                                 pattern.groupindex else "-", match["path"])
        if force and not url.startswith(("http://", "https://")):
            return None
        self._refresh(force=force)  # force: a mirror list fetched since we last looked
        return self._from_bases(url)

    def key(self, url: str, extras: Dict[str, str]) -> Optional[str]:
        # Mirror URLs first: on an accel port Squid passes the rewritten mirror URL with the
        # client's myport=, and map_url would take any URL on that port for a virtual one.
        found = self._mirror_key(url, force=False)
        if found is None:
            mapped = map_url(url, extras, self.config)
            if isinstance(mapped, RepoPath):
                return key_for(mapped)
            found = self._mirror_key(url, force=True)
        return found


class StoreIdHandler:
    def __init__(self, mapper: StoreIdMapper):
        self.mapper = mapper

    def answer(self, request: HelperRequest) -> Union[Reply, SlowAnswer]:
        key = self.mapper.key(request.url, request.extras)
        # A key never changes for a URL; "no key" may, once a new mirror list is published.
        return ok(store_id=key).reusable_for(KEY_REUSE_SECONDS) if key else err()

    def reuse_token(self) -> object:
        return None  # keys are only ever added to the index, never changed

    def close(self, finish: bool = True) -> None:
        self.mapper.memo.close()
