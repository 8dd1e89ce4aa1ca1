"""Render squid.conf from the package's template (templates/squid.conf.in).

squid.conf.example at the repository root is this module's output for the defaults (a unit test
keeps the two equal), and `squid-helper serve` and the end-to-end tests render the same template
with their own ports and directories, so what is tested is what is shipped.

Pure: render() reads the template and returns text; it writes nothing.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import sys
from dataclasses import dataclass, fields
from importlib import resources
from typing import Dict, Optional, Tuple

TEMPLATE = "squid.conf.in"
DEFAULT_HELPER = "/opt/squid-helper/venv/bin/squid-helper"
DEFAULT_CONFIG = "/etc/squid-helper/repos.yaml"
# squid-helper-fetchlog, Squid's logfile_daemon, sits beside squid-helper
FETCHLOG_SUFFIX = "-fetchlog"
# Where `pip install` puts the error pages (setup.cfg data_files), under the venv's prefix.
ERROR_PAGES_UNDER_PREFIX = ("share", "squid-helper", "errors")
DEFAULT_ERROR_DIRECTORY = "/opt/squid-helper/venv/" + "/".join(ERROR_PAGES_UNDER_PREFIX)
EXAMPLE_NOTE = ("Rendered by `python -m squid_helper.ops.squidconf`. Install as "
                "/etc/squid/squid.conf; edit the lab acl.")
# RFC 1918 networks; the admin narrows them to the lab's own.
DEFAULT_LAB_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
# The name the store_id helper's keys use (storeid.STORE_ID_HOST; kept here so that rendering
# squid.conf needs nothing of the helpers).
STORE_ID_HOST = "squid-helper.invalid"
LOCAL_GUARD = """\
# No client reaches this host's own services, on any of its addresses, or link-local ones (cloud
# metadata), through the proxy, CONNECT included. Repo URLs are exempt, and checked first so
# that no DNS lookup happens for them: the virtual host never resolves, and an accel request is
# addressed to this host until the helper rewrites it to a mirror.
@THIS_HOST_ACL@
acl to_linklocal dst 169.254.0.0/16 fe80::/10
http_access deny !repo_virtual !repo_accel to_localhost
http_access deny !repo_virtual !repo_accel to_this_host
http_access deny !repo_virtual !repo_accel to_linklocal"""
# With peers, a peer's fetch of what it found here (HTCP) names a mirror URL: on a lab whose
# mirrors live on loopback (a test), the guard would refuse it.
LOCAL_GUARD_FLEET = """\
# No client reaches this host's own services, on any of its addresses, or link-local ones (cloud
# metadata), through the proxy, CONNECT included. Repo URLs are exempt, and checked first so
# that no DNS lookup happens for them: the virtual host never resolves, and an accel request is
# addressed to this host until the helper rewrites it to a mirror. So are requests with
# only-if-cached (a peer fetching what it found here over HTCP): Squid answers them from its
# cache or with a 504, never contacting the host.
@THIS_HOST_ACL@
acl to_linklocal dst 169.254.0.0/16 fe80::/10
acl cache_only req_header Cache-Control -i only-if-cached
http_access deny !repo_virtual !repo_accel !cache_only to_localhost
http_access deny !repo_virtual !repo_accel !cache_only to_this_host
http_access deny !repo_virtual !repo_accel !cache_only to_linklocal"""
# to_this_host: Squid's to_localhost is loopback only. serve lists the host's addresses (every
# interface, read again at each start and reload); the example cannot know them.
THIS_HOST_LISTED = """\
# This host's addresses when squid.conf was rendered (serve renders it again at every start and
# reload, so that an address added since is covered after a reload).
acl to_this_host dst @ADDRESSES@"""
THIS_HOST_TO_EDIT = """\
# EDIT THIS: every address of this host (ip -brief address), so that a client cannot reach its
# services through the proxy by naming its LAN address. serve fills them in by itself.
acl to_this_host dst 127.0.0.1"""
LOCAL_UNGUARDED = """\
# guard_local_destinations is off: clients may reach this host's own services through the
# proxy (a test lab whose origin servers live on loopback; never in production)."""
DIRECT = """\
# Rewritten accel requests go straight to the mirror, never to a cache_peer: without this
# Squid answered them with ERR_READ_ERROR / 502.
always_direct allow repo_accel"""
UPSTREAM = """\
# Every request goes through the upstream proxy (upstream_proxy in repos.yaml, which the
# helpers' probes use too). never_direct covers the rewritten accel requests as well; an
# "always_direct allow repo_accel" line would send those around the parent (always_direct wins
# over never_direct), and through the parent they need none. https:// mirror URLs go to the
# parent as "GET https://..." (not CONNECT): the parent makes the TLS connection and checks
# the certificate, so tls_outgoing_options below does not apply to them.
cache_peer @UPSTREAM_HOST@ parent @UPSTREAM_PORT@ 0 no-query no-digest default name=upstream
never_direct allow all
# Squid 5.7 sends the first request on a connection to the parent that was kept open from
# before a "squid -k reconfigure" without the host in its request line ("GET /path"), and the
# parent answers 400. With no idle connections kept, there are none to reuse.
server_persistent_connections off"""
TLS_LIBRARIES = ("gnutls", "openssl")
TLS_GNUTLS = """\
# --- https:// mirrors -------------------------------------------------------------------------
# Squid fetches https:// mirror URLs itself. What Debian's Squid 5.7 does (built with GnuTLS:
# squid -v shows --with-gnutls), checked on this project's test machine:
#  * over TLS 1.3 it completes the handshake, then reads no answer (ERR_READ_ERROR, 502):
#    options= (a GnuTLS priority string) keeps it to TLS 1.2, and the helper speaks no newer;
#  * it does not verify a mirror's certificate at all: an unknown CA or a wrong name is
#    fetched all the same, cafile= or not. The helper verifies every https:// mirror (against
#    the same ca_file) before it answers with it, and skips one that fails;
#  * cafile= takes one PEM file (capath= needs OpenSSL) and a bad one is only a warning;
#    ssl_bump (HTTPS interception) is not available.
tls_outgoing_options @TLS_OPTIONS@"""
TLS_OPENSSL = """\
# --- https:// mirrors -------------------------------------------------------------------------
# Squid fetches https:// mirror URLs itself, and verifies them against the CA bundle below
# (the helper verifies them against the same ca_file before it answers with them).
tls_outgoing_options @TLS_OPTIONS@"""

