"""HTTP clients for talking to Squid (or a mirror) on loopback.

* http_get: one HTTP/1.0 request on a fresh connection, optionally from a chosen 127.0.0.0/8
  source address.
* KeepAliveClient: a pure-Python HTTP/1.1 client driving many persistent connections through
  the proxy from one thread (selectors), as fast as Squid answers or at a given rate, bounded
  by a deadline.
"""

from __future__ import annotations

import re
import selectors
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple


def http_get(host: str, port: int, target: str, headers: Optional[Dict[str, str]] = None,
             method: str = "GET", timeout: float = 30.0, source: Optional[str] = None) -> tuple:
    """One HTTP/1.0 request on a fresh connection: (status, headers, body). source: the
    client address to connect from (any 127.0.0.0/8 address works on Linux)."""
    lines = [f"{method} {target} HTTP/1.0"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection((host, port), timeout=timeout,
                                  source_address=(source, 0) if source else None) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        key, _, value = line.partition(":")
        parsed[key.strip().lower()] = value.strip()
    return int(status_line.split()[1]), parsed, body


# -- many requests on kept-alive connections ------------------------------------------------------
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
