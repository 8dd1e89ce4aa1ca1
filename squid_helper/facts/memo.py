"""The memo: answers shared by every helper process, in one diskcache directory or, for a fleet
of proxies, in one Redis database (memo: redis://... in repos.yaml; stores.py).

Whatever goes wrong with the store, the helper keeps answering. A broken directory (missing,
read-only, corrupt, full) degrades every operation to "no memo": the problem is logged once a
minute, and the directory is reopened a few seconds later so that the memo comes back by itself
once it is fixed. An unreachable Redis hands over to the local directory: the switch is logged
once, and Redis is used again as soon as it answers.

Operators read the same facts through Memo.reader(): Redis when the config names one, else the
directory read-only (stores.DiskReader); a store that cannot be read is said, not degraded.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

from ..config.settings import Config
from ..redaction import redacted
from .lifetimes import LOCKS, TREE_PARTS, Fact, Kind, lock
from .stores import (
    GENERATION_FILE,
    DiskReader,
    DiskStore,
    MemoUnreadable,
    RedisStore,
    Store,
)

log = logging.getLogger("squid_helper.memo")
T = TypeVar("T")

_COMPLAINT_INTERVAL = 60.0
# How often a process looks for a purge made by another (the memo's generation), and how long
# it trusts that a key is absent: this bounds how long a purge or a new answer goes unnoticed.
FRONT_CACHE_SECONDS = 0.5
# The diskcache store's generation is one stat() (stores.GENERATION_FILE), checked this often at
# most; Redis's costs a round trip and is checked less often (RedisStore.generation_interval).
GENERATION_CHECK_SECONDS = DiskStore.generation_interval
__all__ = ["FRONT_CACHE_SECONDS", "GENERATION_CHECK_SECONDS", "GENERATION_FILE", "Memo",
           "MemoUnreadable", "Stored"]
_FRONT_CACHE_MAX = 2048
_TOKENS = itertools.count()
# Lock tokens name the host too: with a shared memo, holders on two proxies may have one pid.
_HOST = socket.gethostname()
_DEFAULT = object()


@dataclass(frozen=True)
class Stored:
    """A fact as the memo holds it: the value and the wall-clock time it was learnt. How long
    it stays fresh is the fact's (lifetimes), judged when it is read, so that a new config's
    TTLs apply to what was learnt before."""

    value: Any
    at: float

    def fresh_for(self, fact: Fact, now: float) -> float:
        """Seconds of freshness left at `now` (wall clock); zero or less: stale."""
        return self.fresh_left(fact.fresh_for, now)

    def fresh_left(self, ttl: float, now: float) -> float:
        """Seconds left at `now` of a freshness of `ttl` seconds; zero or less: stale."""
        return self.at + ttl - now


class _StoreState:
    """A store and how it fares: broken since when, when it was last complained about."""

    def __init__(self, store: Store, shared: bool):
        self.store = store
        self.shared = shared  # a fleet's Redis, whose fallback is the local directory
        self.broken_since: Optional[float] = None
        self.last_complaint = float("-inf")
        self.complained = False  # this outage was logged: its end will be too


class Memo:
    @classmethod
    def of(cls, config: Config) -> Memo:
        """The memo a configuration names, with its size limit: the memo directory, behind a
        fleet's Redis when `memo:` names one."""
        return cls(config.cache_dir, size_limit=int(config.memo_size_mb) << 20,
                   shared=config.memo)

    def __init__(self, directory: str, size_limit: int = 1 << 30,
                 shared: Optional[str] = None, clock: Callable[[], float] = time.time,
                 timer: Callable[[], float] = time.monotonic):
        """clock: the wall clock that dates facts and judges their freshness (a test's
        fake one moves time on without sleeping); timer: this process's own pace (how long
        an in-process copy is trusted, when a broken store is tried again)."""
        self.directory = directory
        self.clock = clock
        self.timer = timer
        self.size_limit = size_limit
        self.shared = shared
        self._local = DiskStore(directory, size_limit)
        stores: List[_StoreState] = []
        if shared:
            try:
                stores.append(_StoreState(RedisStore(shared), shared=True))
            except Exception as exc:  # no redis client, a URL it refuses: answer all the same
                log.error("shared memo %s unusable, using the local memo %s only: %s: %s",
                          redacted(shared), directory, type(exc).__name__, exc)
        stores.append(_StoreState(self._local, shared=False))
        self._stores = stores
        self._active: Optional[_StoreState] = None
        self._lock = threading.Lock()
        self._front: Dict[str, Tuple[float, Any]] = {}
        self._generation: Any = None
        self._generation_checked_at = float("-inf")

    # -- plumbing -----------------------------------------------------------------------------
    @property
    def _cache(self) -> Any:
        """The open diskcache of the memo directory, if any (for tests and tools)."""
        return self._local._cache

    def _usable(self) -> Optional[_StoreState]:
        """The first store that works now, in order of preference; None: no memo at all."""
        for state in self._stores:
            if state.broken_since is not None and \
                    self.timer() - state.broken_since < state.store.retry_after:
                continue
            try:
                ready = state.store.open()
            except Exception as exc:
                self._fail(state, exc)
                continue
            if not ready:
                continue
            if state.broken_since is not None:
                state.broken_since = None
                if state.shared and state.complained:
                    log.warning("shared memo %s is back; helpers share it again",
                                state.store.name)
                elif not state.shared:
                    log.warning("memo %s is usable again", state.store.name)
                state.complained = False
            if self._active is not state:
                self._active = state
                # Another store holds other facts: nothing copied from the last one holds.
                self._front.clear()
            return state
        return None

    def _fail(self, state: _StoreState, exc: Exception) -> None:
        now = self.timer()
        first = state.broken_since is None
        state.broken_since = now
        try:
            state.store.failed()
        except Exception:
            pass
        if state.shared:
            # Once for each outage (every helper process of every proxy says it), and once a
            # minute at most: a Redis that answers PING but refuses our commands (out of
            # memory, a read-only replica) comes and goes every second.
            if first and now - state.last_complaint > _COMPLAINT_INTERVAL:
                state.last_complaint = now
                state.complained = True
                log.error("shared memo %s unreachable, answering from the local memo %s "
                          "until it answers again: %s: %s", state.store.name, self.directory,
                          type(exc).__name__, exc)
            return
        if now - state.last_complaint > _COMPLAINT_INTERVAL:
            state.last_complaint = now
            log.error("memo %s unusable, answering without it (probing every path): %s: %s",
                      state.store.name, type(exc).__name__, exc)

    def _do(self, operation: Callable[[Store], T], default: T, on_busy: Any = _DEFAULT) -> T:
        """operation() on the best store that works; `default` without any (and when the
        store is busy, unless on_busy says otherwise). A store that fails is marked broken
        and the next one in line answers."""
        while True:
            state = self._usable()
            if state is None:
                return default
            try:
                return operation(state.store)
            except state.store.busy:
                # contention for a moment: not a broken memo
                return default if on_busy is _DEFAULT else on_busy
            except Exception as exc:
                with self._lock:
                    if state.broken_since is None:
                        self._fail(state, exc)

    def close(self) -> None:
        with self._lock:
            for state in self._stores:
                state.store.close()

    # -- generic keyed values -----------------------------------------------------------------
    def get(self, key: str) -> Any:
        return self._do(lambda store: store.get(key), None)

    def set(self, key: str, value: Any, expire: Optional[float]) -> bool:
        self._front.pop(key, None)
        return self._do(lambda store: store.set(key, value, expire), False)

    def delete(self, key: str) -> bool:
        self._front.pop(key, None)
        return bool(self._do(lambda store: store.delete(key), False))

    def _check_generation(self, now: float) -> None:
        active = self._active or self._stores[-1]
        if now - self._generation_checked_at < active.store.generation_interval:
            return
        self._generation_checked_at = now
        # Which store answers is part of the generation: a switch between Redis and the local
        # directory invalidates every copy and every reply reused from the other one.
        generation = self._do(lambda store: (store.name, store.generation()), None)
        if generation is None:
            generation = (self._local.name, self._local.generation())
        if generation != self._generation:
            self._generation = generation
            self._front.clear()

    def generation(self) -> Any:
        """The memo's generation as this process last saw it (rechecked at most every
        GENERATION_CHECK_SECONDS, or the shared store's interval): it changes when any process
        purges, finds a mirror failing, publishes a survey or adds mirrors to the base index,
        and when the store that answers changes (Redis unreachable, or back)."""
        self._check_generation(self.timer())
        return self._generation

    def get_front(self, key: str) -> Any:
        """get() through an in-process copy, for the per-request hot path.

        A copy of a stored value is kept until some process bumps the memo's generation (a
        purge), which every process notices within FRONT_CACHE_SECONDS; so a hot path costs no
        disk read at all. The absence of a value is rechecked after FRONT_CACHE_SECONDS, since
        another process may publish one at any time. A caller that finds the copy outdated by
        its content (an answer past its TTL) asks refresh() for the stored value."""
        now = self.timer()
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
        front[key] = (self.timer(), value)
        return value

    def bump_generation(self) -> None:
        """Tell every process to drop its in-process copies (after a purge, a mirror found
        dead, a new survey); this one looks again at once."""
        self._front.clear()
        if self._do(lambda store: store.bump_generation() or True, None) is None:
            self._local.bump_generation()  # no memo: the file alone, if it can be written
        self._generation_checked_at = float("-inf")

    def add_to_dict(self, key: str, mapping: Dict[str, Any], expire: Optional[float]) -> bool:
        """Add mapping's new keys to the dict stored under key, atomically across processes.
        Keys already there keep their value, so that what others derived from them stays."""
        def merge(current: Any) -> Any:
            current = current if isinstance(current, dict) else {}
            if all(k in current for k in mapping):
                return current
            merged = dict(current)
            merged.update((k, v) for k, v in mapping.items() if k not in current)
            return merged
        return self._do(lambda store: store.update(key, merge, expire) is not None, False)

    # -- facts (see lifetimes) -----------------------------------------------------------------
    def put(self, fact: Fact, value: Any, at: Optional[float] = None) -> bool:
        """Store value as `fact`, learnt now (or at `at`: a value that replaces an earlier one
        of the same age)."""
        return self.set(fact.key, Stored(value, self.clock() if at is None else at),
                        expire=fact.keep_for)

    def put_new(self, fact: Fact, value: Any) -> bool:
        """put() only when the memo does not hold the fact yet (one process wins): True for the
        one that stored it. Without a working memo nobody does."""
        self._front.pop(fact.key, None)
        stored = Stored(value, self.clock())
        return bool(self._do(lambda store: store.add(fact.key, stored, fact.keep_for), False))

    def last(self, fact: Fact, front: bool = False) -> Optional[Stored]:
        """The stored fact, fresh or not (for last-known answers). front: through this
        process's copy, refreshed from the shared memo when the copy is no longer fresh,
        since another process may have stored a fresher one meanwhile."""
        if not front:
            stored = self.get(fact.key)
        else:
            stored = self.get_front(fact.key)
            if isinstance(stored, Stored) and stored.fresh_for(fact, self.clock()) <= 0:
                stored = self.refresh(fact.key)
        return stored if isinstance(stored, Stored) else None

    def fresh(self, fact: Fact, front: bool = False) -> Optional[Stored]:
        """The stored fact if it is still fresh, else None."""
        stored = self.last(fact, front)
        return stored if stored is not None and stored.fresh_for(fact, self.clock()) > 0 else None

    def update(self, fact: Fact, change: Callable[[Any], Any], default: Any) -> Any:
        """Replace the value stored as `fact` (None when absent) by change(value), atomically
        across processes, and return it; `default` without a working memo. The fact counts
        as learnt now and expires with it. change() may run more than once (Redis retries a
        lost race), so it must not have side effects."""
        def apply(current: Any) -> Stored:
            return Stored(change(current.value if isinstance(current, Stored) else None),
                          self.clock())
        self._front.pop(fact.key, None)
        stored = self._do(lambda store: store.update(fact.key, apply, fact.keep_for), None)
        return default if stored is None else stored.value

    def count(self, fact: Fact) -> int:
        """Add one to the counter stored as `fact` and return it; 0 without a working memo."""
        return self.update(fact, lambda value: (value or 0) + 1, 0)

    # -- cross-process locks ------------------------------------------------------------------
    def try_lock(self, name: str, hold_for: float) -> Optional[str]:
        """Take a named lock shared by all processes (of every proxy, with a shared memo), or
        None when another holder has it. Returns the holder's token, which unlock() needs: a
        lock that expired (hold_for seconds, so that a holder that died blocks nobody for
        long) and was taken by another is not released by its first holder. Without a working
        memo every caller gets the lock (no coordination is better than no answer); a memo
        that is merely busy (another process holds the database a moment) gives it to
        nobody."""
        token = f"{_HOST}:{os.getpid()}:{threading.get_ident()}:{next(_TOKENS)}"
        busy = object()
        held = lock(name, hold_for)
        taken = self._do(lambda store: store.add(held.key, token, held.keep_for), None,
                         on_busy=busy)
        if taken is busy:
            return None
        return token if taken is None or taken else None

    def locked(self, name: str) -> bool:
        """Whether some process holds the named lock now."""
        return self.get(LOCKS.key(name)) is not None

    def unlock(self, name: str, token: str) -> None:
        self._do(lambda store: store.delete_if(LOCKS.key(name), token), None)

    # -- the base index (store_id) ------------------------------------------------------------
    def add_to_index(self, index: Fact, version: Fact, entries: Dict[str, Any]) -> bool:
        """add_to_dict() for an index that other processes keep a copy of: when any key was
        new, a new token is stored as `version` and the generation is bumped, so that every
        reader notices within a generation check and reads the index once, not for every
        lookup. True when any key was new."""
        added: List[bool] = []

        def merge(current: Any) -> Any:
            current = current if isinstance(current, dict) else {}
            new = {k: v for k, v in entries.items() if k not in current}
            added[:] = [bool(new)]  # the last run is the one that was stored
            return {**current, **new} if new else current
        if self._do(lambda store: store.update(index.key, merge, index.keep_for), None) is None \
                or not added or not added[0]:
            return False
        self.set(version.key, f"{_HOST}:{os.getpid()}:{next(_TOKENS)}:{time.time()}",
                 version.keep_for)
        self.bump_generation()
        return True

    # -- purging ------------------------------------------------------------------------------
    def forget(self, *facts: Fact) -> int:
        """Drop facts in every process (`squid-helper purge`): deleted, and the generation
        bumped so that no process goes on using its copy. How many were there."""
        dropped = sum(self.delete(fact.key) for fact in facts)
        self.bump_generation()
        return dropped

    def shun(self, shunned: Fact, answer: Fact, base: str, reason: str) -> None:
        """Never answer `base` for one path again while `shunned` (lifetimes.shunned) holds:
        record it, drop the path's memoised answer (`answer`) when it names that base, and
        bump the generation. The hot path reads no shunned fact: dropping the answer and
        every process's copy of it is how it learns (resolve/snapshots.py)."""
        self.update(shunned, lambda known: {**(known if isinstance(known, dict) else {}),
                                            base: reason}, None)
        known = self.last(answer)
        if known is not None and isinstance(known.value, dict) \
                and known.value.get("base") == base:
            self.delete(answer.key)
        self.bump_generation()

    # -- reading for operators (status, metrics) ----------------------------------------------
    @classmethod
    def reader(cls, config: Config) -> Memo:
        """The facts as the helpers of `config` share them, for reading only: the fleet's Redis
        when `memo:` names one, else the memo directory opened read-only (DiskReader: no file
        is created or changed, whoever runs it). Close it after use."""
        memo = cls(config.cache_dir, size_limit=int(config.memo_size_mb) << 20)
        memo._local = DiskReader(config.cache_dir)
        store: Store = memo._local
        if config.memo:
            try:
                store = RedisStore(config.memo)
            except Exception as exc:  # no redis client, a URL it refuses
                raise MemoUnreadable(f"{redacted(config.memo)}: {type(exc).__name__}: "
                                     f"{exc}") from None
        memo._stores = [_StoreState(store, shared=False)]
        return memo

    @property
    def store_name(self) -> str:
        """Where the facts are read from: the directory, or the Redis URL (no password)."""
        return self._stores[0].store.name

    def _listing(self, operation: Callable[[Store], T]) -> T:
        """operation() on the memo the config names (its Redis, if any), for an operator:
        failures are raised (MemoUnreadable), not answered by another store."""
        store = self._stores[0].store
        try:
            if not store.open():
                raise MemoUnreadable(f"{store.name}: not answering (reconnecting)")
            return operation(store)
        except MemoUnreadable:
            raise
        except Exception as exc:
            raise MemoUnreadable(f"{store.name}: {type(exc).__name__}: {exc}") from None

    def facts(self, kind: Kind, now: float) -> Dict[str, Stored]:
        """Every live fact of one kind, by name (a host, a repo tree ...; see lifetimes).
        Raises MemoUnreadable; a memo not written yet has none."""
        found = self._listing(lambda store: store.items(kind.prefix, now))
        named = {}
        for key, value in found.items():
            name = kind.name_of(key)
            if name is not None and isinstance(value, Stored):
                named[name] = value
        return named

    def trees(self, kind: Kind, now: float) -> Dict[str, int]:
        """How many live facts of a per-path kind (answers, misses) each repo tree
        (`repo/releasever/arch`) has. Raises MemoUnreadable."""
        return self._listing(lambda store: store.count_groups(kind.prefix, TREE_PARTS, now))
