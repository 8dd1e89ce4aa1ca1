"""The memo: answers shared by every helper process through one diskcache directory.

Whatever goes wrong with the directory (missing, read-only, corrupt, full), the helper keeps
answering: every operation degrades to "no memo" and the problem is logged once a minute, and the
directory is reopened a few seconds later so that the memo comes back by itself once it is fixed.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, TypeVar

import diskcache

from .config import Config
from .lifetimes import Fact

log = logging.getLogger("squid_helper.memo")
T = TypeVar("T")

_REOPEN_AFTER = 5.0
_COMPLAINT_INTERVAL = 60.0
# How often a process looks for a purge made by another (the memo's generation), and how long
# it trusts that a key is absent: this bounds how long a purge or a new answer goes unnoticed.
FRONT_CACHE_SECONDS = 0.5
# The memo's generation is a file whose inode changes with every bump: one stat() tells a
# process that another one purged, found a mirror failing or published a survey. Checked this
# often at most.
GENERATION_FILE = "generation"
GENERATION_CHECK_SECONDS = 0.01
_FRONT_CACHE_MAX = 2048
_TOKENS = itertools.count()


def give_files_to_directory_owner(directory: str) -> None:
    """An operator running `squid-helper resolve`, `purge` or `status` as root must not leave
    memo files (database, WAL, shared memory) that the helpers, running as Squid's user, can
    no longer write: files root created are handed to the owner of the directory."""
    owner = os.stat(directory)
    if owner.st_uid == 0:
        return
    for entry in os.scandir(directory):
        try:
            if entry.stat(follow_symlinks=False).st_uid != owner.st_uid:
                os.chown(entry.path, owner.st_uid, owner.st_gid, follow_symlinks=False)
        except OSError:
            pass


@dataclass(frozen=True)
class Stored:
    """A fact as the memo holds it: the value and the wall-clock time it was learnt. How long
    it stays fresh is the fact's (lifetimes), judged when it is read, so that a new config's
    TTLs apply to what was learnt before."""

    value: Any
    at: float

    def fresh_for(self, fact: Fact, now: float) -> float:
        """Seconds of freshness left at `now` (wall clock); zero or less: stale."""
        return self.at + fact.fresh_for - now


class Memo:
    @classmethod
    def of(cls, config: Config) -> Memo:
        """The memo a configuration names, with its size limit."""
        return cls(config.cache_dir, size_limit=int(config.memo_size_mb) << 20)

    def __init__(self, directory: str, size_limit: int = 1 << 30):
        self.directory = directory
        self.size_limit = size_limit
        self._cache: Optional[diskcache.Cache] = None
        self._broken_since: Optional[float] = None
        self._last_complaint = 0.0
        self._checked_at = 0.0
        self._lock = threading.Lock()
        self._front: Dict[str, Tuple[float, Any]] = {}
        self._generation: Any = None
        self._generation_checked_at = float("-inf")

    # -- plumbing -----------------------------------------------------------------------------
    def _still_there(self) -> bool:
        """False when the memo's database was deleted under us: an open handle would go on
        writing to a ghost file that no other process sees, so it must be reopened."""
        now = time.monotonic()
        if now - self._checked_at < _REOPEN_AFTER:
            return True
        self._checked_at = now
        return os.path.exists(os.path.join(self.directory, diskcache.core.DBNAME))

    def _open(self) -> Optional[diskcache.Cache]:
        if self._cache is not None:
            if self._still_there():
                return self._cache
            log.warning("memo %s was removed; recreating it", self.directory)
            self.close()
        with self._lock:
            if self._cache is not None:
                return self._cache
            if self._broken_since and time.monotonic() - self._broken_since < _REOPEN_AFTER:
                return None
            try:
                os.makedirs(self.directory, exist_ok=True)
                self._cache = diskcache.Cache(
                    self.directory, timeout=2.0, size_limit=self.size_limit,
                    eviction_policy="least-recently-stored", statistics=False,
                    # One SQLite connection per thread: no memory-mapped file and a small page
                    # cache each keep a helper's memory flat however large the memo grows.
                    sqlite_mmap_size=0, sqlite_cache_size=64)
                if os.geteuid() == 0:
                    self._give_files_to_directory_owner()
                if self._broken_since is not None:
                    log.warning("memo %s is usable again", self.directory)
                self._broken_since = None
            except Exception as exc:
                self._fail(exc)
            return self._cache

    def _give_files_to_directory_owner(self) -> None:
        give_files_to_directory_owner(self.directory)

    def _fail(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_complaint > _COMPLAINT_INTERVAL:
            self._last_complaint = now
            log.error("memo %s unusable, answering without it (probing every path): %s: %s",
                      self.directory, type(exc).__name__, exc)
        self._broken_since = now
        cache, self._cache = self._cache, None
        if cache is not None:
            try:
                cache.close()
            except Exception:
                pass

    def _do(self, operation: Callable[[diskcache.Cache], T], default: T) -> T:
        cache = self._open()
        if cache is None:
            return default
        try:
            return operation(cache)
        except diskcache.Timeout:
            return default  # another process holds the database a moment: not a broken memo
        except Exception as exc:
            with self._lock:
                if self._cache is cache:
                    self._fail(exc)
            return default

    def close(self) -> None:
        with self._lock:
            if self._cache is not None:
                self._cache.close()
                self._cache = None

    # -- generic keyed values -----------------------------------------------------------------
    def get(self, key: str) -> Any:
        return self._do(lambda c: c.get(key), None)

    def set(self, key: str, value: Any, expire: Optional[float]) -> bool:
        self._front.pop(key, None)
        return self._do(lambda c: c.set(key, value, expire=expire), False)

    def delete(self, key: str) -> bool:
        self._front.pop(key, None)
        return bool(self._do(lambda c: c.delete(key), False))

    def _check_generation(self, now: float) -> None:
        if now - self._generation_checked_at < GENERATION_CHECK_SECONDS:
            return
        self._generation_checked_at = now
        try:
            stat = os.stat(os.path.join(self.directory, GENERATION_FILE))
            generation: Any = (stat.st_ino, stat.st_mtime_ns)
        except OSError:
            generation = None
        if generation != self._generation:
            self._generation = generation
            self._front.clear()

    def generation(self) -> Any:
        """The memo's generation as this process last saw it (rechecked at most every
        GENERATION_CHECK_SECONDS): it changes when any process purges, finds a mirror failing
        or publishes a survey."""
        self._check_generation(time.monotonic())
        return self._generation

    def get_front(self, key: str) -> Any:
        """get() through an in-process copy, for the per-request hot path.

        A copy of a stored value is kept until some process bumps the memo's generation (a
        purge), which every process notices within FRONT_CACHE_SECONDS; so a hot path costs no
        disk read at all. The absence of a value is rechecked after FRONT_CACHE_SECONDS, since
        another process may publish one at any time. A caller that finds the copy outdated by
        its content (an answer past its TTL) asks refresh() for the stored value."""
        now = time.monotonic()
        self._check_generation(now)
        cached = self._front.get(key)
        if cached is not None and (cached[1] is not None or now - cached[0] < FRONT_CACHE_SECONDS):
            return cached[1]
        return self.refresh(key)

    def refresh(self, key: str) -> Any:
        """The stored value, also replacing the in-process copy."""
        value = self.get(key)
        front = self._front
        if len(front) >= _FRONT_CACHE_MAX:
            # Insertion order is age order: the oldest quarter goes.
            for old_key in list(itertools.islice(front, _FRONT_CACHE_MAX // 4)):
                front.pop(old_key, None)  # worker threads may have dropped it meanwhile
        front.pop(key, None)
        front[key] = (time.monotonic(), value)
        return value

    def bump_generation(self) -> None:
        """Tell every process to drop its in-process copies (after a purge, a mirror found
        dead, a new survey); this one looks again at once."""
        self._front.clear()
        target = os.path.join(self.directory, GENERATION_FILE)
        temporary = f"{target}.{os.getpid()}.{threading.get_ident()}"
        try:
            # A new file each time: its inode and time tell every process, for one stat().
            with open(temporary, "w") as marker:
                marker.write(f"{time.time()}\n")
            os.replace(temporary, target)
        except OSError:
            pass  # no memo directory: no other process to tell either
        self._generation_checked_at = float("-inf")

    def add_to_dict(self, key: str, mapping: Dict[str, Any], expire: Optional[float]) -> bool:
        """Add mapping's new keys to the dict stored under key, atomically across processes.
        Keys already there keep their value, so that what others derived from them stays."""
        def update(cache: diskcache.Cache) -> bool:
            with cache.transact():
                current = cache.get(key) or {}
                if all(k in current for k in mapping):
                    return True
                current.update((k, v) for k, v in mapping.items() if k not in current)
                return cache.set(key, current, expire=expire)
        return self._do(update, False)

    # -- facts (see lifetimes) -----------------------------------------------------------------
    def put(self, fact: Fact, value: Any, at: Optional[float] = None) -> bool:
        """Store value as `fact`, learnt now (or at `at`: a value that replaces an earlier one
        of the same age)."""
        return self.set(fact.key, Stored(value, time.time() if at is None else at),
                        expire=fact.keep_for)

    def put_new(self, fact: Fact, value: Any) -> bool:
        """put() only when the memo does not hold the fact yet (one process wins): True for the
        one that stored it. Without a working memo nobody does."""
        self._front.pop(fact.key, None)
        stored = Stored(value, time.time())
        return bool(self._do(lambda c: c.add(fact.key, stored, expire=fact.keep_for), False))

    def last(self, fact: Fact, front: bool = False) -> Optional[Stored]:
        """The stored fact, fresh or not (for last-known answers). front: through this
        process's copy, refreshed from the shared memo when the copy is no longer fresh,
        since another process may have stored a fresher one meanwhile."""
        if not front:
            stored = self.get(fact.key)
        else:
            stored = self.get_front(fact.key)
            if isinstance(stored, Stored) and stored.fresh_for(fact, time.time()) <= 0:
                stored = self.refresh(fact.key)
        return stored if isinstance(stored, Stored) else None

    def fresh(self, fact: Fact, front: bool = False) -> Optional[Stored]:
        """The stored fact if it is still fresh, else None."""
        stored = self.last(fact, front)
        return stored if stored is not None and stored.fresh_for(fact, time.time()) > 0 else None

    def update(self, fact: Fact, change: Callable[[Any], Any], default: Any) -> Any:
        """Replace the value stored as `fact` (None when absent) by change(value), atomically
        across processes, and return it; `default` without a working memo. The fact counts
        as learnt now and expires with it."""
        def apply(cache: diskcache.Cache) -> Any:
            with cache.transact():
                stored = cache.get(fact.key)
                value = change(stored.value if isinstance(stored, Stored) else None)
                cache.set(fact.key, Stored(value, time.time()), expire=fact.keep_for)
                return value
        self._front.pop(fact.key, None)
        return self._do(apply, default)

    def count(self, fact: Fact) -> int:
        """Add one to the counter stored as `fact` and return it; 0 without a working memo."""
        return self.update(fact, lambda value: (value or 0) + 1, 0)

    # -- cross-process locks ------------------------------------------------------------------
    def try_lock(self, name: str, hold_for: float) -> Optional[str]:
        """Take a named lock shared by all processes, or None when another holder has it.
        Returns the holder's token, which unlock() needs: a lock that expired (hold_for
        seconds, so that a holder that died blocks nobody for long) and was taken by another
        is not released by its first holder. Without a working memo every caller gets the
        lock (no coordination is better than no answer); a memo that is merely busy (another
        process holds the database a moment) gives it to nobody."""
        token = f"{os.getpid()}:{threading.get_ident()}:{next(_TOKENS)}"
        cache = self._open()
        if cache is None:
            return token
        try:
            return token if cache.add(f"lock:{name}", token, expire=hold_for) else None
        except diskcache.Timeout:
            return None
        except Exception as exc:
            with self._lock:
                if self._cache is cache:
                    self._fail(exc)
            return token

    def locked(self, name: str) -> bool:
        """Whether some process holds the named lock now."""
        return self.get(f"lock:{name}") is not None

    def unlock(self, name: str, token: str) -> None:
        def release(cache: diskcache.Cache) -> None:
            with cache.transact():
                if cache.get(f"lock:{name}") == token:
                    cache.delete(f"lock:{name}")
        self._do(release, None)
