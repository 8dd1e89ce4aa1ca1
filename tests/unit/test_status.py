"""`squid-helper status` and `metrics` without Squid: the memo read-only, the status document,
the table, the exposition, Squid's counters page, and the last-probe record written in the
background (the commands themselves: tests/test_status_cli.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict

import diskcache
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lab.helper import write_config
from squid_helper.config.files import load_config
from squid_helper.facts.lifetimes import ANSWERS, LATENCIES, MISSES, TREE_PARTS, Lifetimes
from squid_helper.facts.memo import Memo, Stored
from squid_helper.facts.stores import DiskReader
from squid_helper.ops.metrics import exposition
from squid_helper.ops.squidstats import (
    ReadTally,
    SquidCounters,
    SquidUnreachable,
    parse_counters,
    split_proxy,
    without_reads,
)
from squid_helper.ops.status import (
    BACKOFF,
    HEALTHY,
    NO_TRAFFIC,
    OK,
    PROBATION,
    UNHEALTHY,
    MemoFacts,
    build_status,
    host_health,
    read_memo,
    render_table,
    squid_section,
)
from squid_helper.resolve.mirrorlists import SourceDocument
from squid_helper.resolve.probe import FAILED, FOUND, ProbeResult
from squid_helper.resolve.probelog import ProbeLog
from squid_helper.resolve.sources import MirrorSet
from squid_helper.resolve.survey import Survey
from squid_helper.resolve.urls import RepoPath

A, B, C = "http://a.example/pub/9/x86_64/", "http://b.example/pub/9/x86_64/", \
    "http://c.example:8080/pub/9/x86_64/"
NOW = 1_800_000_000.0

COUNTERS_PAGE = """sample_time = 1795648923.766704 (Wed, 25 Nov 2026 23:22:03 GMT)
client_http.requests = 40
client_http.hits = 30
client_http.errors = 1
client_http.kbytes_in = 3
client_http.kbytes_out = 2048
client_http.hit_kbytes_out = 1536
server.all.requests = 10
"""


@pytest.fixture
def config(tmp_path: Path):
    return status_config(tmp_path)


def status_config(tmp_path: Path):
    """Three repos (a mirror list, static mirrors, one never asked for) in tmp_path."""
    path = write_config(tmp_path, {
        "listed": {"mirrorlist": "http://list.example/ml?r={releasever}&a={arch}"},
        "static": {"mirrors": [A.replace("9/x86_64", "{releasever}/{arch}"), B],
                   "releasevers": ["9"], "arches": ["x86_64"]},  # B holds 9/x86_64 only
        "quiet": {"mirrors": ["http://q.example/{releasever}/"]}},
        unhealthy_ttl=120, mirrorlist_ttl=600)
    return load_config(str(path))


def populate(config, now: float = None) -> None:
    """The memo as helpers leave it after traffic on listed/9/x86_64 and static/9/x86_64."""
    now = time.time() if now is None else now
    memo = Memo.of(config)
    life = Lifetimes(config)
    listed = RepoPath("listed", "9", "x86_64", "repodata/repomd.xml")
    memo.put(life.mirror_list(listed), SourceDocument(MirrorSet((A, B, C))), at=now - 30)
    memo.put(life.survey("listed/9/x86_64"),
             Survey((A, B, C), {A: "fresh", B: "stale", C: None}, (A,), True, "1.0"),
             at=now - 20)
    for index in range(5):
        memo.put(life.answer(RepoPath("listed", "9", "x86_64", f"Packages/p{index}.rpm")),
                 {"url": A + f"Packages/p{index}.rpm", "base": A})
    memo.put(life.miss(RepoPath("listed", "9", "x86_64", "Packages/none.rpm")), "no mirror")
    memo.put(life.answer(RepoPath("static", "9", "x86_64", "Packages/s.rpm")),
             {"url": A + "Packages/s.rpm", "base": A})
    memo.put(life.unhealthy("b.example"), "connection failed", at=now - 10)
    memo.put(life.unhealthy("c.example:8080"), "timeout after 2.0s", at=now - 500)
    memo.put(life.latency("a.example"), 0.012)
    memo.put(life.last_probe("a.example"), {"url": A + "Packages/p4.rpm", "outcome": FOUND,
                                            "detail": "HEAD 200", "elapsed": 0.011}, at=now - 3)
    memo.put(life.last_probe("b.example"), {"url": B + "repodata/repomd.xml",
                                            "outcome": FAILED, "detail": "connection failed",
                                            "elapsed": 0.001}, at=now - 10)
    memo.close()


def files(directory: Path) -> Dict[str, tuple]:
    return {e.name: (e.stat().st_size, e.stat().st_mtime_ns, e.stat().st_ino)
            for e in os.scandir(directory)}


# -- the memo, read-only -------------------------------------------------------------------------
def test_status_reads_what_the_helpers_know(config):
    populate(config)
    facts = read_memo(config)
    assert facts.state == OK
    status = build_status(config, facts, squid_section(None, None), time.time())
    repos = {r["name"]: r for r in status["repos"]}
    assert repos["quiet"]["trees"] == []
    (tree,) = repos["listed"]["trees"]
    assert (tree["releasever"], tree["arch"], tree["answers"], tree["not_found"]) == \
        ("9", "x86_64", 5, 1)
    assert tree["source"]["url"] == "http://list.example/ml?r=9&a=x86_64"
    assert 29 <= tree["source"]["age_seconds"] < 60 and tree["source"]["fresh"]
    mirrors = {m["url"]: m for m in tree["mirrors"]}
    assert list(mirrors) == [A, B, C]
    assert mirrors[A]["health"] == HEALTHY and mirrors[A]["verdict"] == "fresh"
    assert mirrors[A]["latency_seconds"] == pytest.approx(0.012)
    assert mirrors[A]["last_probe"]["detail"] == "HEAD 200"
    assert mirrors[B]["health"] == UNHEALTHY and mirrors[B]["verdict"] == "stale"
    assert mirrors[B]["until"] == pytest.approx(time.time() + 110, abs=5)
    assert mirrors[B]["last_probe"]["outcome"] == FAILED
    assert mirrors[C]["health"] == PROBATION and mirrors[C]["verdict"] == "unusable"
    (static,) = repos["static"]["trees"]
    assert static["answers"] == 1 and [m["url"] for m in static["mirrors"]] == [A, B]
    json.dumps(status)  # the --json document is plain JSON


def test_reading_the_memo_changes_no_file(config):
    populate(config)
    before = files(Path(config.cache_dir))
    assert "cache.db-wal" not in before  # nobody has it open: read without creating one
    read_memo(config)
    assert files(Path(config.cache_dir)) == before


def test_reading_while_a_helper_writes(config):
    """With a writer holding the database open (WAL mode), the reader sees its commits and
    never keeps it from writing."""
    populate(config)
    writer = Memo.of(config)
    life = Lifetimes(config)
    try:
        writer.put(life.latency("b.example"), 0.5)
        reader = Memo.reader(config)
        try:
            assert reader.facts(LATENCIES, time.time())["b.example"].value == 0.5
            for index in range(20):  # the reader's connection is open: writes still go through
                assert writer.set(ANSWERS.key(f"listed/9/x86_64/Packages/w{index}.rpm"), {},
                                  None)
            assert reader.trees(ANSWERS, time.time())["listed/9/x86_64"] == 25
        finally:
            reader.close()
    finally:
        writer.close()


def test_memo_groups_skip_from_tree_to_tree_and_ignore_expired_keys(tmp_path):
    cache = diskcache.Cache(str(tmp_path))
    trees = ["a/9/x86_64", "a/9/x86_64-v2", "a/9/x", "a/10/x86_64", "a+b/9/x86_64", "b/9/s390x"]
    for number, tree in enumerate(trees):
        for index in range(number + 1):
            cache.set(f"path:{tree}/Packages/{index}.rpm", 1)
    cache.set("path:b/9/s390x/Packages/gone.rpm", 1, expire=0.01)
    cache.set("miss:a/9/x86_64/none.rpm", 1)
    cache.close()
    time.sleep(0.05)
    view = DiskReader(str(tmp_path))
    try:
        groups = view.count_groups(ANSWERS.prefix, TREE_PARTS, time.time())
        assert view.count_groups(MISSES.prefix, TREE_PARTS, time.time()) == {"a/9/x86_64": 1}
    finally:
        view.close()
    assert groups == {tree: number + 1 for number, tree in enumerate(trees)}


def test_no_memo_yet_is_no_traffic_yet(config, tmp_path):
    facts = read_memo(dataclasses.replace(config, cache_dir=str(tmp_path / "nowhere")))
    assert facts.state == NO_TRAFFIC
    assert not (tmp_path / "nowhere").exists()  # status creates nothing
    table = render_table(build_status(config, facts, squid_section(None, None), NOW))
    assert "no traffic yet" in table
    assert "No traffic yet: listed, static, quiet" in table


def test_an_empty_memo_is_no_traffic_yet(config):
    Memo.of(config).close()  # the helpers started, nothing asked yet
    memo = Memo.of(config)
    memo.get("anything")
    memo.close()
    assert read_memo(config).state == NO_TRAFFIC


# -- health, the table, the exposition -----------------------------------------------------------
def test_host_health_states():
    assert host_health(None, None, 120, NOW)["health"] == HEALTHY
    marked = host_health(Stored("timeout", NOW - 20), None, 120, NOW)
    assert marked["health"] == UNHEALTHY and marked["until"] == NOW + 100
    assert host_health(Stored("timeout", NOW - 200), None, 120, NOW)["health"] == PROBATION
    backing = host_health(None, Stored(NOW + 30, NOW - 5), 120, NOW)
    assert backing["health"] == BACKOFF and backing["until"] == NOW + 30
    assert host_health(None, Stored(NOW - 1, NOW - 60), 120, NOW)["health"] == HEALTHY


def test_the_table_shows_health_sources_and_squid(config):
    now = time.time()  # the memo expires its entries by the clock
    populate(config, now=now)
    facts = read_memo(config, now=now)
    counters = parse_counters(COUNTERS_PAGE)
    table = render_table(build_status(config, facts, squid_section("127.0.0.1:3128", counters),
                                      now))
    assert "Squid 127.0.0.1:3128 (since it started): 40 requests, 30 hits (75.0%); " \
           "2.0 MiB sent, 1.5 MiB from cache (75.0%)" in table
    assert "listed/9/x86_64  mirrorlist http://list.example/ml?r=9&a=x86_64" in table
    assert "list fetched 30s ago; 5 answers memoised, 1 not found; surveyed 20s ago, 1 fresh" \
        in table
    lines = {line.split()[0]: line for line in table.splitlines() if line.startswith("  http")}
    assert "healthy" in lines[A] and "12 ms" in lines[A] and "3s ago: HEAD 200 (0.01s)" in \
        lines[A]
    assert "unhealthy until" in lines[B] and "(in 1m50s): connection failed" in lines[B]
    assert "on probation" in lines[C] and "unusable" in lines[C]
    assert "No traffic yet: quiet" in table


def test_squid_not_reachable_is_one_sentence(config):
    problem = "Squid at 127.0.0.1:1: connection failed (refused); is it running?"
    status = build_status(config, MemoFacts(config.cache_dir, NO_TRAFFIC),
                          squid_section("127.0.0.1:1", problem), NOW)
    assert f"Squid: {problem}" in render_table(status)
    assert status["squid"]["reachable"] is False and status["squid"]["hits"] is None


def test_the_exposition_carries_the_status_counters(config):
    now = time.time()
    populate(config, now=now)
    status = build_status(config, read_memo(config, now=now),
                          squid_section("127.0.0.1:3128", parse_counters(COUNTERS_PAGE)), now)
    families = {f.name: f for f in text_string_to_metric_families(exposition(status))}
    assert all(name.startswith("squid_helper_") for name in families)
    assert all(family.documentation for family in families.values())

    def value(name: str, **labels) -> float:
        for sample in families[name].samples:
            if all(sample.labels.get(k) == v for k, v in labels.items()) and \
                    sample.name in (name, name + "_total"):
                return sample.value
        raise AssertionError(f"no {name} {labels}")

    tree = {"repo": "listed", "releasever": "9", "arch": "x86_64"}
    assert value("squid_helper_memo_answers", **tree) == 5
    assert value("squid_helper_memo_not_found", **tree) == 1
    assert value("squid_helper_mirror_list_age_seconds", **tree) == pytest.approx(30)
    assert value("squid_helper_mirror_fresh", mirror=A, **tree) == 1
    assert value("squid_helper_mirror_fresh", mirror=B, **tree) == 0
    assert value("squid_helper_mirror_health", host="b.example", state="unhealthy") == 1
    assert value("squid_helper_mirror_health", host="b.example", state="healthy") == 0
    assert value("squid_helper_mirror_health", host="c.example:8080", state="probation") == 1
    assert value("squid_helper_mirror_latency_seconds", host="a.example") == \
        pytest.approx(0.012)
    assert value("squid_helper_mirror_last_probe_success", host="b.example") == 0
    assert value("squid_helper_squid_requests", proxy="127.0.0.1:3128") == 40
    assert families["squid_helper_squid_requests"].type == "counter"
    assert value("squid_helper_squid_hits", proxy="127.0.0.1:3128") == 30
    assert value("squid_helper_squid_hit_sent_bytes", proxy="127.0.0.1:3128") == 1536 * 1024
    assert value("squid_helper_squid_hit_ratio", proxy="127.0.0.1:3128") == 0.75
    assert value("squid_helper_squid_up", proxy="127.0.0.1:3128") == 1


# -- Squid's counters ----------------------------------------------------------------------------
def test_counters_page_parsed():
    counters = parse_counters(COUNTERS_PAGE)
    assert counters == SquidCounters(40, 30, 1, 2048 * 1024, 1536 * 1024, 1795648923.766704)
    assert counters.hit_ratio == 0.75 and counters.byte_hit_ratio == 0.75
    assert parse_counters(COUNTERS_PAGE.replace("= 40", "= 0")).hit_ratio is None
    with pytest.raises(SquidUnreachable, match="client_http.hits"):
        parse_counters("client_http.requests = 1\n")


def test_proxy_addresses():
    assert split_proxy("127.0.0.1:3128") == ("127.0.0.1", 3128)
    assert split_proxy("proxyhost") == ("proxyhost", 3128)
    assert split_proxy("[::1]:8080") == ("::1", 8080)
    with pytest.raises(ValueError):
        split_proxy("host:port")


# -- the last probe, recorded off the request path -----------------------------------------------
def test_last_probe_is_written_by_the_background(config):
    memo = Memo.of(config)
    life = Lifetimes(config)
    background = ThreadPoolExecutor(max_workers=1)
    log = ProbeLog(memo, life, background)
    try:
        blocker = background.submit(time.sleep, 0.3)  # the background is busy a moment
        for index in range(50):
            log.note("a.example", ProbeResult(f"{A}p{index}", FOUND, "HEAD 200", 0.01))
        log.note("b.example", ProbeResult(B, FAILED, "connection failed", 0.0))
        # Nothing was written on the caller's thread: the write waits for the background.
        assert memo.last(life.last_probe("a.example")) is None
        blocker.result()
    finally:
        background.shutdown(wait=True)
    stored = memo.last(life.last_probe("a.example"))
    assert stored.value["url"] == f"{A}p49" and stored.value["detail"] == "HEAD 200"
    assert memo.last(life.last_probe("b.example")).value["outcome"] == FAILED
    memo.close()


# -- the command ---------------------------------------------------------------------------------
def test_a_source_that_failed_before_any_list_shows_under_no_traffic(config):
    """The internet is unreachable: the first request for a repo finds its mirror list host
    dead, and no tree is ever memoised. Status still says why, from the host's health."""
    now = time.time()
    memo = Memo.of(config)
    life = Lifetimes(config)
    memo.put(life.unhealthy("list.example"), "connection failed", at=now - 5)
    memo.put(life.last_probe("list.example"), {"url": "http://list.example/ml?r=9&a=x86_64",
                                               "outcome": FAILED, "detail": "connection failed",
                                               "elapsed": 0.002}, at=now - 5)
    memo.close()
    status = build_status(config, read_memo(config), squid_section(None, None), now)
    listed = next(r for r in status["repos"] if r["name"] == "listed")
    assert listed["trees"] == []
    assert listed["source_host"]["host"] == "list.example"
    assert listed["source_host"]["health"] == "unhealthy"
    assert listed["source_host"]["last_probe"]["outcome"] == FAILED
    assert next(r for r in status["repos"] if r["name"] == "static")["source_host"] is None
    table = render_table(status)
    assert "  listed: its mirrorlist host list.example is unhealthy until" in table
    assert "connection failed; last answer 5s ago: connection failed" in table
    json.dumps(status)  # still one JSON document


# -- status's own reads of the counters --------------------------------------------------------
def test_earlier_reads_of_the_counters_are_not_requests():
    """Each read of the counters page is a request Squid counts once it has answered it: the
    next page shows it. Three reads with no client traffic leave the figures alone."""
    seen, tally = [], ReadTally()
    for reads in range(3):
        page = dataclasses.replace(parse_counters(COUNTERS_PAGE), requests=40 + reads,
                       bytes_sent=2048 * 1024 + reads * 1600)
        adjusted, tally = without_reads(page, tally, 1600)
        seen.append((adjusted.requests, adjusted.hit_ratio, adjusted.bytes_sent))
    assert seen == [(40, 0.75, 2048 * 1024)] * 3
    # A restarted Squid (fewer requests, less CPU time) starts the tally again.
    fresh = dataclasses.replace(parse_counters(COUNTERS_PAGE), requests=4, hits=1, cpu_time=0.5)
    adjusted, tally = without_reads(fresh, tally, 1600)
    assert adjusted.requests == 4 and tally.reads == 1
    # Never more than Squid's non-hits are taken away.
    adjusted, _ = without_reads(fresh, ReadTally(reads=99), 0)
    assert adjusted.requests == 1 and adjusted.hits == 1
