"""LoopbackDns: a tiny DNS server on a 127.0.0.0/8 address that answers NXDOMAIN to every
query, so that a Squid pointed at it (`dns_nameservers`) never asks the machine's
(non-loopback) resolver about `repoproxy` or anything else. It keeps the names it was asked
about, so that a test can tell which lookups Squid made."""

from __future__ import annotations

import random
import socket
import threading
from typing import List, Optional


def loopback_address() -> str:
    """A random 127.x.y.z address (not 127.0.0.1), so parallel runs do not collide on :53."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(2, 254)}"


class LoopbackDns:
    """Answers every DNS query with NXDOMAIN (RCODE 3), on UDP port 53 of `address`."""

    def __init__(self, address: Optional[str] = None):
        self.queries = 0
        self.names: List[str] = []  # the name each query asked about, e.g. 9.0.0.127.in-addr.arpa
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

    @staticmethod
    def question_name(query: bytes) -> str:
        """The name of a query's first question (labels after the 12-byte header)."""
        labels, at = [], 12
        while at < len(query) and query[at]:
            length = query[at]
            labels.append(query[at + 1:at + 1 + length].decode("ascii", "replace"))
            at += 1 + length
        return ".".join(labels)

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
                self.names.append(self.question_name(query))
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
