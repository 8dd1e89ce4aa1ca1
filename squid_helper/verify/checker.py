"""The integrity check: Squid's copy of a repo file, read back and compared with the repo's
metadata; a copy that disagrees is removed at once, and its mirror is not answered again for
that path.

Who calls it: whatever learns that Squid fetched a repo file from a mirror and stored it (the
fetch-report daemon, for each such fetch) calls consider(request, fetched_url). That only
queues the file; one worker thread checks the files in turn, so the caller never waits:

1. What the file must be: the repo's repomd.xml and primary metadata, read through Squid with
   the repo URL like any client's (the helpers answer it, so it is the metadata that the
   freshness rules establish), parsed once per repomd.xml revision (checksums.catalogue).
2. What Squid holds: the file's repo URL with `Cache-Control: only-if-cached`, which maps to
   the same store key and is answered from the cache alone (no mirror is asked; 504 when the
   copy is gone), hashed as it is read.
3. A disagreement, confirmed against metadata read again (a push may have changed it): PURGE
   of the repo URL (as `squidclient -m PURGE` sends it; squid.conf allows it from this host);
   the mirror's base shunned for the path (Lifetimes.shunned: no answer goes to it for that
   path); one integrity failure counted for the host (a fact for status and metrics), and the
   host marked unhealthy through MirrorHealth as one that cannot be reached is (on probation
   after unhealthy_ttl); the path's memoised answer dropped and the memo's generation bumped,
   so that every helper works the answer out again; one log line with both checksums.

Metadata that cannot be had or parsed means no verification for that repo (logged once, until
it can be had again), never a purge. What is not a package or checksum-named repodata
(repomd.xml, the repo root, other files) is not judged: nothing in the repo vouches for it.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Set, Tuple

from ..config.settings import Config
from ..facts.lifetimes import Lifetimes
from ..facts.memo import Memo
from ..httpclient import FAILURES, describe_failure, new_session
from ..ops.purge import purge_from_squid
from ..resolve.health import MirrorHealth, host_of
from ..resolve.probe import FAILED, ProbeResult
from ..resolve.urls import REPOMD_PATH, RepoPath, canonical_path, virtual_host
from .checksums import Catalogue, Expected, catalogue, disagreement
from .repodata import (
    Package,
    RepodataError,
    RepoFile,
    parse_primary,
    parse_repomd,
    primary_of,
)

log = logging.getLogger("squid_helper.integrity")

# What check() found, for the counts and the tests.
GOOD, CORRUPT, NOT_CACHED, NOT_JUDGED, UNLISTED, UNVERIFIABLE = (
    "good", "corrupt", "not-cached", "not-judged", "unlisted", "unverifiable")
QUEUE_SIZE = 1024  # files waiting to be checked; more are dropped (counted, logged)
OVERFLOW_LOG_INTERVAL = 60.0  # seconds between two log lines about dropped files
MAX_CATALOGUES = 8  # repo trees whose parsed metadata is kept (a big primary: tens of MB)
# A file the kept metadata does not list makes it be read again, at most this often: a push
# since, or a file that is in no metadata at all (then it stays unjudged).
UNLISTED_REREAD = 5.0
_CHUNK = 1 << 16
_STOP = object()


@dataclass(frozen=True)
class Copy:
    """What Squid answered for one URL: the status, and for a 200 the bytes' size and digest
    (and the bytes themselves when asked to keep them)."""

    status: int
    size: int = 0
    digest: str = ""
    content: Optional[bytes] = None
    problem: Optional[str] = None  # why there is no answer at all


# What marks the check's own requests to Squid (squid.conf.in's helper_checks acl).
CHECK_HEADER, CHECK_HEADER_VALUE = "X-Squid-Helper", "integrity-check"


class SquidReader:
    """Reads repo URLs through Squid, hashing what comes back, and purges them."""

    def __init__(self, proxy: str, timeout: float):
        self.proxy = proxy
        self.timeout = timeout
        self.session = new_session((10, timeout), proxy=f"http://{proxy}", pool_size=1)
        # squid.conf leaves these reads out of access.log and the fetch reports (helper_checks)
        self.session.headers[CHECK_HEADER] = CHECK_HEADER_VALUE

    def read(self, url: str, algorithm: str = "sha256", cache_only: bool = False,
             keep: bool = False) -> Copy:
        headers = {"Cache-Control": "only-if-cached"} if cache_only else {}
        digest = hashlib.new(algorithm)
        size = 0
        kept = []
        started = time.monotonic()
        try:
            with self.session.get(url, headers=headers, stream=True,
                                  allow_redirects=False) as response:
                if response.status_code != 200:
                    return Copy(response.status_code)
                for chunk in response.iter_content(_CHUNK):
                    size += len(chunk)
                    digest.update(chunk)
                    if keep:
                        kept.append(chunk)
        except FAILURES as exc:
            return Copy(0, problem=f"{url}: " + describe_failure(
                exc, url, time.monotonic() - started, f"{self.proxy}", proxy_role="proxy"))
        return Copy(200, size, digest.hexdigest(), b"".join(kept) if keep else None)

    def purge(self, url: str) -> Tuple[bool, str]:
        result = purge_from_squid(url, self.proxy, self.timeout)
        return result.ok, result.message

    def release(self) -> None:
        """Close the connections kept open to Squid (the session opens new ones when asked)."""
        for adapter in self.session.adapters.values():
            adapter.close()

    def close(self) -> None:
        self.session.close()


def mirror_base(fetched_url: str, request: RepoPath) -> Optional[str]:
    """The mirror's base URL, from the URL Squid fetched the file from (in whichever spelling
    of the path it used); None when that URL does not end with the path."""
    depth = request.path.count("/") + 1
    head, *tail = fetched_url.rsplit("/", depth)
    if len(tail) != depth or "://" not in head:
        return None
    try:
        if canonical_path("/".join(tail)) != request.path:
            return None
    except UnicodeDecodeError:
        return None
    return head + "/"


class IntegrityChecker:
    """Checks Squid's copies of the repo files it is told about, in a thread of its own."""

    def __init__(self, config: Config, memo: Memo, proxy: str, timeout: float = 60.0,
                 queue_size: int = QUEUE_SIZE, reader: Optional[SquidReader] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.memo = memo
        self.lifetimes = Lifetimes(config)
        self.health = MirrorHealth(memo, self.lifetimes)
        self.reader = reader or SquidReader(proxy, timeout)
        self.clock = clock
        self.counts: Counter = Counter()  # check() verdicts, and "dropped"
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._catalogues: OrderedDict[str, Tuple[Catalogue, float]] = OrderedDict()
        self._unverifiable: Set[str] = set()  # trees whose metadata failed (logged once)
        self._dropped_since_log = 0
        self._overflow_logged_at = float("-inf")
        self._worker = threading.Thread(target=self._run, name="integrity", daemon=True)
        self._worker.start()

    # -- the caller's side -------------------------------------------------------------------
    def consider(self, request: RepoPath, fetched_url: str) -> None:
        """Queue one file Squid fetched from fetched_url and stored; never blocks."""
        try:
            self._queue.put_nowait((request, fetched_url))
        except queue.Full:
            self.counts["dropped"] += 1
            self._dropped_since_log += 1
            now = self.clock()
            if now - self._overflow_logged_at >= OVERFLOW_LOG_INTERVAL:
                log.warning("integrity: %d files not checked (the queue of %d is full: files "
                            "arrive faster than Squid's copies can be read back)",
                            self._dropped_since_log, self._queue.maxsize)
                self._overflow_logged_at = now
                self._dropped_since_log = 0

    def wait_idle(self, timeout: float) -> bool:
        """Whether every file queued so far was checked within timeout seconds."""
        deadline = time.monotonic() + timeout  # a real wait, whatever clock judges intervals
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._queue.all_tasks_done.wait(remaining)
        return True

    def close(self, finish: bool = True, timeout: float = 30.0) -> None:
        """Stop the worker: after the queued files (finish) or after the current one."""
        if not finish:
            try:
                while True:
                    self._queue.get_nowait()
                    self._queue.task_done()
            except queue.Empty:
                pass
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:  # the worker is stuck on one file: it is a daemon thread
            log.warning("integrity: the check did not get through its queue in %gs", timeout)
        self._worker.join(timeout)
        self.reader.close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                request, fetched_url = item
                self.counts[self.check(request, fetched_url)] += 1
            except Exception:  # a bug: this file goes unchecked, the next ones do not
                log.exception("integrity: bug while checking %s", item)
            finally:
                self._queue.task_done()
            if self._queue.empty():
                # Nothing more to read: this side closes its connections to Squid, so that
                # Squid, stopping, leaves no TIME_WAIT on its own port (serve's port would
                # stay taken for a minute after it stopped).
                self.reader.release()

    # -- the check ---------------------------------------------------------------------------
    def repo_url(self, request: RepoPath) -> str:
        return f"http://{virtual_host(self.config)}/{request.key}"

    def check(self, request: RepoPath, fetched_url: str) -> str:
        """Check one file now (the worker's job); returns the verdict."""
        if not request.in_snapshot:
            return NOT_JUDGED
        known = self._catalogue(request)
        if known is None:
            return UNVERIFIABLE
        expected = known.expected(request.path)
        if expected is None:
            if not known.packages_known:
                return UNVERIFIABLE
            log.debug("integrity: %s is in no metadata of %s", request.path, request.triple)
            return UNLISTED
        copy = self.reader.read(self.repo_url(request), expected.algorithm, cache_only=True)
        if copy.status != 200:
            log.debug("integrity: %s not checked: %s", request.key,
                      copy.problem or f"Squid answered {copy.status} (not in its cache)")
            return NOT_CACHED if copy.problem is None else UNVERIFIABLE
        why = disagreement(expected, copy.size, copy.digest)
        if why is None:
            return GOOD
        # Before anything is removed: does the repo's current metadata still say so? (A push
        # may have replaced a package under its name.)
        current = self._catalogue(request, reread=True)
        if current is None:
            return UNVERIFIABLE
        if current.revision != known.revision:
            expected = current.expected(request.path)
            why = None if expected is None else disagreement(expected, copy.size, copy.digest)
            if why is None:
                return GOOD if expected is not None else UNLISTED
        self._condemn(request, fetched_url, expected, copy, why)
        return CORRUPT

    def _condemn(self, request: RepoPath, fetched_url: str, expected: Expected, copy: Copy,
                 why: str) -> None:
        url = self.repo_url(request)
        purged, purge_note = self.reader.purge(url)
        host = host_of(fetched_url)
        base = mirror_base(fetched_url, request)
        reason = f"its copy of {request.path} disagreed with the repo's metadata ({why})"
        if base is not None:
            self.memo.shun(self.lifetimes.shunned(request), self.lifetimes.answer(request),
                           base, reason)

        def counted(known: Optional[Dict]) -> Dict:
            count = known.get("count", 0) if isinstance(known, dict) else 0
            return {"count": count + 1, "path": request.key, "reason": why}

        self.memo.update(self.lifetimes.integrity_failures(host), counted, {})
        # The host is marked unhealthy at once, as for a mirror that cannot be reached (the
        # rules are MirrorHealth's, not repeated here): unlike a 5xx, which a client can
        # provoke with a path of its choosing, no client can make a mirror's bytes disagree
        # with the repo's checksums, and every file of a mirror that corrupts one is suspect.
        # Past unhealthy_ttl it is on probation, and this path stays shunned.
        self.health.record(ProbeResult(fetched_url, FAILED, f"its copy of {request.path} "
                                       "disagreed with the repo's metadata", 0.0))
        if base is None:  # else shun() dropped it
            self.memo.forget(self.lifetimes.answer(request))
        log.warning("integrity: Squid's copy of %s from %s is not the repo's: %s %s, %d bytes; "
                    "the metadata says %s %s, %s bytes; %s (%s)%s", request.key, fetched_url,
                    expected.algorithm, copy.digest, copy.size, expected.algorithm,
                    expected.digest, expected.size if expected.size is not None else "?",
                    "purged from Squid" if purged else "NOT purged from Squid", purge_note,
                    f"; {base} shunned for this path" if base else
                    "; the mirror's base is not known: not shunned")

    # -- the metadata ------------------------------------------------------------------------
    def _catalogue(self, request: RepoPath, reread: bool = False) -> Optional[Catalogue]:
        """The catalogue of the repo's current metadata, read again when it is older than
        refresh_interval, when it does not list the path (at most every UNLISTED_REREAD s), or
        when asked; None when the metadata cannot be had or parsed."""
        triple = request.triple
        now = self.clock()
        kept = self._catalogues.get(triple)
        if kept is not None and not reread:
            known, read_at = kept
            age = now - read_at
            if age < self.config.refresh_interval and (
                    known.expected(request.path) is not None or age < UNLISTED_REREAD):
                return known
        base = f"http://{virtual_host(self.config)}/{triple}/"
        try:
            found = self._read_metadata(base, kept[0] if kept is not None else None, triple)
        except RepodataError as exc:
            self._catalogues.pop(triple, None)
            self._cannot_verify(triple, f"no verification for {triple}: {exc}")
            return None
        if triple in self._unverifiable and found.packages_known:
            self._unverifiable.discard(triple)
            log.warning("integrity: %s can be verified again", triple)
        self._catalogues[triple] = (found, now)
        self._catalogues.move_to_end(triple)
        while len(self._catalogues) > MAX_CATALOGUES:
            self._catalogues.popitem(last=False)
        return found

    def _cannot_verify(self, triple: str, message: str) -> None:
        if triple not in self._unverifiable:
            self._unverifiable.add(triple)
            log.warning("integrity: %s", message)

    def _read_metadata(self, base: str, known: Optional[Catalogue], triple: str) -> Catalogue:
        repomd = self.reader.read(base + REPOMD_PATH, keep=True)
        if repomd.content is None:
            raise RepodataError(f"{base}{REPOMD_PATH} cannot be read through "
                                f"{self.reader.proxy}: " + (repomd.problem or
                                                            f"HTTP {repomd.status}"))
        if known is not None and known.revision == repomd.digest and known.packages_known:
            return known  # unchanged: the parsed primary is kept
        metadata = parse_repomd(repomd.content)
        try:
            packages = self._read_primary(base, primary_of(metadata))
        except RepodataError as exc:
            # The metadata files can still be judged, the primary among them: a copy of it
            # that disagrees with repomd.xml is purged like any other.
            self._cannot_verify(triple, f"no verification of {triple}'s packages: {exc}")
            packages = None
        return catalogue(repomd.digest, metadata, packages)

    def _read_primary(self, base: str, primary: RepoFile) -> List[Package]:
        algorithm = primary.checksum[0] if primary.checksum else "sha256"
        if algorithm not in hashlib.algorithms_available:
            raise RepodataError(f"repomd.xml names the primary metadata's checksum as "
                                f"{algorithm!r}, which this Python cannot compute")
        copy = self.reader.read(base + primary.path, algorithm, keep=True)
        if copy.content is None:
            raise RepodataError(f"{base}{primary.path} cannot be read through "
                                f"{self.reader.proxy}: " + (copy.problem or
                                                            f"HTTP {copy.status}"))
        if primary.checksum is not None:
            why = disagreement(Expected(primary.size, *primary.checksum), copy.size,
                               copy.digest)
            if why is not None:
                raise RepodataError(f"Squid's copy of the primary metadata {primary.path} is "
                                    f"not the one repomd.xml names ({why})")
        return parse_primary(copy.content)
