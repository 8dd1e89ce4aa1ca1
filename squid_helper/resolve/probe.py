"""HTTP I/O towards mirrors: probe a path (HEAD, ranged GET fallback) and fetch small documents.

One requests.Session per mirror host keeps connections alive between probes; sessions are
shared by the threads of a process. https:// mirrors are verified against ca_file (default: the
system's CA store, the one Squid uses too), and everything goes through upstream_proxy when one
is configured; proxy environment variables are never looked at (they usually name Squid
itself).
"""

from __future__ import annotations

import email.utils
import heapq
import ipaddress
import itertools
import os
import queue
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.connection import allowed_gai_family

from .. import __version__
from ..config.settings import Config

FOUND, MISSING, FAILED, ERROR, UNCHANGED = "found", "missing", "failed", "error", "unchanged"
# Statuses with which servers refuse HEAD although they would serve a GET.
HEAD_REFUSED = {403, 405, 501}
USER_AGENT = f"squid-helper/{__version__}"
# What a mirror's failure looks like; any other exception in a probe is a bug of ours.
MIRROR_FAILURES = (requests.RequestException, OSError)
# A response's validator -> the request header that sends it back.
_CONDITION = {"ETag": "If-None-Match", "Last-Modified": "If-Modified-Since"}
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


# How http.client words a proxy's refusal of CONNECT (then the status line).
_TUNNEL_FAILED = "Tunnel connection failed:"


def _causes(exc: BaseException, depth: int = 0) -> Iterator[BaseException]:
    """exc and what it wraps: requests and urllib3 nest the ssl error in args and reason."""
    if depth > 6 or exc is None:
        return
    yield exc
    inner = [getattr(exc, "reason", None), exc.__cause__, exc.__context__,
             *(a for a in getattr(exc, "args", ()) if isinstance(a, BaseException))]
    for nested in inner:
        if isinstance(nested, BaseException) and nested is not exc:
            yield from _causes(nested, depth + 1)


def describe_failure(exc: BaseException, url: str, elapsed: float,
                     proxy: Optional[str] = None) -> str:
    """A mirror request's failure in a few words, naming the host and, for TLS, the
    certificate problem (pure: reads only the exception)."""
    host = urlsplit(url).netloc
    if isinstance(exc, requests.Timeout):
        return f"timeout after {elapsed:.1f}s"
    if isinstance(exc, requests.exceptions.SSLError):
        for cause in _causes(exc):
            if isinstance(cause, ssl.SSLCertVerificationError):
                why = cause.verify_message or cause.reason or "rejected"
                return f"certificate verify failed for host {host}: {why.strip().rstrip('.')}"
        for cause in _causes(exc):
            if isinstance(cause, ssl.SSLError) and cause.reason:
                return f"TLS handshake with host {host} failed: {cause.reason}"
        return f"TLS handshake with host {host} failed"
    if isinstance(exc, requests.exceptions.ProxyError):
        for cause in _causes(exc):
            text = str(cause)
            if text.startswith(_TUNNEL_FAILED):
                # The proxy answered CONNECT with an error: it could not reach the mirror.
                status = text[len(_TUNNEL_FAILED):].strip()
                return f"upstream proxy {proxy} could not connect to {host}: {status}"
        return f"upstream proxy {proxy} failed (connection refused or lost)"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed"
    if isinstance(exc, OSError) and not isinstance(exc, requests.RequestException):
        # Ours, not the mirror's: e.g. ca_file gone since the config was read.
        return f"error {type(exc).__name__}: {str(exc)[:160]}"
    return f"error {type(exc).__name__}"


@dataclass(frozen=True)
class ProbeResult:
    url: str
    # FOUND; MISSING (404, 410 ...); ERROR: the server answered, with 5xx or 429, for this path;
    # FAILED: the host could not be reached (refused, timed out); UNCHANGED: a conditional
    # fetch's 304.
    outcome: str
    detail: str  # e.g. "HEAD 200", "GET 206 after HEAD 405", "timeout after 2.0s"
    elapsed: float
    content: Optional[bytes] = None  # only for fetch()
    validators: Tuple[Tuple[str, str], ...] = ()  # fetch(): ETag / Last-Modified to send back
    retry_after: Optional[float] = None  # seconds a 429 or 503 asked us to wait


_current = threading.local()  # .deadline: the _Deadline of the call this thread is making


