"""squid-helper's one HTTP client: the sessions that probe mirrors and fetch mirror lists, that
`warm` and `purge` send through Squid, and the request that reads Squid's counters; one
wording of their failures.

What every request has in common:

* no environment: proxy variables usually name Squid itself, so only the proxy a caller names
  counts (and REQUESTS_CA_BUNDLE cannot change what https:// is verified against);
* https:// verified against ca_file, else the system's CA bundle (the store Squid trusts), and
  no newer TLS than Squid speaks (MAX_TLS_VERSION);
* User-Agent `squid-helper`, without a version: a mirror's logs tell the helper's requests
  from a client's, and an outsider learns nothing to match against known bugs;
* no retries of urllib3's own: a failure is reported at once, and the caller decides;
* a whole-call time limit when the caller asks for one (Deadline): requests' timeouts bound
  each connect and each read, not the whole answer.
"""

from __future__ import annotations

import errno
import heapq
import http.client
import ipaddress
import itertools
import os
import queue
import socket
import ssl
import threading
import time
from typing import Any, Iterator, List, Optional, Tuple, Union

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.connection import allowed_gai_family
from urllib3.util.retry import Retry

from .redaction import host_of

USER_AGENT = "squid-helper"
# requests' timeout: seconds for each connect and each read, or a (connect, read) pair.
Timeouts = Union[None, float, Tuple[float, float]]
# What a failure of the other side (a mirror, a proxy, Squid) looks like; any other exception
# in a request is a bug of ours.
FAILURES = (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException,
            OSError)
# Where Debian/Ubuntu, then Fedora/RHEL keep the system's CA bundle: the store Squid trusts by
# default too, and where update-ca-certificates puts a lab's own CA. requests alone would use
# certifi's copy of Mozilla's list, which knows no lab CA.
SYSTEM_CA_FILES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
# Squid 5.7 built with GnuTLS (Debian's) completes a TLS 1.3 handshake with a mirror, then
# fails to read the answer (ERR_READ_ERROR); squid.conf keeps it to TLS 1.2. The helper speaks
# no newer TLS than Squid, so that it never vouches for a mirror Squid cannot fetch from.
MAX_TLS_VERSION = ssl.TLSVersion.TLSv1_2


def system_ca_file() -> Optional[str]:
    """The system's CA bundle file, or None on a system without one."""
    for candidate in (*SYSTEM_CA_FILES, ssl.get_default_verify_paths().cafile):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def trust_store(ca_file: Optional[str]) -> Union[str, bool]:
    """What requests' verify= gets: ca_file, else the system's bundle, else True (certifi's,
    on a system that has no bundle at all)."""
    return ca_file or system_ca_file() or True


# -- one wording of failures ---------------------------------------------------------------------
# How http.client words a proxy's refusal of CONNECT (then the status line).
_TUNNEL_FAILED = "Tunnel connection failed:"
# Why a connection could not be made, by the errno the system gave.
_CONNECT_ERRORS = {errno.ECONNREFUSED: "refused", errno.ECONNRESET: "reset",
                   errno.EHOSTUNREACH: "no route to host", errno.ENETUNREACH: "network unreachable",
                   errno.ECONNABORTED: "aborted", errno.EPIPE: "closed by the other side"}


def _causes(exc: BaseException, depth: int = 0) -> Iterator[BaseException]:
    """exc and what it wraps: requests and urllib3 nest the cause in args and reason."""
    if depth > 6 or exc is None:
        return
    yield exc
    inner = [getattr(exc, "reason", None), exc.__cause__, exc.__context__,
             *(a for a in getattr(exc, "args", ()) if isinstance(a, BaseException))]
    for nested in inner:
        if isinstance(nested, BaseException) and nested is not exc:
            yield from _causes(nested, depth + 1)


def _connect_problem(exc: BaseException) -> str:
    """'connection failed', with why when the system said: (refused), (name not known) ..."""
    for cause in _causes(exc):
        if isinstance(cause, socket.gaierror):
            return "connection failed (name not known)"
        why = _CONNECT_ERRORS.get(getattr(cause, "errno", None) or 0)
        if why:
            return f"connection failed ({why})"
    return "connection failed"


def _timed_out(exc: BaseException) -> bool:
    # urllib3 counts a refused connection as a kind of connect timeout; requests does not.
    return isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)) \
        and not isinstance(exc, NewConnectionError)


