"""The memo's vocabulary: which key holds which fact, and how long each fact holds (pure).

Every fact the helper processes share goes into the memo under a key made here, with two
durations decided here and nowhere else:

* fresh_for: how long the fact may be used as it is (an answer's TTL). The memo stores when a
  fact was learnt beside its value; every reader, in any process, judges its freshness by the
  rule here, with the TTLs of the config it runs (a shorter TTL applies to what is known).
* keep_for: how long the memo keeps the fact at all. Past its freshness a fact is still worth
  having as the last-known answer or mirror list, for when nothing fresher can be had.

The memo's in-process copy and the helper loop's reply cache reuse a fact until it stops being
fresh and no longer, and forget everything when the memo's generation changes (a purge, a mirror
found dead): that is the one model of "how long an answer holds".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from ..config.settings import Config
from ..resolve.urls import RepoPath

# A host is taken out for its errors only when several distinct paths failed within a window:
# one path that breaks (or that a client makes break) is that path's problem, not the host's.
HOST_ERROR_PATHS = 3
HOST_ERROR_WINDOW = 60.0
# A Retry-After longer than this is not taken at its word.
MAX_BACKOFF = 600.0
# How long a host that failed is remembered, at least, when it was not heard from since.
PROBATION = 3600.0
# How often the mirrors in use are looked at (watch.py), by one helper process at a time.
WATCH = 5.0
# base URL -> "repo/releasever/arch" for every mirror a list ever named; the store_id helper
# uses it to give every mirror's copy of a path the same cache key.
BASE_INDEX_KEY = "base-index"


@dataclass(frozen=True)
class Fact:
    """Where one fact lives in the memo and how long it holds."""

    key: str
    fresh_for: float  # seconds from when it is stored
    keep_for: Optional[float]  # seconds the memo keeps it; None: until evicted


class Lifetimes:
    """The facts of one configuration, each with its key and its lifetimes."""

    def __init__(self, config: Config):
        self.config = config

    # -- answers for one path -----------------------------------------------------------------
    def answer(self, request: RepoPath) -> Fact:
        """A verified mirror for one path; repomd.xml (and the repo root, whose listing
        changes with it) follows the repodata, so it holds for metadata_ttl, everything else
        (immutable files) for path_ttl."""
        ttl = self.config.metadata_ttl if request.follows_repodata else self.config.path_ttl
        return Fact(ANSWERS.key(request.key), ttl, self.config.last_known_ttl)

    def miss(self, request: RepoPath) -> Fact:
        """Every healthy mirror answered 404 for this path."""
        ttl = max(self.config.negative_ttl, 1.0)
        return Fact(MISSES.key(request.key), self.config.negative_ttl, ttl)

    def shunned(self, request: RepoPath) -> Fact:
        """Mirrors that must not answer for this path, whatever a probe says: base URL ->
        why (Squid's own fetch from it failed, or its bytes disagreed with the repo's
        checksums). A HEAD that succeeds does not clear it; it ends with unhealthy_ttl."""
        ttl = self.config.unhealthy_ttl
        return Fact(SHUNNED.key(request.key), ttl, ttl)

    # -- per repo (releasever, arch) ----------------------------------------------------------
    def mirror_list(self, request: RepoPath) -> Fact:
        """A fetched mirrorlist or metalink. A metalink names the current repomd.xml too, so it
        holds no longer than a repomd.xml answer: the expected hashes follow the repodata."""
        ttl = self.config.mirrorlist_ttl
        if self.config.repos[request.repo].kind == "metalink":
            ttl = min(ttl, self.config.metadata_ttl)
        return Fact(MIRROR_LISTS.key(request.triple), ttl, self.config.last_known_ttl)

    def source_retry(self, triple: str) -> Fact:
        """A mirror list source that failed is not asked again for this long."""
        pause = min(self.config.unhealthy_ttl, self.config.mirrorlist_ttl)
        return Fact(SOURCE_RETRIES.key(triple), pause, pause)

    def refresh_check(self, triple: str) -> Fact:
        """A client asked for fresh metadata (no-cache) and the repo's freshness was checked
        again: not again for refresh_interval."""
        pause = self.config.refresh_interval
        return Fact(REFRESH_CHECKS.key(triple), pause, pause)

    def push_check(self, triple: str) -> Fact:
        """A mirror's repomd.xml was newer than the metalink's and the metalink was fetched
        again: not again for refresh_interval."""
        pause = self.config.refresh_interval
        return Fact(PUSH_CHECKS.key(triple), pause, pause)

    def survey(self, triple: str) -> Fact:
        """Which mirrors hold the current repodata: as long as a repomd.xml answer."""
        return Fact(SURVEYS.key(triple), self.config.metadata_ttl, self.config.last_known_ttl)

    # -- per mirror host ----------------------------------------------------------------------
    def unhealthy(self, host: str) -> Fact:
        """A host found failing: skipped while fresh; after that, until it answers again, on
        probation (probed before it is trusted with an unprobed or memoised answer)."""
        return Fact(UNHEALTHY_MARKS.key(host), self.config.unhealthy_ttl,
                    max(self.config.unhealthy_ttl * 10, PROBATION))

    def probe_budget(self, host: str, second: int) -> Fact:
        """The probes sent to one mirror host in one second, by every helper process."""
        return Fact(PROBE_BUDGETS.key(f"{host}:{second}"), 1.0, 2.0)

    def host_errors(self, host: str) -> Fact:
        """The paths for which the host recently answered 5xx/429 (path -> when)."""
        return Fact(HOST_ERRORS.key(host), HOST_ERROR_WINDOW, HOST_ERROR_WINDOW)

    def backoff(self, host: str) -> Fact:
        """The host asked us to wait (429/503 with Retry-After): until when."""
        return Fact(BACKOFFS.key(host), MAX_BACKOFF, MAX_BACKOFF)

    def watched(self, base: str) -> Fact:
        """A helper process looked at this mirror's repomd.xml (watch.py) just now."""
        return Fact(WATCHED.key(base), WATCH, WATCH)

    def latency(self, host: str) -> Fact:
        """How fast the mirror answered lately: worth keeping as long as a last-known answer."""
        return Fact(LATENCIES.key(host), self.config.last_known_ttl, self.config.last_known_ttl)

    def last_probe(self, host: str) -> Fact:
        """The latest answer the helpers got from the host, of any kind (probelog), for
        `squid-helper status`: kept as long as its latency."""
        return Fact(LAST_PROBES.key(host), self.config.last_known_ttl,
                    self.config.last_known_ttl)

    def purged(self, request: RepoPath) -> Tuple[Fact, ...]:
        """What a purge of one path forgets: its answer and its "no mirror has it". (A mirror
        shunned for it stays shunned: a purge is no reason to trust its bytes again.)"""
        return (self.answer(request), self.miss(request))

    # -- the memo's own bookkeeping -----------------------------------------------------------
    def base_index(self) -> Fact:
        """Every mirror base a list ever named -> its repo tree (BASE_INDEX_KEY), kept as long
        as a last-known answer after the last base was added."""
        return Fact(BASE_INDEX_KEY, self.config.last_known_ttl, self.config.last_known_ttl)

    def base_index_version(self) -> Fact:
        """A token that changes with every base added to the index: a reader that holds a copy
        of the index reads this, not the index, to know whether its copy is current."""
        return Fact(BASE_INDEX_VERSION_KEY, self.config.last_known_ttl,
                    self.config.last_known_ttl)

    # -- what Squid's copies showed (verify/) -------------------------------------------------
    def integrity_failures(self, host: str) -> Fact:
        """Files from this host whose bytes disagreed with the repo's checksums, for status and
        metrics: {"count", "path" (the latest), "reason"}; kept as long as a last-known
        answer. (Whether the host is still used is health's to judge: see verify/checker.)"""
        return Fact(INTEGRITY_FAILURES.key(host), self.config.last_known_ttl,
                    self.config.last_known_ttl)

    # -- what Squid's own fetches showed (squid/fetchlog.py) -----------------------------------
    def throughput(self, host: str) -> Fact:
        """How fast Squid's downloads from the host went lately, in bytes/s: {"rate": the
        recent moving average, "usual": a slow one, "samples": how many}. Kept as long as
        its latency."""
        return Fact(THROUGHPUTS.key(host), self.config.last_known_ttl,
                    self.config.last_known_ttl)

    def fetch_failures(self, host: str) -> Fact:
        """Squid's failed fetches from the host: {"count", "last" (why), "at"}, for status;
        forgotten a while after the last one."""
        return Fact(FETCH_FAILURES.key(host), self.config.last_known_ttl,
                    self.config.last_known_ttl)

    def traffic(self, repo: str) -> Fact:
        """What Squid did for the repo's clients: {"hits", "misses", "bytes_from_cache",
        "bytes_fetched"} since the memo last lost it (counters, added to by every proxy)."""
        return Fact(TRAFFIC.key(repo), self.config.last_known_ttl, None)