ACCEL_WITH_PEERS = """\
# Rewritten accel requests may go to the mirror (allow-direct on the accel port: Squid denies
# accel requests direct forwarding otherwise, ERR_READ_ERROR / 502) or to a peer that holds the
# file. always_direct would do the first but skip the peers."""
# The Squid option that says a peer answers HTCP (and which port), in cache_peer lines.
FLEET_TEMPLATE = """\
# --- The fleet -------------------------------------------------------------------------------
# This proxy and its peers (peers: in repos.yaml) are HTCP siblings. A repo file this proxy
# does not hold is first asked for at the peers, by its store-id key: Squid puts the key
# (http://@STORE_ID_HOST@/<repo>/<releasever>/<arch>/<path>), not the mirror URL, into the
# HTCP query, and every proxy's store_id helper gives every mirror's copy of a file that key.
# So a peer that fetched the file from another mirror still answers a hit, and serves it: the
# fetch names this proxy's mirror URL, which the peer's store_id helper maps to the same key.
# A miss, or a peer that is down or slow to answer: the mirror, as without peers. Checked on
# Squid 5.7; see "A fleet of proxies" in the README.
# Every proxy of the fleet has its own name in Via: a Squid that finds its own name in a
# request's Via takes it for a forwarding loop (a WARNING in cache.log at every sibling
# fetch). visible_hostname stays the same on all of them.
unique_hostname @UNIQUE_HOSTNAME@
htcp_port @HTCP_PORT@
@UDP_ADDRESS@htcp_access allow fleet_peers
htcp_access deny all
# Squid sends a request straight to an origin it measured closer than minimum_direct_rtt
# (400 ms by default), without asking the peers: after one fetch, every mirror of a lab is
# that close, and the peers would never be asked again. 0: the peers are always asked.
minimum_direct_rtt 0
minimum_direct_hops 0
# no-digest: asked over HTCP each time. A cache digest is rebuilt hourly, and would not show
# what a peer fetched since. A sibling is asked with only-if-cached: it never fetches a file
# from a mirror for another proxy; only repo files are asked for (not the generic proxy's).
@PEER_LINES@"""