def describe_failure(exc: BaseException, url: str, elapsed: float, proxy: Optional[str] = None,
                     proxy_role: str = "upstream proxy") -> str:
    """A request's failure in a few words, the same whoever made the request: 'timeout after
    2.0s', 'connection failed (refused)', the certificate's problem, or what went wrong with
    the proxy it went through ('upstream proxy http://p:3128: connection failed (refused)').
    The host is named without credentials. Pure: reads only the exception."""
    host = host_of(url)
    through = f"{proxy_role} {proxy}"
    if _timed_out(exc):
        return f"timeout after {elapsed:.1f}s"
    if isinstance(exc, (requests.exceptions.SSLError, urllib3.exceptions.SSLError, ssl.SSLError)):
        for cause in _causes(exc):
            if isinstance(cause, ssl.SSLCertVerificationError):
                why = cause.verify_message or cause.reason or "rejected"
                return f"certificate verify failed for host {host}: {why.strip().rstrip('.')}"
        for cause in _causes(exc):
            if isinstance(cause, ssl.SSLError) and cause.reason:
                return f"TLS handshake with host {host} failed: {cause.reason}"
        return f"TLS handshake with host {host} failed"
    if proxy and isinstance(exc, (requests.exceptions.ProxyError,
                                  urllib3.exceptions.ProxyError)):
        for cause in _causes(exc):
            text = str(cause)
            if text.startswith(_TUNNEL_FAILED):
                # The proxy answered CONNECT with an error: it could not reach the other side.
                status = text[len(_TUNNEL_FAILED):].strip()
                return f"{through} could not connect to {host}: {status}"
        return f"{through}: {_connect_problem(exc)}"
    if isinstance(exc, (requests.ConnectionError, urllib3.exceptions.HTTPError,
                        ConnectionError)):
        return _connect_problem(exc)
    if isinstance(exc, http.client.HTTPException):  # e.g. a status line that is none
        return f"no HTTP answer ({type(exc).__name__})"
    if isinstance(exc, OSError):
        # Ours, not the other side's: e.g. ca_file gone since the config was read.
        return f"error {type(exc).__name__}: {str(exc)[:160]}"
    return f"error {type(exc).__name__}"


def retry_after(value: Optional[str]) -> Optional[float]:
    """A Retry-After header's delay in seconds (delta-seconds or an HTTP date, one in the past
    meaning 0); None when there is none or it is unreadable."""
    if not value:
        return None
    try:
        return float(Retry(0).parse_retry_after(value.strip()))
    except urllib3.exceptions.InvalidHeader:
        return None


# -- a whole call's time limit -------------------------------------------------------------------
_current = threading.local()  # .deadline: the Deadline of the call this thread is making


class Deadline:
    """One call's time limit, enforced on its connections: `with Deadline(seconds) as d:` around
    the requests of one call. requests' timeouts bound each connect and each read, not a whole
    answer: a server that trickles its answer a byte at a time would outlast them. When the
    time is up, the sockets the call reads from are shut down, and its blocked read ends at
    once (d.expired then tells the caller why). Name lookups are waited for until then only
    (see _lookup): the system resolver may take far longer to give up. Only the connections
    of sessions and pools made here are watched."""

    def __init__(self, seconds: float):
        self.ends = time.monotonic() + seconds
        self.expired = False
        self._sockets: list = []
        self._lock = threading.Lock()

    def __enter__(self) -> Deadline:
        _current.deadline = self
        _WATCHDOG.watch(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            # A connection goes back to the pool after the call: the watchdog, which still
            # holds this deadline, must not cut it under the next call.
            self._sockets.clear()
        _current.deadline = None

    def left(self) -> float:
        return self.ends - time.monotonic()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self.expired:
                _shut(sock)
            else:
                self._sockets.append(sock)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


class _Watchdog:
    """One thread that expires the deadlines of every call in the process, in time order (a
    timer thread per call would cost a thread start per probe)."""

    def __init__(self) -> None:
        self._due: list = []  # heap of (ends, sequence, Deadline)
        self._sequence = itertools.count()
        self._changed = threading.Condition()
        self._thread: Optional[threading.Thread] = None

    def watch(self, deadline: Deadline) -> None:
        with self._changed:
            heapq.heappush(self._due, (deadline.ends, next(self._sequence), deadline))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="http-deadlines",
                                                daemon=True)
                self._thread.start()
            self._changed.notify()

    def _run(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                while self._due and self._due[0][0] <= now:
                    heapq.heappop(self._due)[2].expire()
                self._changed.wait(self._due[0][0] - now if self._due else None)


_WATCHDOG = _Watchdog()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed
        pass


def _lookup(host: str, port: int, deadline: Deadline) -> Optional[List[str]]:
    """The addresses of host, in the resolver's order, waited for until the deadline; None
    when host is an address already, or the lookup failed (urllib3 then fails as usual).
    getaddrinfo cannot be interrupted: it runs in a daemon thread of its own, left to end by
    itself (within the resolver's timeouts) when the call stops waiting for it. Lookups are
    made for new connections only; connections are kept alive."""
    try:
        ipaddress.ip_address(host.strip("[]"))
        return None
    except ValueError:
        pass
    found: queue.Queue[Any] = queue.Queue(maxsize=1)

    def look_up() -> None:
        try:
            found.put(socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM))
        except OSError as exc:  # socket.gaierror: no such name, or the resolver failed
            found.put(exc)

    threading.Thread(target=look_up, name="name-lookup", daemon=True).start()
    try:
        answers = found.get(timeout=max(0.0, deadline.left()))
    except queue.Empty:
        raise ConnectTimeoutError(None, f"name lookup of {host} took too long") from None
    if isinstance(answers, OSError):
        return None
    return list(dict.fromkeys(str(answer[4][0]) for answer in answers))


