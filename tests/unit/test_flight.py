"""Single flight across threads and processes, on the memo's lock (real processes, real SQLite)."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import diskcache

from squid_helper.facts.flight import SingleFlight
from squid_helper.facts.memo import Memo


def test_a_lock_taken_over_after_it_expired_is_not_released_by_its_first_holder(tmp_path):
    first, second = Memo(str(tmp_path)), Memo(str(tmp_path))
    token = first.try_lock("x", hold_for=0.2)
    assert token is not None
    assert second.try_lock("x", hold_for=30) is None
    time.sleep(0.3)
    taken_over = second.try_lock("x", hold_for=30)
    assert taken_over is not None
    first.unlock("x", token)  # late: the lock is no longer the first holder's
    assert first.locked("x")
    assert first.try_lock("x", hold_for=30) is None
    second.unlock("x", taken_over)
    assert not first.locked("x")


def test_a_busy_memo_gives_the_lock_to_nobody(tmp_path):
    memo = Memo(str(tmp_path))
    memo.set("warm", 1, expire=None)  # the database exists
    blocker = sqlite3.connect(str(tmp_path / diskcache.core.DBNAME), timeout=1)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        assert memo.try_lock("x", hold_for=30) is None
    finally:
        blocker.rollback()
        blocker.close()
    assert memo.try_lock("x", hold_for=30) is not None


def test_a_broken_memo_gives_the_lock_to_everybody(tmp_path):
    missing = tmp_path / "file"
    missing.write_text("not a directory")
    memo = Memo(str(missing / "memo"))
    assert memo.try_lock("x", 30) is not None
    assert memo.try_lock("x", 30) is not None


def _contend(directory: str, start_at: float, results) -> None:
    flights = SingleFlight(Memo(directory), hold_for=30)
    memo = Memo(directory)

    def compute() -> str:
        memo.set("computed-by", (memo.get("computed-by") or 0) + 1, expire=None)
        time.sleep(0.3)  # long enough for everybody to queue behind the lock
        memo.set("answer", "42", expire=None)
        return "42"

    time.sleep(max(0.0, start_at - time.time()))
    answers = []

    def ask() -> None:
        try:
            answers.append(flights.run("thing", compute, lambda: memo.get("answer")))
        except Exception as exc:  # reported to the test, not lost in a thread
            answers.append(repr(exc))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    results.put(answers)


def test_one_computation_across_processes_and_threads(tmp_path: Path):
    Memo(str(tmp_path)).set("warm", 1, expire=None)
    results = multiprocessing.Queue()
    start_at = time.time() + 1.0
    processes = [multiprocessing.Process(target=_contend, args=(str(tmp_path), start_at,
                                                                results)) for _ in range(4)]
    for process in processes:
        process.start()
    answers = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(30)
    assert [a for batch in answers for a in batch] == ["42"] * 16
    assert Memo(str(tmp_path)).get("computed-by") == 1
