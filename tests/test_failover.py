"""The rewrite helper as Squid drives it, against real mirrors on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from lab.helper import HelperProcess, rewritten_url, write_config
from lab.mirrors import MirrorServer, metalink_xml
from lab.wait import wait_for
from squid_helper.squid.helperloop import TOKEN_CHECK_SECONDS

from conftest import NEW_ONLY

PKG = "http://repoproxy/test/9/x86_64/Packages/"
REPOMD = "http://repoproxy/test/9/x86_64/repodata/repomd.xml"


def static(tmp_path: Path, bases, **settings) -> Path:
    return write_config(tmp_path, {"test": {"mirrors": list(bases)}}, **settings)


def assert_first_answer_after_death(tmp_path: Path, reply: str, dead: MirrorServer,
                                    path: str) -> None:
    """The first answer for a new package right after its mirror died: that mirror, at once
    (its death is not known yet: the client's fetch fails and dnf retries), unless the watch
    happened to look at the mirror in between and marked it, and then an error."""
    if rewritten_url(reply) is None:
        assert reply.startswith("ERR"), reply
        log = tmp_path / "helper.log"
        assert wait_for(lambda: f"watch: {dead.url}" in log.read_text(), 5), (
            reply, log.read_text()[-3000:])
    else:
        assert rewritten_url(reply) == dead.url + path, reply


def test_first_new_path_fails_over_to_the_good_mirror_quickly(tmp_path, fleet):
    good, hang, error, stale = fleet["good"], fleet["hang"], fleet["error"], fleet["stale"]
    config = static(tmp_path, [fleet["dead"], hang.url, error.url, stale.url, good.url],
                    probe_timeout=2)
    with HelperProcess(config) as helper:
        started = time.monotonic()
        first = helper.ask(PKG + "new-2.0.rpm")
        first_time = time.monotonic() - started
        assert rewritten_url(first) == good.url + "Packages/new-2.0.rpm", first
        assert first_time < 6, f"first new path took {first_time:.2f}s"

        hang_seen, error_seen = hang.count(), error.count()
        started = time.monotonic()
        replies = [helper.ask(PKG + name) for name in NEW_ONLY[1:21]]
        twenty_time = time.monotonic() - started
        assert [rewritten_url(r) for r in replies] == [
            good.url + "Packages/" + name for name in NEW_ONLY[1:21]]
        assert twenty_time < 4, f"20 new paths took {twenty_time:.2f}s"
        # Unhealthy mirrors are skipped, not waited on again.
        assert hang.count() == hang_seen
        assert error.count() == error_seen
        # The stale mirror never had these packages asked of it: the fresh one ranks first.
        assert stale.count(path_contains="/Packages/") == 0


def test_each_path_is_probed_once_then_answered_from_the_memo(tmp_path, fleet):
    good = fleet["good"]
    config = static(tmp_path, [good.url])
    with HelperProcess(config) as helper:
        for _ in range(5):
            assert rewritten_url(helper.ask(PKG + "common-1.0.rpm")) == \
                good.url + "Packages/common-1.0.rpm"
    assert good.count("HEAD", "/Packages/common-1.0.rpm") == 1


def test_head_refusing_mirror_is_verified_with_a_ranged_get(tmp_path, fleet):
    nohead = fleet["nohead"]
    config = static(tmp_path, [nohead.url])
    with HelperProcess(config) as helper:
        reply = helper.ask(PKG + "common-1.0.rpm")
        again = helper.ask(PKG + "common-1.0.rpm")  # after the background verification
    assert rewritten_url(reply) == nohead.url + "Packages/common-1.0.rpm"
    assert again == reply
    gets = [h for m, p, h in nohead.requests if m == "GET" and p.endswith("common-1.0.rpm")]
    assert nohead.count("HEAD", "common-1.0.rpm") == 1
    assert len(gets) == 1 and gets[0].get("Range") == "bytes=0-0"


def test_missing_everywhere_is_an_error_remembered_briefly(tmp_path, fleet):
    good, stale = fleet["good"], fleet["stale"]
    config = static(tmp_path, [stale.url, good.url], negative_ttl=30)
    with HelperProcess(config) as helper:
        # A package path goes at once to the mirror that served the current repomd.xml (its
        # own 404 reaches the client), while the helper looks for it on every mirror.
        optimistic = helper.ask(PKG + "nonexistent.rpm")
        second = helper.ask(PKG + "nonexistent.rpm")
        third = helper.ask(PKG + "nonexistent.rpm")
    assert rewritten_url(optimistic) == good.url + "Packages/nonexistent.rpm"
    assert second.startswith("ERR message=") and "no mirror has" in second
    assert third == second
    assert good.count("HEAD", "nonexistent.rpm") == 1
    assert stale.count("HEAD", "nonexistent.rpm") == 1


def test_stale_mirror_never_serves_what_only_the_new_snapshot_has_static(tmp_path, fleet):
    good, stale = fleet["good"], fleet["stale"]
    config = static(tmp_path, [stale.url, good.url])
    with HelperProcess(config) as helper:
        assert rewritten_url(helper.ask(REPOMD)) == good.url + "repodata/repomd.xml"
        # Settled: no verification of these is left to run into the fresh mirror's death.
        assert rewritten_url(helper.ask_settled(PKG + "new-2.0.rpm")).startswith(good.url)
        # Common packages go to the fresh mirror too: it ranks first now.
        assert rewritten_url(helper.ask_settled(PKG + "common-1.0.rpm")).startswith(good.url)
        good.stop()
        # With the fresh mirror gone, a new-only package is an error, not the stale mirror:
        # on the retry (at once only if the watch noticed the death first).
        first = helper.ask(PKG + "bulk-3.rpm")
        reply = helper.ask(PKG + "bulk-3.rpm")
        assert_first_answer_after_death(tmp_path, first, good, "Packages/bulk-3.rpm")
        assert not (rewritten_url(reply) or "").startswith(stale.url), reply
        assert reply.startswith("ERR")


def test_metalink_mirror_with_a_mismatching_repomd_is_skipped(tmp_path, fleet, snapshots):
    good, stale = fleet["good"], fleet["stale"]
    new_repomd = (snapshots["new"] / "repodata" / "repomd.xml").read_bytes()
    # The stale mirror has the higher preference: only the hash check keeps it out.
    document = metalink_xml([stale.url, good.url], new_repomd, preferences=[100, 50])
    with MirrorServer(documents={"/metalink": document}) as source:
        config = write_config(tmp_path, {"test": {
            "metalink": source.url + "metalink?repo=test-{releasever}&arch={arch}"}})
        with HelperProcess(config) as helper:
            assert rewritten_url(helper.ask(REPOMD)) == good.url + "repodata/repomd.xml"
            assert rewritten_url(helper.ask_settled(PKG + "new-2.0.rpm")).startswith(good.url)
            assert rewritten_url(helper.ask_settled(PKG + "common-1.0.rpm")).startswith(
                good.url)
            good.stop()
            # The first answer goes to the fresh mirror (its death is not known yet, unless
            # the watch noticed); the retry is an error, never the stale one.
            first = helper.ask(PKG + "bulk-4.rpm")
            reply = helper.ask(PKG + "bulk-4.rpm")
        assert_first_answer_after_death(tmp_path, first, good, "Packages/bulk-4.rpm")
        assert reply.startswith("ERR"), reply
        assert stale.count(path_contains="/Packages/") == 0
        assert source.count("GET", "/metalink") == 1


def test_mirrorlist_prefers_the_newest_repomd_over_list_order(tmp_path, fleet):
    good, stale = fleet["good"], fleet["stale"]
    listing = f"# mirrorlist for test\n\n{stale.url}\n{good.url}\n".encode()
    with MirrorServer(documents={"/mirrorlist": listing}) as source:
        config = write_config(tmp_path, {"test": {
            "mirrorlist": source.url + "mirrorlist?repo=test-{releasever}&arch={arch}"}})
        with HelperProcess(config) as helper:
            assert rewritten_url(helper.ask(REPOMD)) == good.url + "repodata/repomd.xml"
            assert rewritten_url(helper.ask(PKG + "new-2.0.rpm")).startswith(good.url)
        assert stale.count(path_contains="/Packages/") == 0


def test_old_key_mirrorurl_still_works(tmp_path, fleet):
    good = fleet["good"]
    with MirrorServer(documents={"/ml": good.url.encode() + b"\n"}) as source:
        config = write_config(tmp_path, {"test": {"mirrorurl": source.url + "ml"}})
        with HelperProcess(config) as helper:
            assert rewritten_url(helper.ask(PKG + "common-1.0.rpm")).startswith(good.url)


def test_two_processes_sharing_a_memo_probe_a_path_once(tmp_path, fleet):
    good = fleet["good"]
    config = static(tmp_path, [good.url])
    with HelperProcess(config) as one, HelperProcess(config) as two:
        # Warm the mirror survey, then race both processes on many new paths at once.
        assert rewritten_url(one.ask(PKG + "common-1.0.rpm")) == \
            good.url + "Packages/common-1.0.rpm"
        names = NEW_ONLY[:20]
        results = {}

        def run(name, helper):
            results[name] = helper.ask_many([PKG + n for n in names])

        threads = [threading.Thread(target=run, args=(n, h)) for n, h in (("one", one),
                                                                           ("two", two))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        # Answers may come before their verification (the repo's only mirror): the HEADs are
        # made in the background, and a helper that exits drops what is still queued.
        wait_for(lambda: all(good.count("HEAD", "/Packages/" + n) for n in names), timeout=20)
    for name in ("one", "two"):
        assert [rewritten_url(r) for r in results[name]] == [
            good.url + "Packages/" + n for n in names]
    for n in names:
        assert good.count("HEAD", "/Packages/" + n) == 1, n


def test_last_known_answer_is_used_when_no_mirror_answers(tmp_path, fleet):
    good = fleet["good"]
    config = static(tmp_path, [good.url], path_ttl=1, unhealthy_ttl=60)
    with HelperProcess(config) as helper:
        url = rewritten_url(helper.ask_settled(PKG + "common-1.0.rpm"))
        assert url == good.url + "Packages/common-1.0.rpm"
        good.stop()
        time.sleep(1.2)  # let the path answer go stale
        # At once (the mirror's death is not known yet), then as the last-known answer.
        assert rewritten_url(helper.ask_settled(PKG + "common-1.0.rpm")) == url
        # A path never seen before has no last-known answer.
        assert helper.ask_settled(PKG + "bulk-9.rpm").startswith("ERR message=")
    log = (tmp_path / "helper.log").read_text()
    assert "last-known" in log


def test_mirrorlist_kept_when_its_server_fails(tmp_path, fleet):
    good = fleet["good"]
    source = MirrorServer(documents={"/ml": good.url.encode() + b"\n"}).start()
    try:
        config = write_config(tmp_path, {"test": {"mirrorlist": source.url + "ml"}},
                              mirrorlist_ttl=1, path_ttl=1)
        with HelperProcess(config) as helper:
            assert rewritten_url(helper.ask(PKG + "common-1.0.rpm")) == \
                good.url + "Packages/common-1.0.rpm"
            source.stop()
            time.sleep(1.2)
            assert rewritten_url(helper.ask(PKG + "new-2.0.rpm")).startswith(good.url)
    finally:
        if not source.stopping.is_set():
            source.stop()


def test_no_mirrorlist_at_all_is_a_clear_error(tmp_path):
    with MirrorServer(documents={}) as source:
        config = write_config(tmp_path, {"test": {"mirrorlist": source.url + "missing"}})
        with HelperProcess(config) as helper:
            reply = helper.ask(PKG + "common-1.0.rpm")
    assert reply.startswith("ERR message=") and "no mirror list" in reply


def test_many_requests_in_flight_each_get_their_own_answer(tmp_path, fleet):
    good = fleet["good"]
    config = static(tmp_path, [fleet["dead"], good.url])
    urls = [PKG + n for n in NEW_ONLY] + ["http://example.org/x", "http://repoproxy/nope/1/x/y"]
    with HelperProcess(config) as helper:
        replies = helper.ask_many(urls * 3)
    for url, reply in zip(urls * 3, replies):
        if url.startswith(PKG):
            assert rewritten_url(reply) == good.url + url[len(PKG) - len("Packages/"):]
        elif "example.org" in url:
            assert reply == "ERR"
        else:
            assert reply.startswith("ERR message=") and "unknown repo" in reply


def test_accel_port_urls_map_by_myport(tmp_path, fleet):
    good = fleet["good"]
    config = static(tmp_path, [good.url])
    with HelperProcess(config) as helper:
        accel = helper.ask("http://proxyhost:5000/test/9/x86_64/Packages/common-1.0.rpm",
                           extras="127.0.0.2/- - GET myip=127.0.0.1 myport=5000")
        forward = helper.ask("http://proxyhost:5000/test/9/x86_64/Packages/common-1.0.rpm",
                             extras="127.0.0.2/- - GET myip=127.0.0.1 myport=3128")
    assert rewritten_url(accel) == good.url + "Packages/common-1.0.rpm"
    assert forward == "ERR"


def test_a_purge_in_another_process_is_seen_within_a_second(tmp_path, fleet):
    from squid_helper.config.files import load_config
    from squid_helper.facts.memo import Memo
    from squid_helper.resolve.resolver import Resolver
    from squid_helper.resolve.urls import map_url

    good = fleet["good"]
    config_path = static(tmp_path, [good.url])
    url = PKG + "common-1.0.rpm"
    with HelperProcess(config_path) as helper:
        for _ in range(3):  # verified once, then answered from the loop's reply cache
            assert rewritten_url(helper.ask(url)) == good.url + "Packages/common-1.0.rpm"
        assert good.count("HEAD", "common-1.0.rpm") == 1
        config = load_config(str(config_path))
        purger = Resolver(config, Memo(config.cache_dir))
        try:
            assert purger.forget(map_url(url, {}, config)) == 1
        finally:
            purger.close()
        # Within a second the helper notices, answers afresh and verifies the path again.
        assert wait_for(lambda: rewritten_url(helper.ask(url)) is not None
                        and good.count("HEAD", "common-1.0.rpm") == 2, timeout=1.0, step=0.05)


def test_a_mirror_found_dead_is_not_answered_for_paths_memoised_on_it(tmp_path, snapshots):
    """Health is one fact: once a probe for any path finds the mirror dead, no path is
    answered with it, memoised or reused by the helper loop, and those paths are verified
    again elsewhere. It used to answer them with the dead mirror for up to path_ttl."""
    with MirrorServer(snapshots["new"]) as backup:
        first = MirrorServer(snapshots["new"]).start()
        backup.delay = 0.02  # slower: the first mirror is chosen while it lives
        config = static(tmp_path, [first.url, backup.url], unhealthy_ttl=600)
        try:
            with HelperProcess(config) as helper:
                memoised = [PKG + "common-1.0.rpm", PKG + "new-2.0.rpm"]
                for url in memoised:
                    assert rewritten_url(helper.ask_settled(url)).startswith(first.url)
                    assert rewritten_url(helper.ask(url)).startswith(first.url)  # reused
                first.stop()
                # Another path's verification finds the mirror dead ...
                helper.ask_settled(PKG + "bulk-1.rpm")
                # ... and no path is answered with it any more (the loop's reused replies
                # notice within TOKEN_CHECK_SECONDS).
                for url in memoised:
                    assert wait_for(lambda url=url: rewritten_url(helper.ask(url)).startswith(
                        backup.url), timeout=TOKEN_CHECK_SECONDS + 0.2, step=0.02)
        finally:
            if not first.stopping.is_set():
                first.stop()
    assert backup.count("HEAD", "common-1.0.rpm") == 1  # verified again there


def test_a_mirror_that_comes_back_is_used_again(tmp_path, snapshots):
    with MirrorServer(snapshots["new"], delay=0.02) as backup:
        first = MirrorServer(snapshots["new"]).start()
        port = first.port
        config = static(tmp_path, [first.url, backup.url], unhealthy_ttl=1, path_ttl=1)
        with HelperProcess(config) as helper:
            assert rewritten_url(helper.ask_settled(PKG + "common-1.0.rpm")).startswith(
                first.url)
            first.stop()
            assert rewritten_url(helper.ask_settled(PKG + "new-2.0.rpm")).startswith(
                backup.url)
            revived = MirrorServer(snapshots["new"], port=port).start()
            try:
                time.sleep(1.2)  # unhealthy_ttl and the answers' path_ttl pass
                assert rewritten_url(helper.ask_settled(PKG + "bulk-2.rpm")).startswith(
                    revived.url)
            finally:
                revived.stop()


def test_one_failing_path_does_not_take_the_mirror_out(tmp_path, snapshots):
    """A 500 for one path is that path's answer (another mirror serves it); the host stays in
    use for every other path. A client could otherwise steer everyone off a mirror with one
    request. Several distinct paths failing within a minute do take it out."""
    # The backup is slower by far more than a loaded machine's jitter: the ranking by latency
    # must put the first mirror first whatever the load.
    with MirrorServer(snapshots["new"], delay=0.15) as backup, \
            MirrorServer(snapshots["new"]) as first:
        first.fail_paths["boom"] = (500, {})
        for name in ("boom-1.rpm", "boom-2.rpm", "boom-3.rpm"):
            (snapshots["new"] / "Packages" / name).write_bytes(b"rpm")
        config = static(tmp_path, [first.url, backup.url])
        with HelperProcess(config) as helper:
            assert rewritten_url(helper.ask_settled(PKG + "boom-1.rpm")) == \
                backup.url + "Packages/boom-1.rpm"
            others = [helper.ask_settled(PKG + name) for name in NEW_ONLY[:6]]
            assert all(rewritten_url(r).startswith(first.url) for r in others), others
            # Three distinct paths failing: now the host is out.
            for name in ("boom-2.rpm", "boom-3.rpm"):
                helper.ask_settled(PKG + name)
            assert rewritten_url(helper.ask_settled(PKG + NEW_ONLY[7])).startswith(backup.url)
    log = (tmp_path / "helper.log").read_text()
    assert "marked unhealthy" in log and "for 3 paths" in log, log[-2000:]


def test_a_mirror_asking_to_back_off_is_left_alone_for_as_long(tmp_path, snapshots):
    with MirrorServer(snapshots["new"], delay=0.02) as backup, \
            MirrorServer(snapshots["new"]) as first:
        config = static(tmp_path, [first.url, backup.url], unhealthy_ttl=600)
        with HelperProcess(config) as helper:
            assert rewritten_url(helper.ask_settled(PKG + "new-2.0.rpm")).startswith(first.url)
            first.fail_paths["Packages/"] = (429, {"Retry-After": "1"})
            assert rewritten_url(helper.ask_settled(PKG + "bulk-1.rpm")).startswith(backup.url)
            asked = first.count(path_contains="/Packages/")
            assert rewritten_url(helper.ask_settled(PKG + "bulk-2.rpm")).startswith(backup.url)
            assert first.count(path_contains="/Packages/") == asked  # left alone
            first.fail_paths.clear()
            time.sleep(1.1)  # Retry-After: 1 has passed; unhealthy_ttl (600 s) did not apply
            assert rewritten_url(helper.ask_settled(PKG + "bulk-3.rpm")).startswith(first.url)
    assert "asked to be left alone for 1s" in (tmp_path / "helper.log").read_text()