# The name in Via and on error pages: the same on every proxy (unique_hostname tells them apart).
VISIBLE_HOSTNAME = "squid-helper"
_PLACEHOLDER_RE = re.compile(r"@([A-Z_]+)@")
# A placeholder alone on its line whose text is empty leaves no line at all: the rendering
# without a fleet is the same as before fleets existed.
_EMPTY_LINE_RE = re.compile(r"^@([A-Z_]+)@\n", re.M)
_TOKEN_RE = re.compile(r"^[^\s#\"'\\]+$")
_SIZE_RE = re.compile(r"^[0-9]+ (KB|MB|GB)$")


class SquidConfError(ValueError):
    """A parameter that cannot go into squid.conf as given."""


@dataclass(frozen=True)
class SquidConfParams:
    forward_port: int = 3128
    accel_port: int = 5000
    listen_address: Optional[str] = None  # None: all addresses
    helper_command: str = DEFAULT_HELPER  # the squid-helper executable (one path)
    # Squid's logfile_daemon (squid-helper-fetchlog); None: the one beside helper_command
    fetchlog_command: Optional[str] = None
    helper_config: str = DEFAULT_CONFIG  # repos.yaml as the helpers read it
    # squid-helper's error pages (ERR_REPO...), installed with the helper's venv
    error_directory: str = DEFAULT_ERROR_DIRECTORY
    cache_dir: str = "/var/spool/squid"
    cache_dir_type: str = "aufs"
    cache_size_mb: int = 20000
    cache_mem: str = "256 MB"
    maximum_object_size: str = "4096 MB"
    maximum_object_size_in_memory: str = "16 MB"
    log_dir: str = "/var/log/squid"
    pid_file: str = "/run/squid.pid"
    coredump_dir: str = "/var/spool/squid"
    lab_networks: Tuple[str, ...] = DEFAULT_LAB_NETWORKS
    # The fleet's other proxies, (host, HTTP port): HTCP siblings. Empty: this proxy alone.
    peers: Tuple[Tuple[str, int], ...] = ()
    htcp_port: int = 4827  # on which this proxy and every peer answer HTCP
    virtual_hosts: Tuple[str, ...] = ("repoproxy",)  # host names only, without ports
    # Refuse client URLs to this host's own addresses and link-local ones. Off only for a lab
    # whose origin servers themselves live on loopback (tests, benchmarks).
    guard_local_destinations: bool = True
    # This host's addresses for the to_this_host acl (hostaddresses.this_host_addresses(), which
    # serve reads at every render). None: not known here (the example), the admin lists them.
    host_addresses: Optional[Tuple[str, ...]] = None
    # Connections one client address may hold open at once (client_ip_max_connections): one
    # client cannot take every descriptor, or fill the rewrite helpers' queue, for itself.
    max_client_connections: int = 64
    effective_user: str = "proxy"
    visible_hostname: str = VISIBLE_HOSTNAME
    # This proxy's own name among its peers (Via, loop detection); serve gives
    # unique_hostname_for(this host's name, ...). None: the same from the listen address and
    # port alone, which differs only between proxies that differ in those.
    unique_hostname: Optional[str] = None
    rewrite_children: int = 20
    rewrite_startup: int = 2
    rewrite_idle: int = 2
    rewrite_concurrency: int = 50
    storeid_children: int = 10
    storeid_startup: int = 1
    storeid_idle: int = 1
    storeid_concurrency: int = 100
    shutdown_lifetime: int = 10
    generated_by: str = EXAMPLE_NOTE
    # The PEM bundle Squid trusts for https:// mirrors instead of the system's (ca_file in
    # repos.yaml); None: the system's.
    ca_file: Optional[str] = None
    # (host, port) of the parent proxy every request goes through (upstream_proxy in
    # repos.yaml); None: Squid goes to the mirrors itself.
    upstream_proxy: Optional[Tuple[str, int]] = None
    # The TLS library Squid is built with (squid -v): "gnutls" (Debian's squid) or "openssl"
    # (squid-openssl); tls_outgoing_options differs.
    tls_library: str = "gnutls"
    # Several clients asking for one file Squid is fetching wait for that fetch instead of
    # starting their own. Off by default: Squid up to 5.9 can be crashed through it
    # (CVE-2023-49288); serve turns it on for Squid 6.0.1 or later.
    collapsed_forwarding: bool = False


