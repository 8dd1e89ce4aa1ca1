"""One lab client that takes all the connections it can get from the proxy (issue 23): the
connection flood and the slow client Squid must survive without starving the others.

* flood(): up to `connections` connections at once from one source address, each asking for a
  new URL (a new repo path: each costs the rewrite helpers a resolution) and replaced by a new
  one as soon as it ends, for `seconds` or until stopped. Run it in a process of its own
  (python -m lab.connflood ...: SIGTERM ends it, and it prints what happened), so that its
  work does not slow a test's own measurements (the GIL); that process runs at the lowest
  priority, since a real attacker's CPU is on another machine, not the proxy host's.
* HalfSentRequests: connections that send the start of a request and then nothing, held open
  until Squid closes them.

Bounded: a deadline, a cap on connections, every socket closed at the end.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import selectors
import signal
import socket
import threading
import time
from collections import Counter
from typing import Dict, List, Optional


def _connect(selector: selectors.BaseSelector, address: tuple, source: str,
             request: bytes) -> bool:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.bind((source, 0))
        code = sock.connect_ex(address)
    except OSError:
        sock.close()
        return False
    if code not in (0, errno.EINPROGRESS):
        sock.close()
        return False
    selector.register(sock, selectors.EVENT_WRITE, {"out": request, "in": b""})
    return True


def flood(host: str, port: int, source: str, connections: int, seconds: float,
          target: str, host_header: str, limit: int = 200000,
          stop: Optional[threading.Event] = None) -> Dict[str, int]:
    """Counts of what happened: 'status NNN' per answer, 'dropped' (closed without an answer),
    'connect failed', 'opened' (connections in all, at most `limit`)."""
    selector = selectors.DefaultSelector()
    counts: Counter = Counter()
    serial = 0
    deadline = time.monotonic() + seconds
    stop = stop or threading.Event()

    def open_one() -> None:
        nonlocal serial
        serial += 1
        request = (f"GET {target.format(i=serial)} HTTP/1.0\r\nHost: {host_header}\r\n"
                   "Accept: */*\r\n\r\n").encode()
        counts["opened"] += 1
        if not _connect(selector, (host, port), source, request):
            counts["connect failed"] += 1

    try:
        while time.monotonic() < deadline and not stop.is_set():
            while (len(selector.get_map()) < connections and counts["opened"] < limit
                   and time.monotonic() < deadline and not stop.is_set()):
                open_one()
            for key, mask in selector.select(timeout=0.05):
                state, sock = key.data, key.fileobj
                try:
                    if mask & selectors.EVENT_WRITE:
                        sent = sock.send(state["out"])
                        state["out"] = state["out"][sent:]
                        if not state["out"]:
                            selector.modify(sock, selectors.EVENT_READ, state)
                        continue
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if data:
                    state["in"] += data[:64] if len(state["in"]) < 64 else b""
                    continue
                selector.unregister(sock)
                sock.close()
                head = state["in"]
                counts[f"status {head[9:12].decode()}" if head.startswith(b"HTTP/")
                       else "dropped"] += 1
    finally:
        for key in list(selector.get_map().values()):
            key.fileobj.close()
        selector.close()
    return dict(counts)


class HalfSentRequests:
    """`count` connections from `source`, each having sent the first line of a request and
    part of a header, never the end. closed(): how many Squid has closed so far."""

    def __init__(self, host: str, port: int, source: str, count: int):
        self.sockets: List[socket.socket] = []
        self.refused = 0
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((source, 0))
            sock.settimeout(5)
            try:
                sock.connect((host, port))
                sock.sendall(b"GET http://repoproxy/x/9/x86_64/repodata/repomd.xml HTTP/1.1\r\n"
                             b"Host: repo")
            except OSError:
                self.refused += 1
                sock.close()
                continue
            sock.setblocking(False)
            self.sockets.append(sock)

    def closed(self) -> int:
        """Connections the proxy has closed (an end of file, or a reset)."""
        gone = 0
        for sock in self.sockets:
            try:
                if sock.recv(4096) == b"":
                    gone += 1
            except BlockingIOError:
                continue
            except OSError:
                gone += 1
        return gone

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []

    def __enter__(self) -> HalfSentRequests:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="flood a proxy with connections from one "
                                                 "address; prints what happened as JSON")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--source", default="127.0.0.2")
    parser.add_argument("--connections", type=int, default=2500)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--target", required=True, help="request target, {i}: a serial")
    parser.add_argument("--host-header", default="repoproxy")
    args = parser.parse_args()
    os.nice(19)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(json.dumps(flood(args.host, args.port, args.source, args.connections, args.seconds,
                           args.target, args.host_header, stop=stop)), flush=True)


if __name__ == "__main__":
    main()
