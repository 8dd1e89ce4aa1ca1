"""The fetch log daemon: Squid's logfile_daemon for squid-helper's own access_log line.

Squid writes every transaction to it (squid/fetchlog.py has the protocol and the format), and
it learns from Squid's fetches from the mirrors what the helpers' probes cannot see:

* a failed fetch of a repo file (5xx; a 4xx for a path the helpers verified there; connect
  error or timeout; a transfer cut short): that mirror is shunned for that path, the path's
  memoised answer naming it is forgotten, and the memo's generation bumped, so that every
  helper process answers the next request for it with another mirror. The failure counts
  for the host as a probe's would (health.MirrorHealth.record): several paths failing mark it.
* a complete download: a speed sample for the host (health.record_downloads), by which the
  helpers rank fresh mirrors (selection.by_downloads); and the integrity checker is told.
* every repo request: hits, misses and bytes, per repo, for status and metrics.

Squid must never wait for it: a thread reads Squid's pipe as fast as Squid writes and hands
the lines over through a bounded queue; when the queue is full, lines are dropped (counted,
logged now and then). Nothing is written to stdout, which Squid does not read.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, defaultdict
from typing import BinaryIO, Callable, DefaultDict, Dict, List, Optional, Tuple

from ..config.settings import Config
from ..facts.lifetimes import Lifetimes
from ..facts.memo import Memo
from ..resolve.health import MirrorHealth, host_of
from ..resolve.probe import ERROR, FAILED, ProbeResult
from ..resolve.urls import RepoPath, map_url
from .fetchlog import BadLine, Downloaded, Failed, Fetch, Missing, judge, parse_line, split_message
from .storeid import StoreIdMapper

log = logging.getLogger("squid_helper.fetchlog")

# Told of each repo file Squid fetched from a mirror and stored (a 200 with its whole body):
# the integrity checker. It must return at once (it queues its own work).
Consider = Callable[[RepoPath, str], None]
# Lines waiting for the learner; beyond this Squid's lines are dropped, never Squid blocked.
QUEUE_LINES = 10000
# Counters and speed samples go to the memo this often (failures go at once).
FLUSH_SECONDS = 1.0
# A download this small says more about latency than about speed: no sample.
MIN_SAMPLE_BYTES = 32 * 1024
# Problems that can repeat with every line are logged this often at most.
COMPLAINT_SECONDS = 60.0
_SQUID_COMMANDS = frozenset("LRTOFrb")
_NOTHING = object()  # no line came before it was time to flush


class Complaints:
    """A problem logged at its first occurrence and then at most once per COMPLAINT_SECONDS,
    with how often it happened meanwhile."""

    def __init__(self, what: str, clock: Callable[[], float] = time.monotonic):
        self.what = what
        self.clock = clock
        self.count = 0
        self._unreported = 0
        self._last = float("-inf")

    def add(self, detail: str) -> None:
        self.count += 1
        self._unreported += 1
        now = self.clock()
        if now - self._last >= COMPLAINT_SECONDS:
            log.warning("%s (%d since the last report, %d in all): %s", self.what,
                        self._unreported, self.count, detail)
            self._unreported = 0
            self._last = now


class FetchLearner:
    """Learns from each logged transaction (see the module's docstring)."""

    def __init__(self, config: Config, memo: Memo, consider: Optional[Consider] = None):
        self.config = config
        self.memo = memo
        self.lifetimes = Lifetimes(config)
        self.health = MirrorHealth(memo, self.lifetimes)
        self.mapper = StoreIdMapper(config, memo)
        self.consider = consider
        self.bad_lines = Complaints("log lines not in squid-helper's logformat")
        self.consider_errors = Complaints("the integrity checker failed")
        self._speeds: DefaultDict[str, List[float]] = defaultdict(list)
        self._traffic: DefaultDict[str, Counter] = defaultdict(Counter)
        self._failures: Dict[str, Tuple[int, str]] = {}

    def line(self, text: str) -> None:
        """One L line's text. Never raises: a line that cannot be parsed is counted."""
        try:
            fetch = parse_line(text)
        except BadLine as exc:
            self.bad_lines.add(f"{exc}: {text[:200]!r}")
            return
        self.learn(fetch)

    def _locate(self, fetch: Fetch) -> Optional[Tuple[RepoPath, Optional[str]]]:
        """The repo path, and the mirror base when Squid went to one."""
        if fetch.fetched_url is not None:
            found = self.mapper.locate(fetch.fetched_url)
            if found is not None:
                return found
        found = self.mapper.locate(fetch.client_url)
        if found is not None:
            return found[0], None
        extras = {"myport": str(fetch.local_port)} if fetch.local_port is not None else {}
        mapped = map_url(fetch.client_url, extras, self.config)
        return (mapped, None) if isinstance(mapped, RepoPath) else None

    def learn(self, fetch: Fetch) -> None:
        located = self._locate(fetch)
        if located is None:
            return  # not a repo file: the generic proxy's business
        request, base = located
        traffic = self._traffic[request.repo]
        if fetch.from_cache:
            traffic["hits"] += 1
            traffic["bytes_from_cache"] += fetch.sent_bytes
        elif fetch.server_status is not None or fetch.error is not None:
            traffic["misses"] += 1
            traffic["bytes_fetched"] += fetch.received_bytes or 0
        if base is None or not fetch.direct:
            return
        verdict = judge(fetch)
        if isinstance(verdict, Failed):
            self._failed(request, base, fetch, verdict.reason, verdict.unreachable)
        elif isinstance(verdict, Missing) and self._verified_on(request, base):
            self._failed(request, base, fetch, f"Squid's GET got {verdict.status} for a path "
                         "verified there", unreachable=False)
        elif isinstance(verdict, Downloaded):
            if verdict.received_bytes >= MIN_SAMPLE_BYTES and verdict.seconds > 0:
                self._speeds[host_of(base)].append(verdict.received_bytes / verdict.seconds)
            if self.consider is not None:
                try:
                    self.consider(request, fetch.fetched_url or "")
                except Exception as exc:  # the checker's bug must not stop the learning
                    self.consider_errors.add(f"{type(exc).__name__}: {exc}")

    def _verified_on(self, request: RepoPath, base: str) -> bool:
        answer = self.memo.last(self.lifetimes.answer(request))
        return answer is not None and answer.value.get("base") == base

    def _failed(self, request: RepoPath, base: str, fetch: Fetch, reason: str,
                unreachable: bool) -> None:
        """Shun the mirror for the path, forget the answer that named it, and tell every
        helper process (the memo's generation); count it for the host as a probe's failure."""
        self.memo.shun(self.lifetimes.shunned(request), self.lifetimes.answer(request), base,
                       reason)
        url = fetch.fetched_url or request.on(base)
        self.health.record(ProbeResult(url, FAILED if unreachable else ERROR, reason,
                                       fetch.elapsed_ms / 1000.0))
        host = host_of(base)
        count, _ = self._failures.get(host, (0, ""))
        self._failures[host] = (count + 1, reason)
        log.warning("%s shunned for %s: %s", base, request.key, reason)

    def flush(self) -> None:
        """Counters and speed samples to the memo (added to what other proxies counted)."""
        speeds, self._speeds = self._speeds, defaultdict(list)
        traffic, self._traffic = self._traffic, defaultdict(Counter)
        failures, self._failures = self._failures, {}
        for host, rates in speeds.items():
            self.health.record_downloads(host, rates)
        for repo, counts in traffic.items():
            self.memo.update(self.lifetimes.traffic(repo),
                             lambda known, c=counts: dict(Counter(known or {}) + c), None)
        now = time.time()
        for host, (count, reason) in failures.items():
            self.memo.update(self.lifetimes.fetch_failures(host),
                             lambda known, n=count, r=reason: {
                                 "count": (known or {}).get("count", 0) + n, "last": r,
                                 "at": now}, None)


class FetchLogDaemon:
    """Reads Squid's pipe on the calling thread, learns on another; see the module."""

    def __init__(self, learner: FetchLearner, queue_lines: int = QUEUE_LINES):
        self.learner = learner
        self._lines: queue.Queue = queue.Queue(maxsize=queue_lines)
        self.dropped = Complaints("Squid's log lines dropped: the learner is behind")
        self.unknown = Complaints("messages from Squid with an unknown command letter")
        self._worker = threading.Thread(target=self._learn, name="fetchlog-learner",
                                        daemon=True)

    def run(self, stream: BinaryIO) -> int:
        """Until Squid closes the pipe; returns the exit status (0)."""
        self._worker.start()
        try:
            for raw in stream:
                message = split_message(raw)
                if message.command == "L":
                    try:
                        self._lines.put_nowait(message.text)
                    except queue.Full:
                        self.dropped.add(message.text[:200])
                elif message.command not in _SQUID_COMMANDS:
                    self.unknown.add(repr(raw[:80]))
        finally:
            self._lines.put(None)
            self._worker.join(timeout=5 + FLUSH_SECONDS)
        return 0

    def _learn(self) -> None:
        next_flush = time.monotonic() + FLUSH_SECONDS
        while True:
            try:
                text = self._lines.get(timeout=max(0.0, next_flush - time.monotonic()))
            except queue.Empty:
                text = _NOTHING
            if text is None:
                self._flush()
                return
            if text is not _NOTHING:
                try:
                    self.learner.line(text)
                except Exception:  # a bug of ours: logged, and the next line is learnt
                    log.exception("bug while learning from %r", text[:200])
            if time.monotonic() >= next_flush:
                self._flush()
                next_flush = time.monotonic() + FLUSH_SECONDS

    def _flush(self) -> None:
        try:
            self.learner.flush()
        except Exception:
            log.exception("bug while writing what Squid's fetches showed to the memo")


def drain(stream: BinaryIO) -> int:
    """Read Squid's pipe and forget it (no usable config): Squid must not find the daemon
    dead, which would stop it (a write to the closed pipe is fatal in Squid 5.7)."""
    for _ in stream:
        pass
    return 0