def fetchlog_command_for(helper_command: str) -> str:
    """The fetch log daemon installed beside the squid-helper executable (setup.cfg's
    console_scripts)."""
    return helper_command + FETCHLOG_SUFFIX


def installed_error_directory() -> str:
    """The error pages installed with this Python's squid-helper (the venv the helpers run
    from), for squid.conf's error_directory."""
    return os.path.join(sys.prefix, *ERROR_PAGES_UNDER_PREFIX)


def template_text() -> str:
    return resources.files("squid_helper").joinpath("templates", TEMPLATE).read_text("utf-8")


def _token(name: str, value: str) -> str:
    if not isinstance(value, str) or not _TOKEN_RE.match(value):
        raise SquidConfError(f"{name} must be one word without spaces, quotes, '#' or "
                             f"backslashes (got {value!r})")
    return value


def _count(name: str, value: int, minimum: int = 0, maximum: int = 1 << 31) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise SquidConfError(f"{name} must be a whole number from {minimum} to {maximum} "
                             f"(got {value!r})")
    return str(value)


def _size(name: str, value: str) -> str:
    if not isinstance(value, str) or not _SIZE_RE.match(value):
        raise SquidConfError(f"{name} must look like '512 MB' (got {value!r})")
    return value


def peer_name(host: str, port: int) -> str:
    """The cache_peer name= of a peer: unique for each (host, port), one word."""
    return "peer-" + re.sub(r"[^A-Za-z0-9.-]", "-", host) + f"-{port}"


def unique_hostname_for(visible_hostname: str, host: str, listen: str, port: int) -> str:
    """visible_hostname and a digest of (host name, listen address, port): one per proxy,
    several on one host included, the same across restarts, and telling the mirrors nothing."""
    digest = hashlib.sha256(f"{host} {listen} {port}".encode()).hexdigest()
    return f"{visible_hostname}-{digest[:10]}"


def fleet_lines(params: SquidConfParams, listen: str) -> Dict[str, str]:
    """The fleet's placeholders: all empty for a proxy without peers."""
    p = params
    if not p.peers:
        return {"FLEET": "", "FLEET_ACCESS": "", "ACCEL_ALLOW_DIRECT": ""}
    htcp = _count("htcp_port", p.htcp_port, 1, 65535)
    seen = set()
    peer_lines = []
    for host, port in p.peers:
        _token("peers", host)
        _count("peer port", port, 1, 65535)
        if (host, port) in seen:
            raise SquidConfError(f"peer {host}:{port} is listed twice")
        seen.add((host, port))
        name = peer_name(host, port)
        peer_lines += [f"cache_peer {host} sibling {port} {htcp} htcp no-digest name={name}",
                       f"cache_peer_access {name} allow repo_rewritten",
                       f"cache_peer_access {name} deny all"]
    # Bound to one address (serve --listen), HTCP must leave from it too: a Squid ignores
    # queries that come from its own address, and several proxies on one host (a test) would
    # otherwise all send from the same one.
    udp = f"udp_incoming_address {listen.strip('[]')}\n" if listen else ""
    fleet = FLEET_TEMPLATE
    unique = (_token("unique_hostname", p.unique_hostname) if p.unique_hostname else
              unique_hostname_for(p.visible_hostname, "", listen, p.forward_port))
    for key, value in (("HTCP_PORT", htcp), ("UDP_ADDRESS", udp), ("UNIQUE_HOSTNAME", unique),
                       ("PEER_LINES", "\n".join(peer_lines)), ("STORE_ID_HOST", STORE_ID_HOST)):
        fleet = fleet.replace(f"@{key}@", value)
    access = ("# The fleet's other proxies (peers: in repos.yaml) fetch what they found here over\n"
              "# HTCP, like any lab client.\n"
              f"acl fleet_peers src {' '.join(sorted({h for h, _ in p.peers}))}\n"
              "http_access allow fleet_peers")
    return {"FLEET": fleet, "FLEET_ACCESS": access, "ACCEL_ALLOW_DIRECT": " allow-direct"}


