"""Squid's own counters (hits, bytes sent from cache), from its cache manager.

Why the cache manager and not access.log: the counters are Squid's own, kept whatever the log
format, wherever the log is, however it is rotated, and one request reads them; the log would
have to be found, be readable, be in the native format and be read whole. Their limits: they
count every client request (the generic proxy too), and start from zero when Squid restarts.

They count the cache manager's own requests too: every earlier read of this page by status or a
metrics scrape is one more request, never a hit, and would lower the hit ratio with no client
traffic at all (50% became 37.5% after a few status runs). So the reads are tallied per Squid
in READS_DIR, and subtracted (ReadTally): Squid counts a request when it has answered it, so a
page shows every earlier read and not the one that fetched it; the tally starts again when
Squid does (its CPU time or its request count went down).

The request is `GET cache_object://HOST/counters`, as `squidclient mgr:counters` sends it (no
squidclient needed). Not `/squid-internal-mgr/counters`: Squid 5.7 caches that page and
answered a second request with the first one's figures. requests will not send a request
target that is no http:// URL, so it goes through httpclient.get_target (urllib3, the same
timeouts, User-Agent and wording of failures as every other request). squid.conf allows the
cache manager from localhost only, so this works on the proxy host.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from typing import Dict, Optional, Tuple

from ..httpclient import FAILURES, TooLarge, describe_failure, get_target

# More than a counters page can be (it is about 4 kB): whatever sent it is no Squid.
MAX_PAGE_BYTES = 1 << 20
# The headers of a counters page as Squid counts them (5.7: a 1625-byte reply, 1220 of body).
PAGE_HEADER_BYTES = 400
# Where the reads of each Squid's counters are tallied: shared by every user who runs status
# or metrics on this host (sticky and world-writable, as /var/tmp itself).
READS_DIR = "/var/tmp/squid-helper-cachemgr"


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
    cpu_time: float = 0.0  # Squid's CPU seconds: less than before means another Squid process

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
            sample_time=float(values.get("sample_time", "0").split()[0]),
            cpu_time=float(values.get("cpu_time", "0").split()[0]))
    except (KeyError, ValueError, IndexError) as exc:
        raise SquidUnreachable(f"the cache manager's counters page lacks {exc}; "
                               "is this Squid?") from None


@dataclass(frozen=True)
class ReadTally:
    """The cache manager reads of one Squid's counters so far, and the figures the last one
    saw (to tell a restarted Squid)."""

    reads: int = 0
    page_bytes: int = 0
    requests_seen: int = 0
    cpu_time_seen: float = 0.0


def without_reads(counters: SquidCounters, tally: ReadTally,
                  page_bytes: int) -> Tuple[SquidCounters, ReadTally]:
    """counters less the earlier reads of them (tally), and the tally with this read added."""
    if counters.requests < tally.requests_seen or counters.cpu_time < tally.cpu_time_seen:
        tally = ReadTally()  # Squid restarted: its counters, and our reads, start from zero
    # Never below what Squid itself says is not ours: a hit is no cache manager read.
    reads = min(tally.reads, counters.requests - counters.hits)
    sent = min(tally.page_bytes, counters.bytes_sent - counters.hit_bytes_sent)
    adjusted = replace(counters, requests=counters.requests - reads,
                       bytes_sent=counters.bytes_sent - max(0, sent))
    return adjusted, ReadTally(tally.reads + 1, tally.page_bytes + page_bytes,
                               counters.requests, counters.cpu_time)


def _tally_path(proxy: str) -> str:
    return os.path.join(READS_DIR, "".join(c if c.isalnum() else "_" for c in proxy) + ".json")


def _tallied(counters: SquidCounters, proxy: str, page_bytes: int) -> SquidCounters:
    """without_reads() with the tally kept in READS_DIR (locked: status and a scrape may read
    at once). Without a usable tally file the counters are given as Squid sent them, and so
    are those of a page without Squid's CPU time (no restart could be told)."""
    if counters.cpu_time <= 0:
        return counters
    try:
        os.makedirs(READS_DIR, exist_ok=True)
        if os.stat(READS_DIR).st_uid == os.geteuid():
            os.chmod(READS_DIR, 0o1777)
        fd = os.open(_tally_path(proxy), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o666)
    except OSError:
        return counters
    try:
        if os.fstat(fd).st_uid == os.geteuid():
            os.fchmod(fd, 0o666)  # whoever reads the counters next adds to the same tally
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            tally = ReadTally(**json.loads(os.read(fd, 4096) or b"{}"))
            if not all(isinstance(v, (int, float)) for v in asdict(tally).values()):
                raise TypeError("not a tally")
        except (ValueError, TypeError):
            tally = ReadTally()  # damaged: start again rather than subtract nonsense
        adjusted, tally = without_reads(counters, tally, page_bytes)
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(asdict(tally)).encode("utf-8"))
        return adjusted
    except OSError:
        return counters
    finally:
        os.close(fd)


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
    # Squid counts the headers of the page too; about this many bytes of them.
    return _tallied(parse_counters(body.decode("utf-8", "replace")), proxy,
                    len(body) + PAGE_HEADER_BYTES)
