"""Render squid.conf from the package's template (templates/squid.conf.in).

squid.conf.example at the repository root is this module's output for the defaults (a unit test
keeps the two equal), and `squid-helper serve` and the end-to-end tests render the same template
with their own ports and directories, so what is tested is what is shipped.

Pure: render() reads the template and returns text; it writes nothing.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, fields
from importlib import resources
from typing import Dict, Optional, Tuple

TEMPLATE = "squid.conf.in"
DEFAULT_HELPER = "/opt/squid-helper/venv/bin/squid-helper"
DEFAULT_CONFIG = "/etc/squid-helper/repos.yaml"
# Where `pip install` puts the error pages (setup.cfg data_files), under the venv's prefix.
ERROR_PAGES_UNDER_PREFIX = ("share", "squid-helper", "errors")
DEFAULT_ERROR_DIRECTORY = "/opt/squid-helper/venv/" + "/".join(ERROR_PAGES_UNDER_PREFIX)
EXAMPLE_NOTE = ("Rendered by `python -m squid_helper.squidconf`. Install as "
                "/etc/squid/squid.conf; edit the lab acl.")
# RFC 1918 networks; the admin narrows them to the lab's own.
DEFAULT_LAB_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
# The name the store_id helper's keys use (storeid.STORE_ID_HOST; kept here so that rendering
# squid.conf needs nothing of the helpers).
STORE_ID_HOST = "squid-helper.invalid"
LOCAL_GUARD = """\
# No client reaches this host's own services, or link-local ones (cloud metadata), through the
# proxy. Repo URLs are exempt, and checked first so that no DNS lookup happens for them: the
# virtual host never resolves, and an accel request is addressed to this host until the helper
# rewrites it to a mirror.
acl to_linklocal dst 169.254.0.0/16 fe80::/10
http_access deny !repo_virtual !repo_accel to_localhost
http_access deny !repo_virtual !repo_accel to_linklocal"""
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

_PLACEHOLDER_RE = re.compile(r"@([A-Z_]+)@")
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
    virtual_hosts: Tuple[str, ...] = ("repoproxy",)  # host names only, without ports
    # Refuse client URLs to this host's own addresses and link-local ones. Off only for a lab
    # whose origin servers themselves live on loopback (tests, benchmarks).
    guard_local_destinations: bool = True
    effective_user: str = "proxy"
    visible_hostname: str = "squid-helper"
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
        forwarding = DIRECT
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
        "LOCAL_DESTINATIONS": LOCAL_GUARD if p.guard_local_destinations else LOCAL_UNGUARDED,
        "FORWARDING": forwarding,
        "TLS_OUTGOING": tls,
        "EFFECTIVE_USER": _token("effective_user", p.effective_user),
        "VISIBLE_HOSTNAME": _token("visible_hostname", p.visible_hostname),
        "REWRITE_CHILDREN": _count("rewrite_children", p.rewrite_children, 1),
        "REWRITE_STARTUP": _count("rewrite_startup", p.rewrite_startup),
        "REWRITE_IDLE": _count("rewrite_idle", p.rewrite_idle, 1),
        "REWRITE_CONCURRENCY": _count("rewrite_concurrency", p.rewrite_concurrency),
        "STOREID_CHILDREN": _count("storeid_children", p.storeid_children, 1),
        "STOREID_STARTUP": _count("storeid_startup", p.storeid_startup),
        "STOREID_IDLE": _count("storeid_idle", p.storeid_idle, 1),
        "STOREID_CONCURRENCY": _count("storeid_concurrency", p.storeid_concurrency),
        "SHUTDOWN_LIFETIME": _count("shutdown_lifetime", p.shutdown_lifetime),
        "GENERATED_BY": p.generated_by,
    }
    return values


def render(params: Optional[SquidConfParams] = None, template: Optional[str] = None) -> str:
    """squid.conf text for params (the defaults give squid.conf.example)."""
    values = substitutions(params or SquidConfParams())
    text = template_text() if template is None else template
    missing = sorted(set(_PLACEHOLDER_RE.findall(text)) - set(values))
    if missing:
        raise SquidConfError(f"template placeholders without a value: {', '.join(missing)}")
    return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], text)


PARAMETER_NAMES = tuple(f.name for f in fields(SquidConfParams))


if __name__ == "__main__":  # python -m squid_helper.squidconf > squid.conf.example
    sys.stdout.write(render())
