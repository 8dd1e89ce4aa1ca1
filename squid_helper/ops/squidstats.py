"""Squid's own counters (hits, bytes sent from cache), from its cache manager.

Why the cache manager and not access.log: the counters are Squid's own, kept whatever the log
format, wherever the log is, however it is rotated, and one request reads them; the log would
have to be found, be readable, be in the native format and be read whole. Their limits: they
count every client request (the generic proxy too), and start from zero when Squid restarts.

The request is `GET cache_object://HOST/counters`, as `squidclient mgr:counters` sends it (no
squidclient needed). Not `/squid-internal-mgr/counters`: Squid 5.7 caches that page and
answered a second request with the first one's figures. squid.conf allows the cache manager
from localhost only, so this works on the proxy host.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Dict, Optional, Tuple


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


def http_response(raw: bytes) -> Tuple[int, bytes]:
    """(status, body) of a whole HTTP/1.x response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {status_line[:80]!r}")
    return int(parts[1]), body


def fetch_counters(proxy: str, timeout: float = 5.0) -> SquidCounters:
    """Ask the Squid at proxy (HOST:PORT) for its counters."""
    try:
        host, port = split_proxy(proxy)
    except ValueError as exc:
        raise SquidUnreachable(str(exc)) from None
    request = (f"GET cache_object://{host}/counters HTTP/1.0\r\nHost: {host}\r\n"
               "User-Agent: squid-helper-status\r\nAccept: */*\r\nConnection: close\r\n\r\n")
    chunks = []
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(request.encode("latin-1"))
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
                if sum(map(len, chunks)) > 1 << 20:
                    raise SquidUnreachable(f"Squid at {proxy} sent more than 1 MB for its "
                                           "counters")
    except socket.timeout:
        raise SquidUnreachable(f"Squid at {proxy} did not answer within {timeout:g}s") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SquidUnreachable(f"Squid is not reachable at {proxy} ({reason.lower()}); is it "
                               "running? (name its port with --proxy)") from None
    try:
        status, body = http_response(b"".join(chunks))
    except ValueError as exc:
        raise SquidUnreachable(f"{proxy} did not answer like Squid: {exc}") from None
    if status == 403:
        raise SquidUnreachable(f"Squid at {proxy} refused the cache manager (403): it answers "
                               "localhost only; run status on the proxy host")
    if status != 200:
        raise SquidUnreachable(f"Squid at {proxy} answered {status} for its counters")
    return parse_counters(body.decode("utf-8", "replace"))
