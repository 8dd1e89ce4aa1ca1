"""The fetch log daemon on Squid's protocol, with a real memo: what a failed fetch changes, what
a bad line costs, and that a learner that falls behind never holds up Squid's pipe."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Tuple

import pytest

from lab.helper import write_config
from lab.wait import wait_for
from squid_helper.config.files import load_config
from squid_helper.facts.lifetimes import Lifetimes
from squid_helper.facts.memo import Memo
from squid_helper.ops.squidconf import fetchlog_command_for
from squid_helper.resolve.urls import RepoPath
from squid_helper.squid.fetchdaemon import FetchLearner, FetchLogDaemon

A = "http://127.0.0.1:1/pub/9/x86_64/"
B = "http://127.0.0.1:2/pub/9/x86_64/"
ALPHA = RepoPath("test", "9", "x86_64", "Packages/alpha.rpm")


def line(base: str, server: str = "200", body: str = "5000", length: str = "5000",
         status: str = "TCP_MISS", hierarchy: str = "HIER_DIRECT", sent: int = 5222) -> bytes:
    return (f"LSHF1 1796328242.674 40 30 {status} 200 {server} {sent} {body} {length} "
            f"{hierarchy} 127.0.0.1 - 3128 GET http://repoproxy/test/9/x86_64/Packages/"
            f"alpha.rpm {base}Packages/alpha.rpm\n").encode()


@pytest.fixture
def learner(tmp_path: Path):
    config = load_config(str(write_config(tmp_path, {"test": {"mirrors": [
        "http://127.0.0.1:1/pub/{releasever}/{arch}/",
        "http://127.0.0.1:2/pub/{releasever}/{arch}/"]}})))
    memo = Memo.of(config)
    considered: List[Tuple[RepoPath, str]] = []
    learner = FetchLearner(config, memo, consider=lambda r, u: considered.append((r, u)))
    learner.considered = considered
    yield learner
    memo.close()


def run(learner: FetchLearner, *messages: bytes) -> FetchLogDaemon:
    daemon = FetchLogDaemon(learner)
    assert daemon.run(io.BytesIO(b"".join(messages))) == 0
    return daemon


def test_a_failed_fetch_shuns_the_mirror_for_the_path_and_forgets_its_answer(learner):
    lifetimes, memo = Lifetimes(learner.config), learner.memo
    memo.put(lifetimes.answer(ALPHA), {"url": A + "Packages/alpha.rpm", "base": A})
    generation = memo.generation()
    run(learner, b"r0\nb0\n", line(A, server="500", body="3", length="3"), b"F\n")
    assert memo.fresh(lifetimes.shunned(ALPHA)).value == {A: "Squid's GET got 500"}
    assert memo.last(lifetimes.answer(ALPHA)) is None
    assert memo.generation() != generation
    assert memo.last(lifetimes.fetch_failures("127.0.0.1:1")).value["count"] == 1
    assert learner.considered == []


def test_a_404_counts_only_where_the_path_was_verified(learner):
    lifetimes, memo = Lifetimes(learner.config), learner.memo
    memo.put(lifetimes.answer(ALPHA), {"url": B + "Packages/alpha.rpm", "base": B})
    run(learner, line(A, server="404", body="9", length="9"))
    assert memo.last(lifetimes.shunned(ALPHA)) is None  # A never said it had it
    run(learner, line(B, server="404", body="9", length="9"))
    assert set(memo.fresh(lifetimes.shunned(ALPHA)).value) == {B}


def test_downloads_and_hits_are_counted_and_the_checker_told(learner):
    lifetimes, memo = Lifetimes(learner.config), learner.memo
    run(learner, line(A, body="65536", length="65536"),
        line(A, status="TCP_HIT", server="-", body="-", hierarchy="HIER_NONE", sent=70000))
    assert learner.considered == [(ALPHA, A + "Packages/alpha.rpm")]
    assert memo.last(lifetimes.traffic("test")).value == {
        "hits": 1, "misses": 1, "bytes_from_cache": 70000, "bytes_fetched": 65536}
    speed = memo.last(lifetimes.throughput("127.0.0.1:1")).value
    assert speed["samples"] == 1 and speed["rate"] == pytest.approx(65536 / 0.030)


def test_bad_lines_are_counted_and_the_good_ones_still_learnt(learner):
    daemon = run(learner, b"Lgarbage\n", b"L\n", b"LSHF1 1 2\n", b"Q unknown command\n",
                 b"L\xff\xfe\x00\n", line(A, server="500"), b"R\nT\nO\nF\n")
    assert learner.bad_lines.count == 4
    assert daemon.unknown.count == 1
    assert A in learner.memo.fresh(Lifetimes(learner.config).shunned(ALPHA)).value


def test_a_learner_that_falls_behind_never_holds_up_squids_pipe(learner):
    """Squid writes; the learner hangs (a memo that does not answer): the pipe is read all
    the same, the lines beyond the queue dropped and counted."""
    release = threading.Event()
    learner.consider = lambda *_: release.wait(30)
    daemon = FetchLogDaemon(learner, queue_lines=5)
    started = time.monotonic()
    reading = threading.Thread(target=daemon.run, args=(io.BytesIO(line(A) * 200),))
    reading.start()
    try:
        assert wait_for(lambda: daemon.dropped.count >= 200 - 5 - 1, timeout=10)
    finally:
        release.set()
        reading.join(timeout=30)
    assert not reading.is_alive()
    assert time.monotonic() - started < 30


def test_squid_starts_the_daemon_with_the_config_as_its_one_argument(tmp_path):
    """squid-helper-fetchlog CONFIG, as Squid's logfile_daemon: a bad config is said on
    stderr (Squid's cache.log), and Squid's pipe is still read to its end."""
    program = fetchlog_command_for(str(Path(sys.executable).parent / "squid-helper"))
    bad = tmp_path / "repos.yaml"
    bad.write_text("repos: [\n")
    done = subprocess.run([program, str(bad)], input=b"r0\nb0\n" + line(A) * 1000 + b"F\n",
                          capture_output=True, timeout=60)
    assert done.returncode == 0
    assert str(bad) in done.stderr.decode() and done.stdout == b""
