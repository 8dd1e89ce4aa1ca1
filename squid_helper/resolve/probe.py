"""Probes of mirrors: does a mirror answer for a path (HEAD, ranged GET fallback), and fetches
of small documents (mirror lists, metalinks, repomd.xml), each within one time limit.

One session per mirror host (httpclient.new_session: ca_file, upstream_proxy, no environment)
keeps connections alive between probes; sessions are shared by the threads of a process.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple
from urllib.parse import urlsplit

import requests

from ..config.settings import Config
from ..httpclient import (
    FAILURES,
    Deadline,
    describe_failure,
    new_session,
    retry_after,
    trust_store,
)
from ..redaction import host_of

FOUND, MISSING, FAILED, ERROR, UNCHANGED = "found", "missing", "failed", "error", "unchanged"
# Statuses with which servers refuse HEAD although they would serve a GET.
HEAD_REFUSED = {403, 405, 501}
# A response's validator -> the request header that sends it back.
_CONDITION = {"ETag": "If-None-Match", "Last-Modified": "If-Modified-Since"}


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


class Prober:
    """Probes and fetches with a per-host Session and a hard overall time limit per call.

    ca_file: the PEM bundle https:// mirrors are verified against (None: the system's).
    proxy: 'http://host:port' that every request goes through (None: straight to the mirror).
    """

    def __init__(self, timeout: float, max_document_bytes: int = 8 * 1024 * 1024,
                 ca_file: Optional[str] = None, proxy: Optional[str] = None):
        self.timeout = timeout
        self.max_document_bytes = max_document_bytes
        self.ca_file = ca_file
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
                session = self._sessions[host] = new_session(self.timeout, self.ca_file,
                                                             self.proxy)
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
                 deadline: Deadline) -> ProbeResult:
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
                           f"{host_of(url)}: {response.status_code} {error}",
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
        wait = (retry_after(response.headers.get("Retry-After"))
                if response.status_code in (429, 503) else None)
        return ProbeResult(url, outcome, detail, time.monotonic() - started,
                           retry_after=wait, **more)

    def probe(self, url: str) -> ProbeResult:
        """Does the mirror answer for url? HEAD first; ranged GET when HEAD is refused. One
        time limit covers both. Only network and HTTP failures are the mirror's: anything else
        is a bug, and raised."""
        started = time.monotonic()
        session = self._session(url)
        with Deadline(self.timeout) as deadline:
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
            except FAILURES as exc:
                return self._failure(url, exc, started, deadline)
        return self._answered(url, response, detail, started)

    def fetch(self, url: str, validators: Tuple[Tuple[str, str], ...] = ()) -> ProbeResult:
        """GET a small document (mirrorlist, metalink, repomd.xml) within the time limit.
        validators: what an earlier fetch's result carried; a server that supports them then
        answers 304 (UNCHANGED) when the document has not changed."""
        started = time.monotonic()
        conditions = {_CONDITION[name]: value for name, value in validators}
        with Deadline(self.timeout) as deadline:
            try:
                return self._fetch(url, conditions, validators, started)
            except FAILURES as exc:
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