def this_host_acl(addresses: Optional[Tuple[str, ...]]) -> str:
    """The to_this_host acl line and its comment: the listed addresses, validated, or a line
    for the admin to edit when they are not known."""
    if addresses is None:
        return THIS_HOST_TO_EDIT
    checked = []
    for address in addresses:
        try:
            checked.append(str(ipaddress.ip_network(address, strict=False)) if "/" in address
                           else str(ipaddress.ip_address(address)))
        except ValueError:
            raise SquidConfError(f"host_addresses: {address!r} is not an IP address or "
                                 "network") from None
    # A host with loopback alone still needs a valid acl line (to_localhost covers it).
    return THIS_HOST_LISTED.replace("@ADDRESSES@", " ".join(checked) or "127.0.0.1")


def local_destinations(params: SquidConfParams) -> str:
    """The guard that keeps clients off this host's services, or the note that it is off."""
    if not params.guard_local_destinations:
        return LOCAL_UNGUARDED
    guard = LOCAL_GUARD_FLEET if params.peers else LOCAL_GUARD
    return guard.replace("@THIS_HOST_ACL@", this_host_acl(params.host_addresses))


def substitutions(params: SquidConfParams) -> Dict[str, str]:
    """Each template placeholder's text, validated: nothing can add a line to squid.conf."""
    p = params
    if p.forward_port == p.accel_port:
        raise SquidConfError(f"the forward port and the accel port are both {p.forward_port}")
    if not p.lab_networks:
        raise SquidConfError("lab_networks must name at least one network (e.g. 10.1.2.0/24)")
    if not p.virtual_hosts:
        raise SquidConfError("virtual_hosts must name at least one host (e.g. repoproxy)")
    if "\n" in p.generated_by or "\r" in p.generated_by:
        raise SquidConfError("generated_by must be one line")
    listen = "" if p.listen_address in (None, "") else _token("listen_address",
                                                               p.listen_address)
    if ":" in listen and not listen.startswith("["):
        listen = f"[{listen}]"  # an IPv6 address
    if p.tls_library not in TLS_LIBRARIES:
        raise SquidConfError(f"tls_library must be one of {', '.join(TLS_LIBRARIES)} "
                             f"(got {p.tls_library!r})")
    tls_options = "min-version=1.2"
    if p.tls_library == "gnutls":
        tls_options += " options=NORMAL:-VERS-TLS1.3"
    if p.ca_file is not None:
        # default-ca=off: ca_file replaces the system's store, for Squid as for the helper.
        tls_options += f" cafile={_token('ca_file', p.ca_file)} default-ca=off"
    tls = (TLS_GNUTLS if p.tls_library == "gnutls" else TLS_OPENSSL).replace(
        "@TLS_OPTIONS@", tls_options)
    if p.upstream_proxy is None:
        # With peers, always_direct would skip them: the accel port's allow-direct does its job.
        forwarding = ACCEL_WITH_PEERS if p.peers else DIRECT
    else:
        if not isinstance(p.upstream_proxy, tuple) or len(p.upstream_proxy) != 2:
            raise SquidConfError(f"upstream_proxy must be (host, port) (got "
                                 f"{p.upstream_proxy!r})")
        host, port = p.upstream_proxy
        forwarding = UPSTREAM.replace("@UPSTREAM_HOST@", _token("upstream_proxy host", host)
                                      ).replace("@UPSTREAM_PORT@",
                                                _count("upstream_proxy port", port, 1, 65535))
    values = {
        "FORWARD_PORT": _count("forward_port", p.forward_port, 1, 65535),
        "ACCEL_PORT": _count("accel_port", p.accel_port, 1, 65535),
        "LISTEN_PREFIX": f"{listen}:" if listen else "",
        "HELPER_COMMAND": _token("helper_command", p.helper_command),
        "HELPER_CONFIG": _token("helper_config", p.helper_config),
        "FETCHLOG_COMMAND": _token("fetchlog_command", p.fetchlog_command
                                   or fetchlog_command_for(p.helper_command)),
        "ERROR_DIRECTORY": _token("error_directory", p.error_directory),
        "CACHE_DIR": _token("cache_dir", p.cache_dir),
        "CACHE_DIR_TYPE": _token("cache_dir_type", p.cache_dir_type),
        "CACHE_SIZE_MB": _count("cache_size_mb", p.cache_size_mb, 1),
        "CACHE_MEM": _size("cache_mem", p.cache_mem),
        "MAXIMUM_OBJECT_SIZE": _size("maximum_object_size", p.maximum_object_size),
        "MAXIMUM_OBJECT_SIZE_IN_MEMORY": _size("maximum_object_size_in_memory",
                                               p.maximum_object_size_in_memory),
        "LOG_DIR": _token("log_dir", p.log_dir),
        "PID_FILE": _token("pid_file", p.pid_file),
        "COREDUMP_DIR": _token("coredump_dir", p.coredump_dir),
        "LAB_NETWORKS": " ".join(_token("lab_networks", n) for n in p.lab_networks),
        "VIRTUAL_HOSTS": " ".join(_token("virtual_hosts", h) for h in p.virtual_hosts),
        "STORE_ID_HOST": STORE_ID_HOST,
        "LOCAL_DESTINATIONS": local_destinations(p),
        "FORWARDING": forwarding,
        "TLS_OUTGOING": tls,
        "COLLAPSED_FORWARDING": "on" if p.collapsed_forwarding is True else "off",
        "EFFECTIVE_USER": _token("effective_user", p.effective_user),
        "VISIBLE_HOSTNAME": _token("visible_hostname", p.visible_hostname),
        "REWRITE_CHILDREN": _count("rewrite_children", p.rewrite_children, 1),
        "REWRITE_STARTUP": _count("rewrite_startup", p.rewrite_startup),
        "REWRITE_IDLE": _count("rewrite_idle", p.rewrite_idle, 1),
        "REWRITE_CONCURRENCY": _count("rewrite_concurrency", p.rewrite_concurrency),
        # As many waiting as the helpers take at once: past that the queue counts as overloaded.
        "REWRITE_QUEUE_SIZE": str(p.rewrite_children * max(1, p.rewrite_concurrency)),
        "MAX_CLIENT_CONNECTIONS": _count("max_client_connections", p.max_client_connections,
                                         1),
        "STOREID_CHILDREN": _count("storeid_children", p.storeid_children, 1),
        "STOREID_STARTUP": _count("storeid_startup", p.storeid_startup),
        "STOREID_IDLE": _count("storeid_idle", p.storeid_idle, 1),
        "STOREID_CONCURRENCY": _count("storeid_concurrency", p.storeid_concurrency),
        "SHUTDOWN_LIFETIME": _count("shutdown_lifetime", p.shutdown_lifetime),
        "GENERATED_BY": p.generated_by,
        **fleet_lines(p, listen),
    }
    return values


def render(params: Optional[SquidConfParams] = None, template: Optional[str] = None) -> str:
    """squid.conf text for params (the defaults give squid.conf.example)."""
    values = substitutions(params or SquidConfParams())
    text = template_text() if template is None else template
    text = _EMPTY_LINE_RE.sub(lambda m: m.group(0) if values.get(m.group(1), "x") else "", text)
    missing = sorted(set(_PLACEHOLDER_RE.findall(text)) - set(values))
    if missing:
        raise SquidConfError(f"template placeholders without a value: {', '.join(missing)}")
    return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], text)


PARAMETER_NAMES = tuple(f.name for f in fields(SquidConfParams))


if __name__ == "__main__":  # python -m squid_helper.ops.squidconf > squid.conf.example
    sys.stdout.write(render())
