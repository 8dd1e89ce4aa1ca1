"""A lab client network: a network namespace joined to this host by a veth pair.

The host end of the pair gets an address of its own (as a proxy host's LAN address), the
namespace end one or more client addresses (build slaves on the LAN). Code runs "on a slave"
through run(): a thread that enters the namespace (setns, which moves the calling thread only)
and whose sockets therefore live there. Addresses come from 198.18.0.0/15 (RFC 2544, for
network tests), one /24 per namespace chosen from the test process's pid; names carry the pid
too, so that parallel test runs do not meet. Everything is removed on exit (deleting the
namespace deletes the veth pair), also after a failed setup.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import subprocess
import threading
from typing import Any, Callable, List, Tuple

from squid_helper.ops.hostaddresses import this_host_addresses

CLONE_NEWNET = 0x40000000
_serial = itertools.count()


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


class NetworkNamespace:
    """`clients` client addresses in a new namespace, reaching this host at host_address."""

    def __init__(self, clients: int = 1):
        serial = next(_serial)
        pid = os.getpid()
        self.name = f"shg-{pid}-{serial}"
        self.host_link = f"shgh{pid % 100000}{serial % 10}"
        self.client_link = f"shgc{pid % 100000}{serial % 10}"
        # 198.18.2.0/24 ... 198.18.251.0/24: the first from the pid on that no other run uses.
        taken = set(this_host_addresses())
        subnet = next(n for n in ((pid * 7 + serial + k) % 250 + 2 for k in range(250))
                      if f"198.18.{n}.1" not in taken)
        self.prefix = f"198.18.{subnet}"
        self.host_address = f"{self.prefix}.1"
        self.client_addresses: List[str] = [f"{self.prefix}.{10 + i}" for i in range(clients)]
        self.extra_host_addresses: List[str] = []
        self._created = False

    def __enter__(self) -> NetworkNamespace:
        try:
            _ip("netns", "add", self.name)
            self._created = True
            _ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.client_link)
            _ip("link", "set", self.client_link, "netns", self.name)
            _ip("address", "add", f"{self.host_address}/24", "dev", self.host_link)
            _ip("link", "set", self.host_link, "up")
            inside = ("-n", self.name)
            for address in self.client_addresses:
                _ip(*inside, "address", "add", f"{address}/24", "dev", self.client_link)
            _ip(*inside, "link", "set", self.client_link, "up")
            _ip(*inside, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def add_host_address(self) -> str:
        """Another address on the host's end (e.g. one added after the proxy started)."""
        address = f"{self.prefix}.{200 + len(self.extra_host_addresses)}"
        _ip("address", "add", f"{address}/32", "dev", self.host_link)
        self.extra_host_addresses.append(address)
        return address

    def __exit__(self, *exc) -> None:
        if self._created:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)
            self._created = False
        # Normally gone with the namespace; a setup that failed half way may have left it.
        subprocess.run(["ip", "link", "del", self.host_link], capture_output=True, timeout=30)

    def run(self, work: Callable[..., Any], *args: Any, timeout: float = 120.0) -> Any:
        """work(*args) on a thread inside the namespace; its result, or its exception."""
        outcome: List[Tuple[bool, Any]] = []

        def inside() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                with open(f"/run/netns/{self.name}", "rb") as handle:
                    if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns into {self.name}")
                outcome.append((True, work(*args)))
            except BaseException as exc:  # handed to the caller
                outcome.append((False, exc))

        thread = threading.Thread(target=inside, name=f"in-{self.name}", daemon=True)
        thread.start()
        thread.join(timeout)
        if not outcome:
            raise TimeoutError(f"work in {self.name} did not finish within {timeout}s")
        ok, value = outcome[0]
        if not ok:
            raise value
        return value