class _Deadline:
    """One call's time limit, enforced on its connections. requests' timeouts bound each
    connect and each read, not a whole answer: a mirror that trickles its answer a byte at a
    time would outlast them. When the time is up, the sockets the call reads from are shut
    down, and its blocked read ends at once. Name lookups are waited for until then only
    (see _lookup): the system resolver may take far longer to give up."""

    def __init__(self, seconds: float):
        self.ends = time.monotonic() + seconds
        self.expired = False
        self._sockets: list = []
        self._lock = threading.Lock()

    def __enter__(self) -> _Deadline:
        _current.deadline = self
        _WATCHDOG.watch(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            # A connection goes back to the pool after the call: the watchdog, which still
            # holds this deadline, must not cut it under the next call.
            self._sockets.clear()
        _current.deadline = None

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
        self._due: list = []  # heap of (ends, sequence, _Deadline)
        self._sequence = itertools.count()
        self._changed = threading.Condition()
        self._thread: Optional[threading.Thread] = None

    def watch(self, deadline: _Deadline) -> None:
        with self._changed:
            heapq.heappush(self._due, (deadline.ends, next(self._sequence), deadline))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="probe-deadlines",
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


def _lookup(host: str, port: int, deadline: _Deadline) -> Optional[List[str]]:
    """The addresses of host, in the resolver's order, waited for until the deadline; None
    when host is an address already, or the lookup failed (urllib3 then fails as usual).
    getaddrinfo cannot be interrupted: it runs in a daemon thread of its own, left to end by
    itself (within the resolver's timeouts) when the call stops waiting for it. Lookups are
    made for new connections only; a mirror's connections are kept alive."""
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
        answers = found.get(timeout=max(0.0, deadline.ends - time.monotonic()))
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


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _watched(HTTPConnection)


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _watched(HTTPSConnection)


_WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _MirrorAdapter(HTTPAdapter):
    """An HTTPAdapter whose TLS connections, direct or tunnelled through the upstream proxy,
    go no higher than MAX_TLS_VERSION, and whose connections a call's _Deadline can cut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("ssl_maximum_version", MAX_TLS_VERSION)
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        kwargs.setdefault("ssl_maximum_version", MAX_TLS_VERSION)
        manager = super().proxy_manager_for(proxy, **kwargs)
        manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


class Prober:
    """Probes and fetches with a per-host Session and a hard overall time limit per call.

    ca_file: the PEM bundle https:// mirrors are verified against (None: the system's).
    proxy: 'http://host:port' that every request goes through (None: straight to the mirror).
    """

    def __init__(self, timeout: float, max_document_bytes: int = 8 * 1024 * 1024,
                 ca_file: Optional[str] = None, proxy: Optional[str] = None):
        self.timeout = timeout
        self.max_document_bytes = max_document_bytes
        self.verify = trust_store(ca_file)
        self.proxy = proxy
        self._sessions: Dict[str, requests.Session] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_config(cls, config: Config) -> Prober:
        """The prober a config asks for (its probe_timeout, ca_file and upstream_proxy)."""
        return cls(config.probe_timeout, ca_file=config.ca_file, proxy=config.upstream_proxy)

    def _session(self, url: str) -> requests.Session:
        host = urlsplit(url).netloc
        with self._lock:
            session = self._sessions.get(host)
            if session is None:
                session = requests.Session()
                # Proxy environment variables usually name Squid itself: only upstream_proxy
                # counts. (trust_env also keeps REQUESTS_CA_BUNDLE from changing verify.)
                session.trust_env = False
                session.verify = self.verify
                if self.proxy:
                    session.proxies = {"http": self.proxy, "https": self.proxy}
                session.headers["User-Agent"] = USER_AGENT
                adapter = _MirrorAdapter(pool_connections=1, pool_maxsize=32, max_retries=0)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                self._sessions[host] = session
            return session

    def close(self) -> None:
        with self._lock:
            for session in self._sessions.values():
                session.close()
            self._sessions.clear()

    def __enter__(self) -> Prober:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _failure(self, url: str, exc: Exception, started: float,
                 deadline: _Deadline) -> ProbeResult:
        elapsed = time.monotonic() - started
        if deadline.expired:  # the cut connection's error, not the mirror's
            exc = requests.Timeout()
        return ProbeResult(url, FAILED, describe_failure(exc, url, elapsed, self.proxy), elapsed)

    def _proxy_refusal(self, url: str, response: requests.Response,
                       started: float) -> Optional[ProbeResult]:
        """Through the upstream proxy, an answer the proxy made itself (Squid marks its own
        with X-Squid-Error: ERR_CONNECT_FAIL, ERR_READ_TIMEOUT, ERR_ACCESS_DENIED ...) says
        the mirror was not reached: it fails like a dead mirror, and is no 404 or 5xx of the
        mirror's."""
        error = response.headers.get("X-Squid-Error") if self.proxy else None
        if not error:
            return None
        return ProbeResult(url, FAILED, f"upstream proxy {self.proxy} could not reach "
                           f"{urlsplit(url).netloc}: {response.status_code} {error}",
                           time.monotonic() - started)

    @staticmethod
    def _classify(status: int) -> str:
        if status < 400:
            return FOUND
        if status >= 500 or status == 429:
            return ERROR
        return MISSING

    def _answered(self, url: str, response: requests.Response, detail: str,
                  started: float, **more) -> ProbeResult:
        outcome = self._classify(response.status_code)
        retry_after = (_seconds(response.headers.get("Retry-After"))
                       if response.status_code in (429, 503) else None)
        return ProbeResult(url, outcome, detail, time.monotonic() - started,
                           retry_after=retry_after, **more)

    def probe(self, url: str) -> ProbeResult:
        """Does the mirror answer for url? HEAD first; ranged GET when HEAD is refused. One
        time limit covers both. Only network and HTTP failures are the mirror's: anything else
        is a bug, and raised."""
        started = time.monotonic()
        session = self._session(url)
        with _Deadline(self.timeout) as deadline:
            try:
                response = session.head(url, timeout=self.timeout, allow_redirects=False)
                response.close()
                refused = self._proxy_refusal(url, response, started)
                if refused is not None:
                    return refused
                detail = f"HEAD {response.status_code}"
                if response.status_code in HEAD_REFUSED:
                    left = started + self.timeout - time.monotonic()
                    if left <= 0:
                        raise requests.Timeout()
                    response = session.get(url, timeout=left, allow_redirects=False,
                                           headers={"Range": "bytes=0-0"}, stream=True)
                    response.close()
                    refused = self._proxy_refusal(url, response, started)
                    if refused is not None:
                        return refused
                    detail = f"GET {response.status_code} after {detail}"
            except MIRROR_FAILURES as exc:
                return self._failure(url, exc, started, deadline)
        return self._answered(url, response, detail, started)

    def fetch(self, url: str, validators: Tuple[Tuple[str, str], ...] = ()) -> ProbeResult:
        """GET a small document (mirrorlist, metalink, repomd.xml) within the time limit.
        validators: what an earlier fetch's result carried; a server that supports them then
        answers 304 (UNCHANGED) when the document has not changed."""
        started = time.monotonic()
        conditions = {_CONDITION[name]: value for name, value in validators}
        with _Deadline(self.timeout) as deadline:
            try:
                return self._fetch(url, conditions, validators, started)
            except MIRROR_FAILURES as exc:
                return self._failure(url, exc, started, deadline)

    def _fetch(self, url: str, conditions: Dict[str, str],
               validators: Tuple[Tuple[str, str], ...], started: float) -> ProbeResult:
        with self._session(url).get(url, timeout=self.timeout, stream=True,
                                    headers=conditions) as response:
            refused = self._proxy_refusal(url, response, started)
            if refused is not None:
                return refused
            if response.status_code == 304 and conditions:
                return ProbeResult(url, UNCHANGED, "GET 304 (unchanged)",
                                   time.monotonic() - started, validators=validators)
            if self._classify(response.status_code) != FOUND:
                return self._answered(url, response, f"GET {response.status_code}", started)
            chunks, size = [], 0
            for chunk in response.iter_content(64 * 1024):
                chunks.append(chunk)
                size += len(chunk)
                if size > self.max_document_bytes:
                    return ProbeResult(url, ERROR, f"larger than {self.max_document_bytes} "
                                       "bytes", time.monotonic() - started)
            kept = tuple((name, response.headers[name]) for name in _CONDITION
                         if response.headers.get(name))
            return ProbeResult(url, FOUND, f"GET {response.status_code}",
                               time.monotonic() - started, b"".join(chunks), kept)


def _seconds(retry_after: Optional[str]) -> Optional[float]:
    """A Retry-After header's delay in seconds (delta-seconds or an HTTP date); None if none."""
    if not retry_after:
        return None
    if retry_after.strip().isdigit():
        return float(retry_after.strip())
    try:
        return max(0.0, email.utils.parsedate_to_datetime(retry_after).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
