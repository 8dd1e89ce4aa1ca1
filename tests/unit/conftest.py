"""The unit tier: pure logic, run by `make unit` in seconds, as any user, with no Squid, no dnf,
no Redis and no network. A test here that opens an internet socket fails at once, naming the
address: it belongs in tests/ (the end-to-end tier), which `make test` runs after this one."""

from __future__ import annotations

import socket
from typing import Iterator

import pytest

NETWORK_FAMILIES = (socket.AF_INET, socket.AF_INET6)


class NetworkInUnitTier(AssertionError):
    pass


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Refuse connect() and bind() on IPv4/IPv6 sockets (Unix sockets and pipes stay allowed:
    multiprocessing uses them)."""
    for method in ("connect", "connect_ex", "bind"):
        real = getattr(socket.socket, method)

        def refuse(sock: socket.socket, address, _real=real, _method=method):
            if sock.family in NETWORK_FAMILIES:
                raise NetworkInUnitTier(
                    f"{_method}({address!r}) in a unit test: tests/unit is the pure tier; "
                    "move the test to tests/ (end-to-end)")
            return _real(sock, address)

        monkeypatch.setattr(socket.socket, method, refuse)
    yield