def lock(name: str, hold_for: float) -> Fact:
    """A cross-process lock (memo.Memo.try_lock): held for hold_for seconds at most, so that a
    holder that died blocks nobody for long."""
    return Fact(LOCKS.key(name), hold_for, hold_for)


# -- kinds of facts: their keys, and reading them back -----------------------------------------
@dataclass(frozen=True)
class Kind:
    """All facts of one kind: their keys are the prefix and a name (a host, a mirror base, a
    repo tree `repo/releasever/arch`, or a tree and a path). `squid-helper status` lists a kind
    by its prefix (memo.Memo.facts, memo.Memo.trees)."""

    prefix: str

    def key(self, name: str) -> str:
        return self.prefix + name

    def name_of(self, key: str) -> Optional[str]:
        """The name in one of this kind's keys (None: another kind's key)."""
        return key[len(self.prefix):] if key.startswith(self.prefix) else None


# Per path (the name: repo/releasever/arch/path; counted per tree, the first TREE_PARTS parts)
ANSWERS = Kind("path:")
MISSES = Kind("miss:")
SHUNNED = Kind("shunned:")
TREE_PARTS = 3
# Per repo tree (the name: repo/releasever/arch)
MIRROR_LISTS = Kind("mirrors:")
SOURCE_RETRIES = Kind("mirrors-retry:")
REFRESH_CHECKS = Kind("refresh-check:")
PUSH_CHECKS = Kind("push-check:")
SURVEYS = Kind("survey:")
# Per mirror host (the name: host[:port]), or base URL for WATCHED
UNHEALTHY_MARKS = Kind("health:")
PROBE_BUDGETS = Kind("probes:")
HOST_ERRORS = Kind("errors:")
BACKOFFS = Kind("backoff:")
WATCHED = Kind("watched:")
LATENCIES = Kind("latency:")
LAST_PROBES = Kind("last-probe:")
INTEGRITY_FAILURES = Kind("integrity:")
THROUGHPUTS = Kind("throughput:")
FETCH_FAILURES = Kind("fetch-failures:")
# Per repo (the name: the repo)
TRAFFIC = Kind("traffic:")
# Named cross-process locks (lock() above)
LOCKS = Kind("lock:")
# The base index's version token (Lifetimes.base_index_version)
BASE_INDEX_VERSION_KEY = "base-index-version"
