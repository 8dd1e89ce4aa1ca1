"""Squid's own counters (hits, bytes sent from cache), from its cache manager.

Why the cache manager and not access.log: the counters are Squid's own, kept whatever the log
format, wherever the log is, however it is rotated, and one request reads them; the log would
have to be found, be readable, be in the native format and be read whole. Their limits: they
count every client request (the generic proxy too), and start from zero when Squid restarts.

The request is `GET cache_object://HOST/counters`, as `squidclient mgr:counters` sends it (no
squidclient needed). Not `/squid-internal-mgr/counters`: Squid 5.7 caches that page and
answered a second request with the first one's figures. requests will not send a request
target that is no http:// URL, so it goes through httpclient.get_target (urllib3, the same
timeouts, User-Agent and wording of failures as every other request). squid.conf allows the
cache manager from localhost only, so this works on the proxy host.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from ..httpclient import FAILURES, TooLarge, describe_failure, get_target

# More than a counters page can be (it is about 4 kB): whatever sent it is no Squid.
MAX_PAGE_BYTES = 1 << 20


class SquidUnreachable(Exception):
    """Squid's counters could not be had, worded for the operator."""


@dataclass(frozen=True)
class SquidCounters:
    """Squid's counters since it started (client side: what clients were sent)."""

    requests: int
    hits: int
    errors: int
    bytes_sent: int  # to clients, headers included (Squid counts kbytes)
    hit_bytes_sent: int  # of which served from Squid's cache
    sample_time: float

    @property
    def hit_ratio(self) -> Optional[float]:
        """Hits per request since Squid started; None before the first request."""
        return self.hits / self.requests if self.requests else None

    @property
    def byte_hit_ratio(self) -> Optional[float]:
        return self.hit_bytes_sent / self.bytes_sent if self.bytes_sent else None


def parse_counters(text: str) -> SquidCounters:
    """The body of the cache manager's `counters` page (`name = value` lines)."""
    values: Dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            values[name.strip()] = value.strip()
    try:
        def number(name: str) -> int:
            return int(float(values[name].split()[0]))

        return SquidCounters(
            requests=number("client_http.requests"), hits=number("client_http.hits"),
            errors=number("client_http.errors"),
            bytes_sent=number("client_http.kbytes_out") * 1024,
            hit_bytes_sent=number("client_http.hit_kbytes_out") * 1024,
            sample_time=float(values.get("sample_time", "0").split()[0]))
    except (KeyError, ValueError, IndexError) as exc:
        raise SquidUnreachable(f"the cache manager's counters page lacks {exc}; "
                               "is this Squid?") from None


def split_proxy(proxy: str, default_port: int = 3128) -> Tuple[str, int]:
    """HOST:PORT (or [v6]:PORT, or HOST) -> (host, port); ValueError with a message."""
    host, sep, port = proxy.rpartition(":")
    if not sep or "]" in port:
        host, port = proxy, str(default_port)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{proxy!r} is not HOST:PORT")
    return host, int(port)


def fetch_counters(proxy: str, timeout: float = 5.0) -> SquidCounters:
    """Ask the Squid at proxy (HOST:PORT) for its counters, within timeout in all."""
    try:
        host, port = split_proxy(proxy)
    except ValueError as exc:
        raise SquidUnreachable(str(exc)) from None
    target = f"cache_object://{host}/counters"
    started = time.monotonic()
    try:
        status, body = get_target(host, port, target, timeout, MAX_PAGE_BYTES)
    except TooLarge as exc:
        raise SquidUnreachable(f"Squid at {proxy} sent {exc} for its counters") from None
    except FAILURES as exc:
        problem = describe_failure(exc, f"http://{proxy}/", time.monotonic() - started)
        raise SquidUnreachable(f"Squid at {proxy}: {problem}; is it running? (name its port "
                               "with --proxy)") from None
    if status == 403:
        raise SquidUnreachable(f"Squid at {proxy} refused the cache manager (403): it answers "
                               "localhost only; run status on the proxy host")
    if status != 200:
        raise SquidUnreachable(f"Squid at {proxy} answered {status} for its counters")
    return parse_counters(body.decode("utf-8", "replace"))
