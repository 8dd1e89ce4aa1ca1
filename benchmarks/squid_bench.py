"""What the Squid benchmarks (bench_squid_e2e.py, bench_soak.py) share.

* BenchSquid: tests/squid_harness.SquidInstance with two additions the harness does not offer
  yet: `helpers=False` (the same squid.conf without the url_rewrite/store_id lines, the
  no-helper baseline) and `extra_lines` appended to squid.conf (e.g. `dns_nameservers`).
* LoopbackDns: a tiny DNS server on a 127.0.0.0/8 address that answers NXDOMAIN to every
  query, so that Squid never asks the machine's (non-loopback) resolver about `repoproxy`
  when the helper refuses a repo URL.
* KeepAliveClient: a pure-Python HTTP/1.1 client driving many persistent connections through
  the proxy from one thread (selectors), as fast as Squid answers or at a given rate.
* proc_sample: RSS and open file descriptors of a process from /proc.

Everything binds 127.0.0.0/8 only, every wait is bounded, every server has a stop().
"""

from __future__ import annotations

import os
import random
import re
import selectors
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import common  # noqa: F401  (puts tests/ on sys.path)

# isort: split
from squid_helper.squidconf import render

from squid_harness import SquidInstance, descendants

HELPER_DIRECTIVES = ("url_rewrite_", "store_id_")

# The floor for any Python helper inside Squid: answers each line at once, no parsing beyond
# the URL prefix, no memo. `echo.py rewrite PREFIX BASE` maps PREFIX... to BASE...;
# `echo.py storeid PREFIX KEY` gives every PREFIX... URL the store-id KEY... . Else ERR.
ECHO_HELPER = """import sys
mode, prefix, base = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode()
kv = b' OK rewrite-url=' if mode == 'rewrite' else b' OK store-id='
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    channel, _, rest = line.partition(b' ')
    url = rest.split(b' ', 1)[0].rstrip(b'\\r\\n')
    if url.startswith(prefix):
        out.write(channel + kv + base + url[len(prefix):] + b'\\n')
    else:
        out.write(channel + b' ERR\\n')
    out.flush()
"""


def write_echo_helper(directory: Path) -> Path:
    """ECHO_HELPER as a file the proxy user can run with /usr/bin/python3."""
    path = directory / "echo_helper.py"
    path.write_text(ECHO_HELPER)
    path.chmod(0o644)
    return path


class BenchSquid(SquidInstance):
    """SquidInstance whose squid.conf can drop the helpers or gain extra lines.

    It overrides conf_text(), which SquidInstance.start() writes."""

    def __init__(self, directory: Path, helper_config: Path, helpers: bool = True,
                 extra_lines: Sequence[str] = (), programs: Optional[Dict[str, str]] = None,
                 **overrides):
        """helpers=False: no helper lines at all. programs: replacement command lines for
        url_rewrite_program / store_id_program (e.g. an echo helper); helper_pids() then finds
        processes by the first program's last word."""
        super().__init__(directory, helper_config, **overrides)
        self.helpers = helpers
        self.extra_lines = list(extra_lines)
        self.programs = dict(programs or {})
        self.marker = (next(iter(self.programs.values())).split()[1] if self.programs
                       else self.params.helper_command).encode()

    def conf_text(self) -> str:
        lines = render(self.params).splitlines()
        if not self.helpers:
            lines = [ln for ln in lines if not ln.startswith(HELPER_DIRECTIVES)]
        for directive, command in self.programs.items():
            lines = [f"{directive} {command}" if ln.startswith(directive + " ") else ln
                     for ln in lines]
        return "\n".join(lines + ["", "# added by benchmarks/squid_bench.py"]
                         + self.extra_lines) + "\n"

    def _helpers_started(self) -> bool:
        return bool(self.helper_pids()) if self.helpers else True

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def helper_roles(self) -> Dict[int, str]:
        """pid -> 'rewrite' / 'storeid' for every helper process Squid runs now."""
        roles = {}
        for pid in self.helper_pids():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                    argv = cmdline.read().split(b"\0")
            except OSError:
                continue
            role = "rewrite" if b"rewrite" in argv else "storeid" if b"storeid" in argv else "?"
            roles[pid] = role
        return roles

    def other_children(self) -> List[int]:
        helpers = set(self.helper_pids())
        return [p for p in descendants(self.pid) if p not in helpers]


