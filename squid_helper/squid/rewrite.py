"""The url_rewrite_program: repo URLs to verified mirror URLs; everything else untouched."""

from __future__ import annotations

import logging
from typing import Union

from ..resolve.resolver import NOT_FOUND, UNAVAILABLE, Resolution, Resolver
from ..resolve.urls import NotOurs, Refused, RepoPath, map_url
from .helperloop import SlowAnswer
from .protocol import HelperRequest, Reply, asks_for_fresh, err, ok

log = logging.getLogger("squid_helper.rewrite")
# Whether a URL is ours depends only on the config, and a new config clears the loop's cache.
CONFIG_ANSWER_SECONDS = 3600.0
NOT_OURS_REPLY = err().reusable_for(CONFIG_ANSWER_SECONDS)


# ERR replies for repo URLs carry a note (repo-error=...) that squid.conf turns into a proper
# HTTP error with adapted_http_access + deny_info. Without it Squid would forward the untouched
# URL to the virtual host (which does not exist) or, on an accel port, to itself.
REPO_ERROR_NOTE = "repo_error"
NOTE_FOR_STATUS = {NOT_FOUND: "not-found", UNAVAILABLE: "unavailable"}
REFUSED_NOTE = "refused"


# Set on every rewrite: squid.conf refuses repo requests without it (not rewritten: a helper
# that died or answered BH), so that Squid never fetches a repo URL as the client gave it.
REWRITTEN_NOTE = {"repo_rewrite": "ok"}


def reply_for(resolution: Resolution) -> Reply:
    if resolution.url:
        return ok(rewrite_url=resolution.url, **REWRITTEN_NOTE)
    return err(resolution.reason,
               **{REPO_ERROR_NOTE: NOTE_FOR_STATUS.get(resolution.status, "unavailable")})


class RewriteHandler:
    def __init__(self, resolver: Resolver):
        self.resolver = resolver

    def answer(self, request: HelperRequest) -> Union[Reply, SlowAnswer]:
        # A client asking for fresh metadata (no-cache) skips the memo, if anything is due.
        fresh_asked = asks_for_fresh(request.extras)
        mapped = map_url(request.url, request.extras, self.resolver.config)
        # Mapping depends on the URL and myport only, and memo answers stay valid for longer
        # than the loop reuses a reply: all three kinds of immediate answer are reusable.
        if isinstance(mapped, NotOurs):
            return NOT_OURS_REPLY
        if isinstance(mapped, Refused):
            log.info("refused %s: %s", request.url[:300], mapped.reason)
            return err(mapped.reason, **{REPO_ERROR_NOTE: REFUSED_NOTE}).reusable_for(
                CONFIG_ANSWER_SECONDS)
        refresh = mapped.is_metadata and fresh_asked
        cached = None if refresh else self.resolver.cached(mapped)
        if cached is not None:
            log.debug("%s -> %s (memo)", request.url, cached.url)
            return reply_for(cached).reusable_for(cached.fresh_for)
        return lambda: self._resolve(request.url, mapped, refresh)

    def _resolve(self, client_url: str, request: RepoPath, refresh: bool = False) -> Reply:
        resolution = self.resolver.resolve(request, refresh=refresh)
        level = logging.INFO if resolution.url else logging.WARNING
        log.log(level, "%s -> %s [%s, %.3fs] %s%s", client_url, resolution.url or "ERR",
                resolution.status, resolution.elapsed, resolution.reason,
                ("; " + "; ".join(resolution.trace)) if resolution.trace else "")
        return reply_for(resolution)

    def reuse_token(self) -> object:
        return self.resolver.memo.generation()

    def close(self, finish: bool = True) -> None:
        self.resolver.close(finish)
