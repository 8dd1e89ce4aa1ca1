"""Purge repo paths from Squid's cache and from the helper's memo together."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List

from ..config.settings import Config
from ..facts.lifetimes import Lifetimes
from ..facts.memo import Memo
from ..httpclient import FAILURES, describe_failure, new_session
from ..resolve.urls import NotOurs, Refused, map_url


@dataclass(frozen=True)
class PurgeResult:
    url: str
    ok: bool
    message: str


def purge_from_squid(url: str, proxy: str, timeout: float) -> PurgeResult:
    """Send `PURGE url` through the proxy, as `squidclient -m PURGE url` does. Squid passes the
    request through the rewrite and store_id helpers, so the cached copy is found whichever
    mirror it came from."""
    started = time.monotonic()
    with new_session(timeout, proxy=f"http://{proxy}", pool_size=1) as session:
        try:
            response = session.request("PURGE", url, allow_redirects=False)
            response.close()
        except FAILURES as exc:
            return PurgeResult(url, False, describe_failure(
                exc, url, time.monotonic() - started, proxy, proxy_role="proxy"))
    if response.status_code == 200:
        return PurgeResult(url, True, "purged from Squid")
    if response.status_code == 404:
        return PurgeResult(url, True, "not in Squid's cache")
    if response.status_code == 403:
        return PurgeResult(url, False, f"Squid at {proxy} refused PURGE (403): allow it for "
                           "this host with 'http_access allow PURGE <acl>' in squid.conf")
    return PurgeResult(url, False, f"Squid at {proxy} answered {response.status_code}")


def purge(config: Config, proxy: str, urls: List[str], timeout: float = 30.0) -> List[PurgeResult]:
    results = []
    # The helpers' memo as they use it (the fleet's Redis, else the directory): what a purge
    # forgets there, every helper of every proxy forgets.
    memo, lifetimes = Memo.of(config), Lifetimes(config)
    try:
        for url in urls:
            mapped = map_url(url, {}, config)
            if isinstance(mapped, NotOurs):
                results.append(PurgeResult(url, False, "not a repo URL: its host is not in "
                                           f"virtual_hosts ({', '.join(config.virtual_hosts)})"))
                continue
            if isinstance(mapped, Refused):
                results.append(PurgeResult(url, False, f"refused: {mapped.reason}"))
                continue
            # Squid first: its PURGE is rewritten through the memo's answer for this path.
            squid = purge_from_squid(url, proxy, timeout)
            forgotten = memo.forget(*lifetimes.purged(mapped))
            results.append(PurgeResult(url, squid.ok, f"{squid.message}; memo: "
                                       f"{forgotten} entr{'y' if forgotten == 1 else 'ies'} "
                                       "dropped"))
    finally:
        memo.close()
    return results
