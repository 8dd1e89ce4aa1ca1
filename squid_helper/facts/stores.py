"""Where the memo's entries live: a diskcache directory (one proxy), or Redis (a fleet).

memo.Memo is the only user. It keeps the in-process front cache, the generation check and the
degrade-and-recover logic; a store only knows how to keep keyed values and answer a handful of
atomic operations. Every operation may raise: Memo decides what a failure means (the `busy`
exceptions: a moment's contention, answered without the memo; anything else: the store is
broken, and the next store in line, or none, answers until it is usable again).

The operations are those that a diskcache transaction and a Redis command (or a WATCH/MULTI
transaction, or a short Lua script) both do atomically across processes and hosts:
get, set, add (set if absent), delete, update (read-modify-write), delete_if (compare and
delete, for lock owners) and a generation counter that tells every process to drop its
in-process copies. Two more, for operators (`squid-helper status`), list what the store holds:
items (every live key with a prefix) and count_groups (how many keys per repo tree).

The memo directory has a read-only form too, DiskReader: what `status` and `metrics` read it
through, since the helpers' DiskStore writes when it opens.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import sqlite3
import threading
import time
from collections import Counter
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple
from urllib.parse import quote

import diskcache

from ..redaction import redacted

log = logging.getLogger("squid_helper.memo")

# The memo's generation is a file whose inode changes with every bump: one stat() tells a
# process that another one purged, found a mirror failing or published a survey.
GENERATION_FILE = "generation"
# Redis: every key of squid-helper's starts with this, so one Redis database can hold other
# things too (and `redis-cli --scan --pattern 'squid-helper:*'` shows ours).
REDIS_PREFIX = "squid-helper:"
REDIS_GENERATION_KEY = REDIS_PREFIX + "generation"
# One Redis request may take this long before the shared memo counts as broken (and the local
# one answers): a helper must never make Squid wait on an unreachable Redis for long.
REDIS_TIMEOUT = 1.0
# While Redis is unreachable, a background thread asks it this often whether it is back; the
# helpers' requests never wait on a reconnection.
REDIS_RECONNECT_SECONDS = 1.0
# A read-modify-write that keeps losing the race to other writers gives up after this many
# tries (it is then answered as if the memo were busy).
_WATCH_TRIES = 20
# Listing (status): keys asked for per SCAN step, and values per MGET.
_SCAN_BATCH = 1000
# Compare-and-delete, atomically in Redis: a lock holder whose lock expired and was taken by
# another must not delete the new holder's lock.
_DELETE_IF_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


class StoreBusy(Exception):
    """The store is fine but could not do this operation now (contention)."""


class MemoUnreadable(Exception):
    """The memo exists but cannot be read (permissions, corruption, an unreachable Redis),
    worded for the operator who asked."""


class ReadOnlyStore(Exception):
    """A write to a store opened for reading only (a program error, not the store's)."""


class Store:
    """The interface memo.Memo uses. `name` appears in logs; `retry_after`: seconds a store
    that failed is left alone before open() is tried again; `generation_interval`: how often
    at most Memo asks for generation()."""

    name: str = ""
    retry_after: float = 5.0
    generation_interval: float = 0.01
    busy: Tuple[type, ...] = (StoreBusy,)

    def open(self) -> bool:
        """Ready for operations (opening or reconnecting as needed); False: not yet."""
        raise NotImplementedError

    def failed(self) -> None:
        """An operation failed: drop what is open; open() starts over."""

    def get(self, key: str) -> Any:
        raise NotImplementedError

    def set(self, key: str, value: Any, expire: Optional[float]) -> bool:
        raise NotImplementedError

    def add(self, key: str, value: Any, expire: Optional[float]) -> bool:
        """Store value only if key holds nothing; True if this call stored it."""
        raise NotImplementedError

    def delete(self, key: str) -> bool:
        raise NotImplementedError

    def update(self, key: str, change: Callable[[Any], Any], expire: Optional[float]) -> Any:
        """Replace key's value (None when absent) by change(value), atomically, and return
        the new value. change() returning its argument itself writes nothing. change() may
        run more than once (a store that retries lost races), so it must be pure."""
        raise NotImplementedError

    def delete_if(self, key: str, value: Any) -> None:
        """Delete key only if it holds value, atomically."""
        raise NotImplementedError

    def generation(self) -> Any:
        raise NotImplementedError

    def bump_generation(self) -> None:
        raise NotImplementedError

    def items(self, prefix: str, now: float) -> Dict[str, Any]:
        """key -> value of every key starting with prefix that is live at `now` (for the few
        facts per host or repo tree: mirror lists, surveys, health)."""
        raise NotImplementedError

    def count_groups(self, prefix: str, parts: int, now: float) -> Dict[str, int]:
        """How many keys live at `now` each group has, a group being the first `parts`
        '/'-separated parts of what follows prefix (memoised answers per repo tree: there may
        be millions of keys, for a handful of groups). Keys of `parts` parts or fewer are
        not counted. Nothing is decoded."""
        raise NotImplementedError

    def close(self) -> None:
        pass


# -- one proxy: a diskcache directory --------------------------------------------------------
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


class DiskStore(Store):
    """The memo directory (cache_dir): a diskcache (SQLite) shared by every helper process of
    one Squid, and the generation file beside it."""

    busy = (StoreBusy, diskcache.Timeout)

    def __init__(self, directory: str, size_limit: int):
        self.directory = directory
        self.name = directory
        self.size_limit = size_limit
        self._cache: Optional[diskcache.Cache] = None
        self._listing: Optional[_Database] = None
        self._checked_at = 0.0
        self._lock = threading.Lock()

    def _still_there(self) -> bool:
        """False when the memo's database was deleted under us: an open handle would go on
        writing to a ghost file that no other process sees, so it must be reopened."""
        now = time.monotonic()
        if now - self._checked_at < self.retry_after:
            return True
        self._checked_at = now
        return os.path.exists(os.path.join(self.directory, diskcache.core.DBNAME))

    def open(self) -> bool:
        if self._cache is not None:
            if self._still_there():
                return True
            log.warning("memo %s was removed; recreating it", self.directory)
            self.close()
        with self._lock:
            if self._cache is not None:
                return True
            os.makedirs(self.directory, exist_ok=True)
            self._cache = diskcache.Cache(
                self.directory, timeout=2.0, size_limit=self.size_limit,
                eviction_policy="least-recently-stored", statistics=False,
                # One SQLite connection per thread: no memory-mapped file and a small page
                # cache each keep a helper's memory flat however large the memo grows.
                sqlite_mmap_size=0, sqlite_cache_size=64)
            if os.geteuid() == 0:
                give_files_to_directory_owner(self.directory)
            return True

    def failed(self) -> None:
        cache, self._cache = self._cache, None
        if cache is not None:
            try:
                cache.close()
            except Exception:
                pass

    def _open_cache(self) -> diskcache.Cache:
        cache = self._cache
        if cache is None:
            raise StoreBusy("the memo was closed meanwhile")
        return cache

    def get(self, key: str) -> Any:
        return self._open_cache().get(key)

    def set(self, key: str, value: Any, expire: Optional[float]) -> bool:
        return self._open_cache().set(key, value, expire=expire)

    def add(self, key: str, value: Any, expire: Optional[float]) -> bool:
        return self._open_cache().add(key, value, expire=expire)

    def delete(self, key: str) -> bool:
        return bool(self._open_cache().delete(key))

    def update(self, key: str, change: Callable[[Any], Any], expire: Optional[float]) -> Any:
        cache = self._open_cache()
        with cache.transact():
            current = cache.get(key)
            value = change(current)
            if value is not current:
                cache.set(key, value, expire=expire)
            return value

    def delete_if(self, key: str, value: Any) -> None:
        cache = self._open_cache()
        with cache.transact():
            if cache.get(key) == value:
                cache.delete(key)

    def generation(self) -> Any:
        return _generation_of(self.directory)

    def bump_generation(self) -> None:
        target = os.path.join(self.directory, GENERATION_FILE)
        temporary = f"{target}.{os.getpid()}.{threading.get_ident()}"
        try:
            # A new file each time: its inode and time tell every process, for one stat().
            with open(temporary, "w") as marker:
                marker.write(f"{time.time()}\n")
            os.replace(temporary, target)
        except OSError:
            pass  # no memo directory: no other process to tell either

    def items(self, prefix: str, now: float) -> Dict[str, Any]:
        return self._database().items(prefix, now)

    def count_groups(self, prefix: str, parts: int, now: float) -> Dict[str, int]:
        return self._database().count_groups(prefix, parts, now)

    def _database(self) -> _Database:
        """A read-only connection beside diskcache's, for listing (diskcache has no prefix
        query); opened on first use."""
        with self._lock:
            if self._listing is None:
                self._listing = _Database(self.directory)
            return self._listing

    def close(self) -> None:
        with self._lock:
            if self._cache is not None:
                self._cache.close()
                self._cache = None
            if self._listing is not None:
                self._listing.close()
                self._listing = None


def _generation_of(directory: str) -> Any:
    try:
        stat = os.stat(os.path.join(directory, GENERATION_FILE))
        return (stat.st_ino, stat.st_mtime_ns)
    except OSError:
        return None


# -- the memo directory, read-only ------------------------------------------------------------
DATABASE = diskcache.core.DBNAME  # "cache.db"
# diskcache stores a str key as it is, with raw=1 (a key of any other type is pickled).
_LIVE = "raw = 1 AND (expire_time IS NULL OR expire_time > ?)"


class _Database:
    """The memo directory's SQLite database, read with SQLite directly.

    Opening a diskcache.Cache writes its settings and creates tables, and a root process would
    leave database files the helpers (Squid's `proxy` user) cannot write. So:

    * `mode=ro` when the helpers have it open (its -wal file exists): a WAL reader takes no
      lock that a writer waits for, and every query here is its own short read transaction;
    * `immutable=1` when nobody has it open (no -wal): nothing to coordinate with, and no -wal
      or -shm file is created. A helper that starts writing meanwhile writes to a new -wal,
      which this read ignores: at worst the figures are a moment old.

    Values are decoded the way diskcache stores them (diskcache.Disk.fetch: pickles inline or
    in files). Whatever root created in the directory anyway (a race with a helper closing
    the database) is handed back to the directory's owner when it is closed."""

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, DATABASE)
        self._connection: Optional[sqlite3.Connection] = None
        self._disk = diskcache.Disk(directory)  # decoding only: its __init__ writes nothing
        self._lock = threading.Lock()

    @property
    def exists(self) -> bool:
        """Whether the helpers ever wrote a memo here."""
        return os.path.isfile(self.path)

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            if not os.access(self.path, os.R_OK):
                raise MemoUnreadable(f"{self.path}: permission denied (run as root or as the "
                                     "helpers' user)")
            shared = os.path.exists(self.path + "-wal")
            uri = f"file:{quote(self.path)}?mode=ro" + ("" if shared else "&immutable=1")
            try:
                # isolation_level=None: no transaction outlives one query.
                self._connection = sqlite3.connect(uri, uri=True, timeout=2.0,
                                                   isolation_level=None,
                                                   check_same_thread=False)
                self._connection.execute("PRAGMA query_only = 1")
            except sqlite3.Error as exc:
                raise MemoUnreadable(f"{self.path}: {exc}") from None
        return self._connection

    def _query(self, sql: str, *args: Any) -> List[tuple]:
        if not self.exists:
            return []  # no helper wrote yet: nothing to read, and nothing created
        with self._lock:
            try:
                return self._db().execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise MemoUnreadable(f"{self.path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
                if os.geteuid() == 0:
                    try:
                        give_files_to_directory_owner(self.directory)
                    except OSError:
                        pass

    def _decode(self, mode: int, filename: Optional[str], value: Any) -> Any:
        try:
            return self._disk.fetch(mode, filename, value, False)
        except Exception:  # a value being replaced (its file gone) or of an older version
            return None

    def get(self, key: str, now: float) -> Any:
        rows = self._query(f"SELECT mode, filename, value FROM Cache WHERE key = ? AND {_LIVE}",
                           key, now)
        return self._decode(*rows[0]) if rows else None

    def items(self, prefix: str, now: float) -> Dict[str, Any]:
        rows = self._query(f"SELECT key, mode, filename, value FROM Cache WHERE key >= ? AND "
                           f"key < ? AND {_LIVE}", prefix, _after(prefix), now)
        found = {}
        for key, mode, filename, value in rows:
            decoded = self._decode(mode, filename, value)
            if decoded is not None:
                found[key] = decoded
        return found

    def count_groups(self, prefix: str, parts: int, now: float) -> Dict[str, int]:
        """Skips from one group to the next through the key index, and counts each group's
        range there, so that no query reads more than one group's keys."""
        found: Dict[str, int] = {}
        start, end = prefix, _after(prefix)
        while True:
            rows = self._query("SELECT key FROM Cache WHERE key >= ? AND key < ? ORDER BY key "
                               "LIMIT 1", start, end)
            if not rows:
                return found
            split = rows[0][0][len(prefix):].split("/")
            if len(split) <= parts:  # not a key of a group: step past it
                start = rows[0][0] + "\0"
                continue
            group = "/".join(split[:parts])
            first = prefix + group + "/"
            count = self._query(f"SELECT count(*) FROM Cache WHERE key >= ? AND key < ? "
                                f"AND {_LIVE}", first, _after(first), now)[0][0]
            if count:
                found[group] = count
            start = _after(first)


def _after(prefix: str) -> str:
    """The smallest string greater than every string starting with prefix."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class DiskReader(Store):
    """The memo directory for a reader that must change nothing in it (`squid-helper status`
    and `metrics`, run as root or as the helpers' user): no directory, database, -wal or -shm
    file is created, and no lock a helper waits for is taken. A directory the helpers never
    wrote to reads as empty. Writes raise ReadOnlyStore."""

    def __init__(self, directory: str):
        self.directory = directory
        self.name = directory
        self._database = _Database(directory)

    def open(self) -> bool:
        return True  # opened at the first read; a memo not there yet reads as empty

    def get(self, key: str) -> Any:
        return self._database.get(key, time.time())

    def _refuse(self, *_: Any) -> Any:
        raise ReadOnlyStore(f"{self.directory}: opened read-only")

    set = add = delete = update = delete_if = _refuse

    def generation(self) -> Any:
        return _generation_of(self.directory)

    def bump_generation(self) -> None:
        self._refuse()

    def items(self, prefix: str, now: float) -> Dict[str, Any]:
        return self._database.items(prefix, now)

    def count_groups(self, prefix: str, parts: int, now: float) -> Dict[str, int]:
        return self._database.count_groups(prefix, parts, now)

    def close(self) -> None:
        self._database.close()


# -- a fleet: Redis ---------------------------------------------------------------------------
class _MemoUnpickler(pickle.Unpickler):
    """Only squid-helper's own classes (and plain data) come out of the shared memo: whoever
    can write to the Redis database must not be able to run code in the helpers by it."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "squid_helper" or module.startswith("squid_helper."):
            return super().find_class(module, name)
        if module == "builtins" and name in ("set", "frozenset"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name}")


def encode(value: Any) -> bytes:
    return pickle.dumps(value, protocol=4)


def decode(raw: Optional[bytes]) -> Any:
    if raw is None:
        return None
    try:
        return _MemoUnpickler(io.BytesIO(raw)).load()
    except Exception as exc:
        # Not ours (another program's key, an older version's class): absent, not broken.
        log.warning("ignoring an unreadable value in the shared memo: %s: %s",
                    type(exc).__name__, exc)
        return None


def _glob_escaped(text: str) -> str:
    """text as a literal in a Redis MATCH pattern."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def _milliseconds(expire: Optional[float]) -> Optional[int]:
    return None if expire is None else max(1, int(expire * 1000))


class RedisStore(Store):
    """The memo of every proxy of a fleet, in one Redis database (memo: redis://...).

    Values are pickled as in diskcache, under REDIS_PREFIX. Requests time out after
    REDIS_TIMEOUT and are never retried here: Memo answers from the local store instead. Once
    a request failed, a background thread pings Redis every REDIS_RECONNECT_SECONDS and open()
    says True again when it answered."""

    retry_after = 0.0  # open() is a flag check while the reconnecting thread works
    # A Redis read costs a round trip, a stat() does not: look at the generation less often.
    generation_interval = 0.05

    def __init__(self, url: str, timeout: float = REDIS_TIMEOUT,
                 reconnect_every: float = REDIS_RECONNECT_SECONDS):
        import redis  # only a fleet needs the client
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url = url
        self.name = redacted(url)
        self.reconnect_every = reconnect_every
        self._redis = redis
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), retry_on_timeout=False, health_check_interval=0)
        self._delete_if = self._client.register_script(_DELETE_IF_LUA)
        self.busy = (StoreBusy,)
        self._down = threading.Event()
        self._back = threading.Event()
        self._closed = threading.Event()
        self._reconnecting: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def open(self) -> bool:
        if not self._down.is_set():
            return True
        if self._back.is_set():
            self._down.clear()
            self._back.clear()
            return True
        return False

    def failed(self) -> None:
        with self._lock:
            self._back.clear()
            self._down.set()
            if self._reconnecting is None or not self._reconnecting.is_alive():
                self._reconnecting = threading.Thread(target=self._reconnect, daemon=True,
                                                      name="memo-reconnect")
                self._reconnecting.start()

    def _reconnect(self) -> None:
        while not self._closed.wait(self.reconnect_every):
            try:
                # A dropped connection pool: the next requests connect afresh.
                self._client.connection_pool.disconnect()
                if self._client.ping():
                    self._back.set()
                    return
            except Exception:
                continue

    def ping(self) -> bool:
        """One round trip to Redis (raises when it does not answer)."""
        return bool(self._client.ping())

    def get(self, key: str) -> Any:
        return decode(self._client.get(REDIS_PREFIX + key))

    def set(self, key: str, value: Any, expire: Optional[float]) -> bool:
        return bool(self._client.set(REDIS_PREFIX + key, encode(value),
                                     px=_milliseconds(expire)))

    def add(self, key: str, value: Any, expire: Optional[float]) -> bool:
        return bool(self._client.set(REDIS_PREFIX + key, encode(value), nx=True,
                                     px=_milliseconds(expire)))

    def delete(self, key: str) -> bool:
        return bool(self._client.delete(REDIS_PREFIX + key))

    def update(self, key: str, change: Callable[[Any], Any], expire: Optional[float]) -> Any:
        name = REDIS_PREFIX + key
        with self._client.pipeline() as pipe:
            for _ in range(_WATCH_TRIES):
                try:
                    pipe.watch(name)
                    current = decode(pipe.get(name))
                    value = change(current)
                    if value is current:
                        pipe.unwatch()
                        return value
                    pipe.multi()
                    pipe.set(name, encode(value), px=_milliseconds(expire))
                    pipe.execute()
                    return value
                except self._redis.WatchError:
                    continue  # another writer came first: read again
        raise StoreBusy(f"{key}: too many concurrent writers")

    def delete_if(self, key: str, value: Any) -> None:
        self._delete_if(keys=[REDIS_PREFIX + key], args=[encode(value)])

    def generation(self) -> Any:
        return self._client.get(REDIS_GENERATION_KEY)

    def bump_generation(self) -> None:
        self._client.incr(REDIS_GENERATION_KEY)

    def _keys(self, prefix: str) -> Iterator[str]:
        """Our keys starting with prefix (without REDIS_PREFIX), by SCAN: no command that
        blocks Redis for the other clients however many keys there are."""
        pattern = _glob_escaped(REDIS_PREFIX + prefix) + "*"
        for raw in self._client.scan_iter(match=pattern, count=_SCAN_BATCH):
            yield raw.decode("utf-8", "replace")[len(REDIS_PREFIX):]

    def items(self, prefix: str, now: float) -> Dict[str, Any]:
        keys = list(self._keys(prefix))  # Redis expires keys itself: every one is live
        found = {}
        for start in range(0, len(keys), _SCAN_BATCH):
            batch = keys[start:start + _SCAN_BATCH]
            values = self._client.mget([REDIS_PREFIX + key for key in batch])
            for key, raw in zip(batch, values):
                value = decode(raw)
                if value is not None:
                    found[key] = value
        return found

    def count_groups(self, prefix: str, parts: int, now: float) -> Dict[str, int]:
        counts: Counter = Counter()
        for key in self._keys(prefix):
            split = key[len(prefix):].split("/")
            if len(split) > parts:
                counts["/".join(split[:parts])] += 1
        return dict(counts)

    def close(self) -> None:
        self._closed.set()
        try:
            self._client.close()
        except Exception:
            pass