def _watched(connection_class: type) -> type:
    """connection_class whose reads of an answer are under the current call's deadline, and
    whose name lookup is too."""

    class Watched(connection_class):  # type: ignore[misc, valid-type]
        def _new_conn(self) -> socket.socket:
            deadline = getattr(_current, "deadline", None)
            addresses = _lookup(self._dns_host, self.port, deadline) if deadline else None
            if not addresses:
                return super()._new_conn()
            # Connect to the addresses found, in order, as urllib3 would; the name stays the
            # connection's host (Host header, TLS server name, certificate check).
            name = self._dns_host
            try:
                for address in addresses[:-1]:
                    self._dns_host = address
                    try:
                        return super()._new_conn()
                    except (NewConnectionError, ConnectTimeoutError):
                        continue
                self._dns_host = addresses[-1]
                return super()._new_conn()
            finally:
                self._dns_host = name

        def getresponse(self, *args: Any, **kwargs: Any) -> Any:
            deadline = getattr(_current, "deadline", None)
            if deadline is not None and self.sock is not None:
                deadline.watch(self.sock)
            return super().getresponse(*args, **kwargs)

    Watched.__name__ = f"Watched{connection_class.__name__}"
    return Watched


_WatchedHTTPConnection = _watched(HTTPConnection)


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _watched(HTTPSConnection)


_WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _Adapter(HTTPAdapter):
    """An HTTPAdapter whose TLS connections, direct or tunnelled through a proxy, go no higher
    than MAX_TLS_VERSION, and whose connections a call's Deadline can cut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("ssl_maximum_version", MAX_TLS_VERSION)
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        kwargs.setdefault("ssl_maximum_version", MAX_TLS_VERSION)
        manager = super().proxy_manager_for(proxy, **kwargs)
        manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


# -- the sessions --------------------------------------------------------------------------------
class _Session(requests.Session):
    """A Session with a timeout for every request that names none: requests' own default is
    to wait forever."""

    timeout: Timeouts = None

    def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> requests.Response:
        if not args and kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        return super().request(method, url, *args, **kwargs)


def new_session(timeout: Timeouts, ca_file: Optional[str] = None, proxy: Optional[str] = None,
                pool_size: int = 32) -> requests.Session:
    """A session as described above. timeout: each connect and read's limit in seconds (or
    a (connect, read) pair), for requests that name none; ca_file: the PEM bundle https:// is
    verified against (None: the system's); proxy: 'http://host:port' every request goes
    through (None: none, whatever the environment says); pool_size: connections kept per host
    (threads that use the session at once)."""
    session = _Session()
    session.timeout = timeout
    session.trust_env = False
    session.verify = trust_store(ca_file)
    if proxy:
        session.proxies = {"http": proxy, "https": proxy}
    session.headers["User-Agent"] = USER_AGENT
    adapter = _Adapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class TooLarge(Exception):
    """An answer longer than the caller's limit (a server that is not what it was taken for)."""


def get_target(host: str, port: int, target: str, timeout: float,
               max_bytes: int) -> Tuple[int, bytes]:
    """(status, body) of `GET target` sent to host:port as it is, within timeout in all. For a
    request target that neither requests nor urllib3's pools send unchanged (they read it as a
    URL, and `cache_object` is no URL scheme): Squid's cache manager answers
    `cache_object://HOST/PAGE`. TooLarge past max_bytes; FAILURES otherwise."""
    connection = _WatchedHTTPConnection(host, port, timeout=timeout)
    try:
        with Deadline(timeout) as deadline:
            try:
                connection.request("GET", target, headers={"User-Agent": USER_AGENT},
                                   preload_content=False)
                response = connection.getresponse()
                body = bytearray()
                for chunk in response.stream(64 * 1024):
                    body += chunk
                    if len(body) > max_bytes:
                        raise TooLarge(f"more than {max_bytes} bytes")
            except FAILURES as exc:
                if deadline.expired:  # the cut connection's error: the time was up
                    raise urllib3.exceptions.ReadTimeoutError(None, target, "deadline") from exc
                raise
        return response.status, bytes(body)
    finally:
        connection.close()