# -- /proc ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProcSample:
    rss_kb: int
    anon_kb: int
    fds: int


def proc_sample(pid: int) -> Optional[ProcSample]:
    """VmRSS, RssAnon and the number of open file descriptors; None if the process is gone."""
    try:
        found = {}
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "RssAnon"):
                    found[key] = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        return None
    return ProcSample(found.get("VmRSS", 0), found.get("RssAnon", 0), fds)


def cpu_seconds(pid: int) -> float:
    try:
        return common.cpu_seconds(pid)
    except OSError:
        return 0.0


# -- DNS -----------------------------------------------------------------------------------------
def loopback_address() -> str:
    """A random 127.x.y.z address (not 127.0.0.1), so parallel runs do not collide on :53."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(2, 254)}"


class LoopbackDns:
    """Answers every DNS query with NXDOMAIN (RCODE 3), on UDP port 53 of `address`."""

    def __init__(self, address: Optional[str] = None):
        self.queries = 0
        self._stop = threading.Event()
        for _ in range(20):
            self.address = address or loopback_address()
            try:
                self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self._udp.bind((self.address, 53))
                break
            except OSError:
                self._udp.close()
                if address:
                    raise
        else:
            raise RuntimeError("no free 127.0.0.0/8 address for the NXDOMAIN DNS server")
        self._udp.settimeout(0.2)
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @staticmethod
    def nxdomain(query: bytes) -> bytes:
        if len(query) < 12:
            return b""
        flags = 0x8000 | (query[2] & 0x79) << 8 | 0x0080 | 3  # QR, opcode+RD copied, RA, NX
        # header: same id and question count, no answers; then the question copied back
        return query[:2] + flags.to_bytes(2, "big") + query[4:6] + b"\0\0\0\0\0\0" + query[12:]

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self._udp.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            answer = self.nxdomain(query)
            if answer:
                self.queries += 1
                try:
                    self._udp.sendto(answer, peer)
                except OSError:
                    pass

    def start(self) -> LoopbackDns:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._udp.close()

    def __enter__(self) -> LoopbackDns:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# -- the HTTP client -----------------------------------------------------------------------------
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[ \t]*chunked", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close", re.IGNORECASE)

# A request to send: (bytes of the whole request, a label the caller uses to judge the answer)
Request = Tuple[bytes, str]


def get_request(url: str, method: str = "GET") -> bytes:
    host = url.split("/")[2] if "://" in url else "localhost"
    return f"{method} {url} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n".encode("latin-1")


@dataclass
class DriveStats:
    answered: int = 0
    seconds: float = 0.0
    statuses: Counter = field(default_factory=Counter)  # (label, status) -> count
    failures: Counter = field(default_factory=Counter)  # (label, problem) -> count
    reconnects: int = 0
    bytes: int = 0

    @property
    def rate(self) -> float:
        return self.answered / self.seconds if self.seconds > 0 else 0.0


class _Conn:
    __slots__ = ("sock", "out", "buf", "label", "busy", "sent_at")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.out = b""
        self.buf = b""
        self.label = ""
        self.busy = False
        self.sent_at = 0.0


class ClientProblem(RuntimeError):
    pass


class KeepAliveClient:
    """`connections` persistent HTTP/1.1 connections to the proxy at host:port, one request
    outstanding on each (Squid does not pipeline by default). Bounded by a deadline."""

    def __init__(self, host: str, port: int, connections: int = 32,
                 request_timeout: float = 60.0):
        self.address = (host, port)
        self.count = connections
        self.request_timeout = request_timeout
        self.selector = selectors.DefaultSelector()
        self.conns: List[_Conn] = []

    def _connect(self) -> _Conn:
        sock = socket.create_connection(self.address, timeout=10)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(sock)
        self.selector.register(sock, selectors.EVENT_READ, conn)
        return conn

    def open(self) -> KeepAliveClient:
        self.conns = [self._connect() for _ in range(self.count)]
        return self

    def close(self) -> None:
        for conn in self.conns:
            self._drop(conn)
        self.conns = []
        self.selector.close()

    def __enter__(self) -> KeepAliveClient:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _drop(self, conn: _Conn) -> None:
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _replace(self, conn: _Conn) -> _Conn:
        self._drop(conn)
        fresh = self._connect()
        self.conns[self.conns.index(conn)] = fresh
        return fresh

    def _send(self, conn: _Conn, request: Request) -> None:
        conn.out, conn.label = request
        conn.busy = True
        conn.sent_at = time.monotonic()
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            sent = 0
        conn.out = conn.out[sent:]
        self.selector.modify(conn.sock, selectors.EVENT_READ
                             | (selectors.EVENT_WRITE if conn.out else 0), conn)

    @staticmethod
    def _parse(buf: bytes) -> Optional[Tuple[int, int, bool]]:
        """(status, length of the whole response, connection closes) once buf holds it."""
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = buf[:end + 2]
        status = int(buf[9:12])
        closes = bool(_CLOSE.search(head))
        match = _CONTENT_LENGTH.search(head)
        if match:
            total = end + 4 + int(match.group(1))
            return (status, total, closes) if len(buf) >= total else None
        if _CHUNKED.search(head):
            tail = buf.find(b"\r\n0\r\n\r\n", end)
            if tail < 0 and buf[end + 4:end + 9] != b"0\r\n\r\n":
                return None
            total = tail + 7 if tail >= 0 else end + 9
            return status, total, closes
        if status in (204, 304) or 100 <= status < 200:
            return status, end + 4, closes
        return None  # body until EOF: handled when the connection closes

    def run(self, next_request: Callable[[], Optional[Request]], seconds: float,
            rate: float = 0.0, on_answer: Optional[Callable[[str, int, bytes], None]] = None
            ) -> DriveStats:
        """Send requests from next_request() (None: nothing more) for `seconds`, then wait
        for the outstanding ones. rate > 0 paces the sending at that many requests/s."""
        stats = DriveStats()
        started = time.monotonic()
        stop_at = started + seconds
        hard_deadline = stop_at + self.request_timeout
        sent = 0
        exhausted = False

        def may_send(now: float) -> bool:
            return (not exhausted and now < stop_at
                    and (rate <= 0 or sent < rate * (now - started) + 1))

        def feed(conn: _Conn, now: float) -> None:
            nonlocal sent, exhausted
            if may_send(now):
                request = next_request()
                if request is None:
                    exhausted = True
                    return
                self._send(conn, request)
                sent += 1

        now = time.monotonic()
        for conn in list(self.conns):
            feed(conn, now)
        while True:
            now = time.monotonic()
            busy = [c for c in self.conns if c.busy]
            if not busy and (exhausted or now >= stop_at):
                break
            if now > hard_deadline:
                for conn in busy:
                    stats.failures[(conn.label, "no answer in time")] += 1
                    self._replace(conn).busy = False
                break
            wait = 0.05 if rate <= 0 else min(0.05, max(0.0, (sent + 1) / rate
                                                          - (now - started)))
            events = self.selector.select(timeout=wait)
            for key, mask in events:
                conn = key.data
                if mask & selectors.EVENT_WRITE and conn.out:
                    self._flush(conn)
                if not mask & selectors.EVENT_READ:
                    continue
                try:
                    data = conn.sock.recv(1 << 18)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    if conn.busy:
                        stats.failures[(conn.label, "connection closed before the answer")] += 1
                    stats.reconnects += 1
                    self._replace(conn)
                    continue
                conn.buf += data
                parsed = self._parse(conn.buf) if conn.busy else None
                if parsed is None:
                    if not conn.busy:
                        stats.failures[("?", "bytes without a request")] += 1
                        conn.buf = b""
                    continue
                status, total, closes = parsed
                body = conn.buf[:total]
                conn.buf = conn.buf[total:]
                conn.busy = False
                stats.answered += 1
                stats.bytes += total
                stats.statuses[(conn.label, status)] += 1
                if on_answer is not None:
                    on_answer(conn.label, status, body)
                if closes or conn.buf:
                    if conn.buf:
                        stats.failures[(conn.label, "extra bytes after the answer")] += 1
                    stats.reconnects += 1
                    conn = self._replace(conn)
                feed(conn, time.monotonic())
            # paced sending: idle connections pick up work as the clock allows
            now = time.monotonic()
            if rate > 0 and may_send(now):
                for conn in self.conns:
                    if not conn.busy:
                        feed(conn, now)
                        if not may_send(now):
                            break
            for conn in self.conns:
                if conn.busy and now - conn.sent_at > self.request_timeout:
                    stats.failures[(conn.label, "no answer in time")] += 1
                    self._replace(conn)
        stats.seconds = time.monotonic() - started
        return stats
