"""A read-only look into the memo, for `squid-helper status` and `metrics`.

The helpers' Memo (diskcache) is no way to read it from outside: opening a diskcache.Cache
writes its settings and creates tables, and a root process would leave database files the
helpers (Squid's `proxy` user) cannot write. So the database is read with SQLite directly:

* `mode=ro` when the helpers have it open (its -wal file exists): a WAL reader takes no lock
  that a writer waits for, and every query here is its own short read transaction;
* `immutable=1` when nobody has it open (no -wal): nothing to coordinate with, and no -wal or
  -shm file is created. A helper that starts writing meanwhile writes to a new -wal, which
  this read ignores: at worst the figures are a moment old.

Values are decoded the way diskcache stores them (diskcache.Disk.fetch: pickles inline or in
files). Whatever root created in the directory anyway (a race with a helper closing the
database) is handed back to the directory's owner.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional
from urllib.parse import quote

import diskcache

from .stores import give_files_to_directory_owner

DATABASE = diskcache.core.DBNAME  # "cache.db"
# diskcache stores a str key as it is, with raw=1 (a key of any other type is pickled).
_LIVE = "raw = 1 AND (expire_time IS NULL OR expire_time > ?)"


class MemoUnreadable(Exception):
    """The memo exists but cannot be read (permissions, corruption), worded for the reader."""


@dataclass(frozen=True)
class Group:
    """Keys sharing a prefix and a repo tree (`repo/releasever/arch`)."""

    triple: str
    count: int


class MemoView:
    """Read-only access to the memo in `directory`; use as a context manager."""

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, DATABASE)
        self._connection: Optional[sqlite3.Connection] = None
        self._disk = diskcache.Disk(directory)  # decoding only: its __init__ writes nothing

    @property
    def exists(self) -> bool:
        """Whether the helpers ever wrote a memo here (else: no traffic yet)."""
        return os.path.isfile(self.path)

    def __enter__(self) -> MemoView:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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
        try:
            return self._db().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise MemoUnreadable(f"{self.path}: {exc}") from None

    def close(self) -> None:
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

    # -- what status needs ---------------------------------------------------------------------
    def get(self, key: str, now: Optional[float] = None) -> Any:
        """The value stored under key (None when absent or expired)."""
        rows = self._query(f"SELECT mode, filename, value FROM Cache WHERE key = ? AND {_LIVE}",
                           key, time.time() if now is None else now)
        return self._decode(*rows[0]) if rows else None

    def with_prefix(self, prefix: str, now: Optional[float] = None) -> Dict[str, Any]:
        """key -> value for every live key starting with prefix (for the few facts per host
        or per repo tree: mirror lists, surveys, health)."""
        rows = self._query(f"SELECT key, mode, filename, value FROM Cache WHERE key >= ? AND "
                           f"key < ? AND {_LIVE}", prefix, _after(prefix),
                           time.time() if now is None else now)
        found = {}
        for key, mode, filename, value in rows:
            decoded = self._decode(mode, filename, value)
            if decoded is not None:
                found[key] = decoded
        return found

    def groups(self, prefix: str, now: Optional[float] = None) -> List[Group]:
        """How many live keys `prefix + repo/releasever/arch/...` each repo tree has (memoised
        answers: there may be millions of keys, for a handful of trees). Skips from one tree
        to the next through the key index, and counts each tree's range there, so nothing is
        decoded and no query reads more than one tree's keys."""
        now = time.time() if now is None else now
        found: List[Group] = []
        start, end = prefix, _after(prefix)
        while True:
            rows = self._query("SELECT key FROM Cache WHERE key >= ? AND key < ? ORDER BY key "
                               "LIMIT 1", start, end)
            if not rows:
                return found
            parts = rows[0][0][len(prefix):].split("/")
            if len(parts) < 4:  # not a path key: step past it
                start = rows[0][0] + "\0"
                continue
            tree = prefix + "/".join(parts[:3]) + "/"
            count = self._query(f"SELECT count(*) FROM Cache WHERE key >= ? AND key < ? "
                                f"AND {_LIVE}", tree, _after(tree), now)[0][0]
            if count:
                found.append(Group("/".join(parts[:3]), count))
            start = _after(tree)


def _after(prefix: str) -> str:
    """The smallest string greater than every string starting with prefix."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)
