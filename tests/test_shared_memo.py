"""The memo a fleet of proxies shares in Redis (memo: redis://...): answers, mirror health,
single flight and the generation are one view for every helper of every proxy; with Redis
gone, each helper answers from its local memo, and uses Redis again once it is back.

Real redis-server (lab.redis), real helper processes, real mirrors on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lab.helper import HelperProcess, helper_command, rewritten_url, write_config
from lab.mirrors import MirrorServer
from lab.wait import wait_for
from squid_helper.config.files import parse_config
from squid_helper.facts.lifetimes import BASE_INDEX_KEY, Fact
from squid_helper.facts.memo import Memo
from squid_helper.facts.stores import REDIS_PREFIX
from squid_helper.redaction import redacted

BASE = "http://repoproxy/test/9/x86_64/"


def shared_memo(tmp_path: Path, name: str, url: str) -> Memo:
    return Memo(str(tmp_path / name), shared=url)


def test_two_proxies_memos_share_facts_locks_and_the_generation(tmp_path, redis_server):
    one = shared_memo(tmp_path, "one", redis_server.url)
    two = shared_memo(tmp_path, "two", redis_server.url)
    try:
        answer = Fact("path:test/9/x86_64/images/boot.iso", 60.0, 120.0)
        assert one.put(answer, {"url": "http://m/images/boot.iso"})
        assert two.fresh(answer).value == {"url": "http://m/images/boot.iso"}
        # One winner across proxies for what only one may do (a forced refresh, say).
        check = Fact("refresh-check:test/9/x86_64", 30.0, 30.0)
        assert one.put_new(check, "one") and not two.put_new(check, "two")
        # Counters (the probe budget of a mirror host) add up across proxies.
        budget = Fact("probes:mirror:1", 1.0, 2.0)
        assert [one.count(budget), two.count(budget), one.count(budget)] == [1, 2, 3]
        # The base index keeps the first value of each key, whoever adds later.
        one.add_to_dict(BASE_INDEX_KEY, {"http://a/": "test/9/x86_64"}, None)
        two.add_to_dict(BASE_INDEX_KEY, {"http://a/": "other", "http://b/": "test/9/x86_64"},
                        None)
        assert one.get(BASE_INDEX_KEY) == {"http://a/": "test/9/x86_64",
                                         "http://b/": "test/9/x86_64"}
        # Single flight: a lock with an owner token and an expiry.
        first = one.try_lock("probe:x", 0.3)
        assert first and two.try_lock("probe:x", 5.0) is None and two.locked("probe:x")
        assert wait_for(lambda: not two.locked("probe:x"), timeout=5)  # it expired
        second = two.try_lock("probe:x", 5.0)
        assert second and second != first
        one.unlock("probe:x", first)  # the first holder's late unlock releases nothing
        assert one.locked("probe:x")
        two.unlock("probe:x", second)
        assert not one.locked("probe:x")
        # A purge on one proxy reaches the other's in-process copies.
        before = two.generation()
        one.bump_generation()
        assert wait_for(lambda: two.generation() != before, timeout=2)
        # Nothing of it went to the local directories.
        assert not (tmp_path / "one" / "cache.db").exists()
    finally:
        one.close()
        two.close()


def test_values_in_redis_cannot_run_code_in_the_helpers(tmp_path, redis_server):
    import redis

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    client = redis.Redis.from_url(redis_server.url)
    client.set(REDIS_PREFIX + "path:evil", pickle.dumps(Payload()))
    client.close()
    memo = shared_memo(tmp_path, "local", redis_server.url)
    try:
        assert memo.get("path:evil") is None
        assert memo.set("path:fine", {"url": "http://m/x"}, None)
        assert memo.get("path:fine") == {"url": "http://m/x"}  # the store still works
    finally:
        memo.close()
    assert not marker.exists()


def test_redis_down_hands_over_to_the_local_memo_once_and_back(tmp_path, redis_server,
                                                               caplog):
    caplog.set_level(logging.INFO, logger="squid_helper.memo")
    memo = shared_memo(tmp_path, "local", redis_server.url)
    other = shared_memo(tmp_path, "other", redis_server.url)
    fact = Fact("path:test/9/x86_64/a", 60.0, 120.0)
    try:
        assert memo.put(fact, "in redis")
        redis_server.stop()
        # No exception and no stall: the local memo answers (it knows nothing yet) ...
        assert memo.fresh(fact) is None
        # ... and keeps what this helper learns meanwhile.
        assert memo.put(fact, "local")
        assert memo.fresh(fact).value == "local"
        assert memo.try_lock("x", 5.0) and memo.try_lock("x", 5.0) is None
        assert (tmp_path / "local" / "cache.db").exists()
        outage = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(outage) == 1, outage
        assert f"shared memo {redis_server.url} unreachable" in outage[0]
        redis_server.start()  # an empty Redis on the same port
        assert wait_for(lambda: memo.fresh(fact) is None, timeout=15), \
            "still answering from the local memo"
        assert memo.put(fact, "shared again")
        assert other.fresh(fact).value == "shared again"
        assert any("is back" in r.getMessage() for r in caplog.records)
    finally:
        memo.close()
        other.close()


def test_a_redis_that_refuses_writes_is_complained_about_once(tmp_path, redis_server, caplog):
    """Out of memory (maxmemory, noeviction), Redis answers PING but refuses every write: the
    helper answers from its local memo, reconnects every second, and says so once."""
    import redis

    caplog.set_level(logging.INFO, logger="squid_helper.memo")
    admin = redis.Redis.from_url(redis_server.url)
    memo = shared_memo(tmp_path, "local", redis_server.url)
    fact = Fact("path:test/9/x86_64/b", 60.0, 120.0)
    try:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")
        deadline = 3.0  # three reconnections, each followed by a refused write
        started = time.monotonic()
        while time.monotonic() - started < deadline:
            assert memo.put(fact, "written")  # the local memo took it
            time.sleep(0.1)
        messages = [r.getMessage() for r in caplog.records]
        assert sum("unreachable" in m for m in messages) == 1, messages
        assert sum("is back" in m for m in messages) <= 1, messages
        admin.config_set("maxmemory", "0")
        assert wait_for(lambda: memo.put(fact, "shared") and admin.exists(REDIS_PREFIX
                                                                          + fact.key),
                        timeout=10)
    finally:
        admin.close()
        memo.close()


def test_redis_urls_are_checked_and_passwords_stay_out_of_logs():
    config = parse_config("memo: redis://:s3cret@redis.lab:6380/2\n"
                          "repos: {x: {mirrors: ['http://m/']}}\n")
    assert config.memo == "redis://:s3cret@redis.lab:6380/2"
    assert redacted(config.memo) == "redis://:***@redis.lab:6380/2"
    assert redacted("redis://redis.lab:6379/0") == "redis://redis.lab:6379/0"
    with pytest.raises(Exception) as info:
        parse_config("memo: http://:s3cret@redis.lab/0\nrepos: {x: {mirrors: ['http://m/']}}\n")
    assert "memo" in str(info.value) and "redis://redis-host:6379/0" in str(info.value)
    assert "s3cret" not in str(info.value)


# -- real helper processes of two proxies ---------------------------------------------------------
@pytest.fixture
def two_mirrors(snapshots):
    """Two good mirrors of one snapshot, with a file that is probed before it is answered."""
    image = snapshots["new"] / "images"
    image.mkdir(exist_ok=True)
    for name in ("boot.iso", "second.iso", "third.iso", "fourth.iso"):
        (image / name).write_bytes(b"image " + name.encode())
    with MirrorServer(snapshots["new"]) as one, MirrorServer(snapshots["new"]) as two:
        yield one, two


def probes(mirrors, name: str) -> int:
    """Requests of any kind for one path at the mirrors (HEAD probes, ranged GETs)."""
    return sum(m.count(None, "/images/" + name) for m in mirrors)


def helper_of_proxy(tmp_path: Path, name: str, mirrors, url: str) -> Path:
    directory = tmp_path / name
    directory.mkdir()
    return write_config(directory, {"test": {"mirrors": [m.url for m in mirrors]}}, memo=url)


def test_a_path_probed_by_one_proxys_helper_is_not_probed_by_anothers(tmp_path, two_mirrors,
                                                                        redis_server):
    one = helper_of_proxy(tmp_path, "proxy1", two_mirrors, redis_server.url)
    two = helper_of_proxy(tmp_path, "proxy2", two_mirrors, redis_server.url)
    with HelperProcess(one) as first, HelperProcess(two) as second:
        answer = rewritten_url(first.ask(BASE + "images/boot.iso"))
        assert answer and answer.endswith("/images/boot.iso")
        probed = probes(two_mirrors, "boot.iso")
        surveyed = sum(m.count("GET", "repomd.xml") for m in two_mirrors)
        assert probed >= 1
        # Proxy 2's helper answers the same from the shared memo: no probe, no survey.
        assert rewritten_url(second.ask(BASE + "images/boot.iso")) == answer
        assert probes(two_mirrors, "boot.iso") == probed
        assert sum(m.count("GET", "repomd.xml") for m in two_mirrors) == surveyed
    for log in (tmp_path / "proxy1" / "helper.log", tmp_path / "proxy2" / "helper.log"):
        assert "unreachable" not in log.read_text()


def test_both_proxies_keep_answering_while_redis_is_down_and_share_again_after(
        tmp_path, two_mirrors, redis_server):
    one = helper_of_proxy(tmp_path, "proxy1", two_mirrors, redis_server.url)
    two = helper_of_proxy(tmp_path, "proxy2", two_mirrors, redis_server.url)
    logs = [tmp_path / "proxy1" / "helper.log", tmp_path / "proxy2" / "helper.log"]
    with HelperProcess(one) as first, HelperProcess(two) as second:
        helpers = (first, second)
        for helper in helpers:
            assert rewritten_url(helper.ask(BASE + "images/boot.iso"))

        redis_server.stop()  # mid-run, as a crashed Redis host
        for helper in helpers:
            # Known paths, new paths, repeated: every line answered with a mirror URL.
            for name in ("boot.iso", "second.iso", "second.iso"):
                reply = helper.ask(BASE + "images/" + name)
                assert rewritten_url(reply), reply
        for log in logs:
            text = log.read_text()
            assert text.count("unreachable") == 1, text[-3000:]
            assert "answering from the local memo" in text

        redis_server.start()
        for helper, log in zip(helpers, logs):
            def shared_again(helper=helper, log=log) -> bool:
                return bool(rewritten_url(helper.ask(BASE + "images/boot.iso"))) \
                    and "is back" in log.read_text()
            assert wait_for(shared_again, timeout=20, step=0.2), log.read_text()[-3000:]
        # Shared again: a path one proxy probed is not probed by the other.
        assert rewritten_url(first.ask(BASE + "images/third.iso"))
        probed = probes(two_mirrors, "third.iso")
        assert probed >= 1
        assert rewritten_url(second.ask(BASE + "images/third.iso"))
        assert probes(two_mirrors, "third.iso") == probed


def test_status_and_metrics_show_what_the_fleets_helpers_share_in_redis(tmp_path, two_mirrors,
                                                                         redis_server):
    """`status` and `metrics` read the facts where the helpers keep them: with memo: redis://,
    each proxy's operator sees the answers and mirrors of every proxy's helpers."""
    one = helper_of_proxy(tmp_path, "proxy1", two_mirrors, redis_server.url)
    two = helper_of_proxy(tmp_path, "proxy2", two_mirrors, redis_server.url)
    with HelperProcess(one) as first, HelperProcess(two) as second:
        assert rewritten_url(first.ask_settled(BASE + "images/boot.iso"))
        assert rewritten_url(second.ask_settled(BASE + "images/second.iso"))
        assert rewritten_url(second.ask_settled(BASE + "images/none.iso")) is None
    # (stopped: what the helpers noted in the background, their last probes, is written)
    hosts = {m.url[len("http://"):-1] for m in two_mirrors}
    for config in (one, two):
        result = subprocess.run([*helper_command(), "status", "--config", str(config), "--json",
                                 "--no-squid"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        assert status["memo"]["state"] == "ok", status["memo"]
        assert status["memo"]["store"] == redis_server.url
        (repo,) = status["repos"]
        (tree,) = repo["trees"]
        assert (tree["releasever"], tree["arch"], tree["answers"], tree["not_found"]) == \
            ("9", "x86_64", 2, 1)
        assert [m["url"] for m in tree["mirrors"]] == [m.url for m in two_mirrors]
        assert {m["host"] for m in tree["mirrors"]} == hosts
        probed = [m for m in tree["mirrors"] if m["last_probe"] is not None]
        assert probed and all(m["health"] == "healthy" for m in tree["mirrors"])

        result = subprocess.run([*helper_command(), "metrics", "--config", str(config),
                                 "--no-squid"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(result.stdout)
                   for s in family.samples}
        tree_labels = (("arch", "x86_64"), ("releasever", "9"), ("repo", "test"))
        assert samples[("squid_helper_memo_answers", tree_labels)] == 2
        assert samples[("squid_helper_memo_not_found", tree_labels)] == 1
        for host in hosts:
            assert samples[("squid_helper_mirror_health",
                            (("host", host), ("state", "healthy")))] == 1
    # Everything was in Redis: nothing in the proxies' own memo directories.
    assert not (tmp_path / "proxy1" / "memo" / "cache.db").exists()
    assert not (tmp_path / "proxy2" / "memo" / "cache.db").exists()


def test_status_says_when_the_fleets_redis_does_not_answer(tmp_path, redis_server):
    config = write_config(tmp_path, {"test": {"mirrors": ["http://127.0.0.1:1/"]}},
                          memo=redis_server.url)
    redis_server.stop()
    result = subprocess.run([*helper_command(), "status", "--config", str(config), "--json",
                             "--no-squid"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    memo = json.loads(result.stdout)["memo"]
    assert memo["state"] == "unreadable" and redis_server.url in memo["problem"], memo
