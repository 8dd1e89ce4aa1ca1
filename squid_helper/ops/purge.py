"""Purge repo paths from Squid's cache and from the helper's memo together."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import List, Optional, Tuple

from ..config.settings import Config
from ..facts.lifetimes import Lifetimes
from ..facts.memo import Memo
from ..httpclient import FAILURES, describe_failure, new_session
from ..resolve.urls import NotOurs, Refused, map_url
from .squiduser import SquidUserError, detect_squid_user

# The memo directory's database (diskcache's file name): no database, nothing to forget.
MEMO_DATABASE = "cache.db"


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


def local_memo_refusal(directory: str, exists: bool, owner: Optional[str], euid: int,
                       squid_user: Optional[str]) -> Optional[str]:
    """Why purge must leave the memo directory alone, or None when it may forget there. A
    purge never creates memo files: run as root it would leave a directory or database the
    helpers (Squid's user) cannot write. owner: the user owning the directory."""
    if not exists:
        return f"no memo at {directory} yet, nothing to forget (not created)"
    if euid == 0 and owner != squid_user:
        return (f"{directory} belongs to {owner}, not to Squid's user "
                f"{squid_user or '(unknown)'}: left alone; is it the helpers' memo?")
    return None


def _local_memo_refusal(directory: str) -> Optional[str]:
    database = os.path.join(directory, MEMO_DATABASE)
    try:
        owner_uid = os.stat(directory).st_uid
    except OSError:
        return local_memo_refusal(directory, False, None, os.geteuid(), None)
    import pwd

    try:
        owner = pwd.getpwuid(owner_uid).pw_name
    except KeyError:
        owner = str(owner_uid)
    try:
        squid_user: Optional[str] = detect_squid_user(None).name
    except SquidUserError:
        squid_user = None
    return local_memo_refusal(directory, os.path.exists(database), owner, os.geteuid(),
                              squid_user)


def memo_for_purge(config: Config) -> Tuple[Optional[Memo], Optional[str]]:
    """The memo to forget purged paths in, as the helpers use it (the fleet's Redis, behind it
    the directory); or None and why not."""
    refusal = _local_memo_refusal(config.cache_dir)
    if refusal is None:
        return Memo.of(config), None
    if config.memo:
        # The fleet's Redis alone: Memo.reader names no local store to fall back to, so
        # nothing is created in the directory, and Redis takes the forgetting.
        return Memo.reader(config), None
    return None, refusal


def purge(config: Config, proxy: str, urls: List[str], timeout: float = 30.0) -> List[PurgeResult]:
    results = []
    # The helpers' memo as they use it (the fleet's Redis, else the directory): what a purge
    # forgets there, every helper of every proxy forgets.
    memo, untouched = memo_for_purge(config)
    lifetimes = Lifetimes(config)
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
            if memo is None:
                results.append(PurgeResult(url, squid.ok, f"{squid.message}; memo: {untouched}"))
                continue
            forgotten = memo.forget(*lifetimes.purged(mapped))
            results.append(PurgeResult(url, squid.ok, f"{squid.message}; memo: "
                                       f"{forgotten} entr{'y' if forgotten == 1 else 'ies'} "
                                       "dropped"))
    finally:
        if memo is not None:
            memo.close()
    return results
