"""HTTP I/O towards mirrors: probe a path (HEAD, ranged GET fallback) and fetch small documents.

One requests.Session per mirror host keeps connections alive between probes; sessions are
shared by the threads of a process.
"""

from __future__ import annotations

import email.utils
import threading
import time
from dataclasses import dataclass
from typing import Dict, Optional, Tuple
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from . import __version__

FOUND, MISSING, FAILED, ERROR, UNCHANGED = "found", "missing", "failed", "error", "unchanged"
# Statuses with which servers refuse HEAD although they would serve a GET.
HEAD_REFUSED = {403, 405, 501}
USER_AGENT = f"squid-helper/{__version__}"
# What a mirror's failure looks like; any other exception in a probe is a bug of ours.
MIRROR_FAILURES = (requests.RequestException, OSError)
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
    """Probes and fetches with a per-host Session and a hard overall time limit per call."""

    def __init__(self, timeout: float, max_document_bytes: int = 8 * 1024 * 1024):
        self.timeout = timeout
        self.max_document_bytes = max_document_bytes
        self._sessions: Dict[str, requests.Session] = {}
        self._lock = threading.Lock()

    def _session(self, url: str) -> requests.Session:
        host = urlsplit(url).netloc
        with self._lock:
            session = self._sessions.get(host)
            if session is None:
                session = requests.Session()
                session.trust_env = False  # never route probes through a proxy (Squid itself)
                session.headers["User-Agent"] = USER_AGENT
                adapter = HTTPAdapter(pool_connections=1, pool_maxsize=32, max_retries=0)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                self._sessions[host] = session
            return session

    def close(self) -> None:
        with self._lock:
            for session in self._sessions.values():
                session.close()
            self._sessions.clear()

    def _failure(self, url: str, exc: Exception, started: float) -> ProbeResult:
        elapsed = time.monotonic() - started
        if isinstance(exc, requests.Timeout):
            detail = f"timeout after {elapsed:.1f}s"
        elif isinstance(exc, requests.ConnectionError):
            detail = "connection failed"
        else:
            detail = f"error {type(exc).__name__}"
        return ProbeResult(url, FAILED, detail, elapsed)

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
        deadline = started + self.timeout
        session = self._session(url)
        try:
            response = session.head(url, timeout=self.timeout, allow_redirects=False)
            response.close()
            detail = f"HEAD {response.status_code}"
            if response.status_code in HEAD_REFUSED:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise requests.Timeout()
                response = session.get(url, timeout=left, allow_redirects=False,
                                       headers={"Range": "bytes=0-0"}, stream=True)
                response.close()
                detail = f"GET {response.status_code} after {detail}"
        except MIRROR_FAILURES as exc:
            return self._failure(url, exc, started)
        return self._answered(url, response, detail, started)

    def fetch(self, url: str, validators: Tuple[Tuple[str, str], ...] = ()) -> ProbeResult:
        """GET a small document (mirrorlist, metalink, repomd.xml) within the time limit.
        validators: what an earlier fetch's result carried; a server that supports them then
        answers 304 (UNCHANGED) when the document has not changed."""
        started = time.monotonic()
        deadline = started + self.timeout
        conditions = {_CONDITION[name]: value for name, value in validators}
        try:
            with self._session(url).get(url, timeout=self.timeout, stream=True,
                                        headers=conditions) as response:
                if response.status_code == 304 and conditions:
                    return ProbeResult(url, UNCHANGED, "GET 304 (unchanged)",
                                       time.monotonic() - started, validators=validators)
                if self._classify(response.status_code) != FOUND:
                    return self._answered(url, response, f"GET {response.status_code}",
                                          started)
                chunks, size = [], 0
                for chunk in response.iter_content(64 * 1024):
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > self.max_document_bytes:
                        return ProbeResult(url, ERROR, f"larger than {self.max_document_bytes} "
                                           "bytes", time.monotonic() - started)
                    if time.monotonic() > deadline:
                        raise requests.Timeout()
                kept = tuple((name, response.headers[name]) for name in _CONDITION
                             if response.headers.get(name))
                return ProbeResult(url, FOUND, f"GET {response.status_code}",
                                   time.monotonic() - started, b"".join(chunks), kept)
        except MIRROR_FAILURES as exc:
            return self._failure(url, exc, started)


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
