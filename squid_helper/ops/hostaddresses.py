"""The addresses this host answers on, every interface, for squid.conf's to_this_host acl.

Squid's own to_localhost covers loopback only: a client asking the proxy for
http://<the proxy's LAN address>:<port>/ would reach the host's services through it. serve
reads these addresses each time it renders squid.conf (every start and reload).

The kernel's own lists are read (/proc/net/fib_trie for IPv4, /proc/net/if_inet6 for IPv6),
not the output of a command: nothing to install, nothing to hang. The parsing is pure.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Iterable, List, Tuple

FIB_TRIE = Path("/proc/net/fib_trie")
IF_INET6 = Path("/proc/net/if_inet6")


def _covered_elsewhere(network: ipaddress._BaseNetwork) -> bool:
    """Loopback and link-local have acls of their own (to_localhost, to_linklocal)."""
    return network.is_loopback or network.is_link_local


def ipv4_local(fib_trie: str) -> List[str]:
    """The addresses (and whole local networks, such as an AnyIP route) that the kernel's
    routing trie marks "host LOCAL": the addresses of every interface."""
    found = []
    last = ""
    for line in fib_trie.splitlines():
        text = line.strip()
        if text.startswith("|-- "):
            last = text[4:].strip()
        elif text.endswith("host LOCAL") and text.startswith("/") and last:
            length = text[1:].split()[0]
            found.append(f"{last}/{length}")
    return _unique(found)


def ipv6_local(if_inet6: str) -> List[str]:
    """The addresses in /proc/net/if_inet6 (32 hex digits first on each line)."""
    found = []
    for line in if_inet6.splitlines():
        fields = line.split()
        if fields and len(fields[0]) == 32:
            try:
                found.append(f"{ipaddress.IPv6Address(int(fields[0], 16))}/128")
            except ValueError:
                continue
    return _unique(found)


def _unique(networks: Iterable[str]) -> List[str]:
    """Each network once, without those covered elsewhere; single addresses without /32."""
    kept: List[str] = []
    for text in networks:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            continue
        if _covered_elsewhere(network):
            continue
        single = network.num_addresses == 1
        shown = str(network.network_address) if single else str(network)
        if shown not in kept:
            kept.append(shown)
    return kept


def this_host_addresses(fib_trie: Path = FIB_TRIE, if_inet6: Path = IF_INET6
                        ) -> Tuple[str, ...]:
    """Every address of this host but loopback and link-local, now. A list the kernel does
    not offer (no IPv6, say) adds nothing."""
    found: List[str] = []
    for path, parse in ((fib_trie, ipv4_local), (if_inet6, ipv6_local)):
        try:
            found += parse(path.read_text(encoding="ascii", errors="replace"))
        except OSError:
            continue
    return tuple(found)
