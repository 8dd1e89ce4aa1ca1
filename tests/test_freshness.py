"""A push upstream reaches the answers: the metalink's hashes follow the repodata, a mirror newer
than the metalink is acted on, and a client asking for fresh metadata gets a fresh check.

Mirrors A and B carry snapshot 1 and the metalink announces it; A is the faster, so it is
chosen. Then the push: the metalink announces snapshot 2 (snapshot 1 as an alternate) and B
syncs it; A has not yet.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Iterator

import pytest

from lab.helper import HelperProcess, rewritten_url, write_config
from lab.mirrors import MirrorServer, make_snapshot, metalink_xml, repomd_xml
from lab.wait import wait_for
from squid_helper.squid.helperloop import TOKEN_CHECK_SECONDS

BASE = "http://repoproxy/test/9/x86_64/"
REPOMD = BASE + "repodata/repomd.xml"
FRESH_REQUEST = "127.0.0.1/- - GET myip=127.0.0.1 myport=3128 cache-control=no-cache " \
                "pragma=no-cache"
OLD, NEW = 1000, 2000


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Dict[str, object]]:
    one = make_snapshot(tmp_path / "one", OLD, ["common-1.0.rpm"])
    two = make_snapshot(tmp_path / "two", NEW, ["common-1.0.rpm", "new-2.0.rpm"])
    a = MirrorServer(one).start()
    b = MirrorServer(one, delay=0.05).start()  # slower: A is chosen while both are alike
    source = MirrorServer(documents={"/metalink": metalink_xml([a.url, b.url],
                                                               repomd_xml(OLD))}).start()
    try:
        yield {"a": a, "b": b, "source": source, "two": two}
    finally:
        for server in (a, b, source):
            server.stop()


def surveyed(tmp_path: Path, times: int = 1) -> bool:
    """Whether the helper's survey of the mirrors has completed (B, the slower, answered too)
    `times` times: a push before that would be seen by the first survey already."""
    return wait_for(lambda: (tmp_path / "helper.log").read_text().count(
        "survey of test/9/x86_64 complete") >= times)


def push(lab: Dict[str, object]) -> None:
    """The metalink announces snapshot 2, B syncs it, A lags behind."""
    a, b, source = lab["a"], lab["b"], lab["source"]
    b.root = lab["two"]
    source.documents["/metalink"] = metalink_xml([a.url, b.url], repomd_xml(NEW),
                                                 alternates=[repomd_xml(OLD)])


def config(tmp_path: Path, lab, **settings) -> Path:
    return write_config(tmp_path, {"test": {"metalink": lab["source"].url + "metalink"}},
                        **settings)


def metalink_fetches(lab) -> int:
    return lab["source"].count("GET", "/metalink")


def test_the_metalink_is_read_again_when_a_repomd_answer_expires(tmp_path, lab):
    a, b = lab["a"], lab["b"]
    with HelperProcess(config(tmp_path, lab, metadata_ttl=1, mirrorlist_ttl=3600)) as helper:
        assert rewritten_url(helper.ask(REPOMD)) == a.url + "repodata/repomd.xml"
        assert surveyed(tmp_path)
        push(lab)
        time.sleep(1.2)
        # The new repomd.xml comes from the mirror that has it, never from A ...
        assert rewritten_url(helper.ask(REPOMD)) == b.url + "repodata/repomd.xml"
        # ... and so do the packages only snapshot 2 has.
        assert rewritten_url(helper.ask_settled(BASE + "Packages/new-2.0.rpm")) == \
            b.url + "Packages/new-2.0.rpm"
        assert a.count(path_contains="new-2.0.rpm") == 0
    assert metalink_fetches(lab) == 2


def test_within_metadata_ttl_the_metalink_is_not_read_again(tmp_path, lab):
    with HelperProcess(config(tmp_path, lab, metadata_ttl=3600)) as helper:
        for _ in range(3):
            helper.ask(REPOMD)
            helper.ask(BASE + "Packages/common-1.0.rpm")
    assert metalink_fetches(lab) == 1


def test_a_client_asking_for_fresh_metadata_pulls_the_push_through_at_once(tmp_path, lab):
    a, b = lab["a"], lab["b"]
    settings = {"metadata_ttl": 3600, "refresh_interval": 1}
    with HelperProcess(config(tmp_path, lab, **settings)) as helper:
        assert rewritten_url(helper.ask(REPOMD, FRESH_REQUEST)) == a.url + "repodata/repomd.xml"
        assert surveyed(tmp_path)
        push(lab)
        time.sleep(1.1)  # the previous check was this long ago: another one is allowed
        # A plain request is answered from the memo; one with no-cache checks again.
        assert rewritten_url(helper.ask(REPOMD)) == a.url + "repodata/repomd.xml"
        assert rewritten_url(helper.ask(REPOMD, FRESH_REQUEST)) == b.url + "repodata/repomd.xml"
        # The answer holds for everyone now (replies reused in process notice the change
        # within TOKEN_CHECK_SECONDS), and further no-cache requests within the interval cost
        # nothing more.
        assert wait_for(lambda: rewritten_url(helper.ask(REPOMD)) == b.url +
                        "repodata/repomd.xml", timeout=TOKEN_CHECK_SECONDS + 0.2, step=0.02)
        for _ in range(5):
            assert rewritten_url(helper.ask(REPOMD, FRESH_REQUEST)) == \
                b.url + "repodata/repomd.xml"
    assert metalink_fetches(lab) == 2


def test_a_mirror_newer_than_the_metalink_makes_the_helper_read_it_again(tmp_path, lab):
    """A package request after metadata_ttl gets the list it had at once (the metalink is
    refetched in the background) and a new survey decides on A, which still matches it. When
    B answers, newer than that metalink, the helper reads the metalink again at once and
    judges the mirrors by its new hashes: the package's verification, and so dnf's retry
    after A's 404, goes to B."""
    a, b = lab["a"], lab["b"]
    with HelperProcess(config(tmp_path, lab, metadata_ttl=1, refresh_interval=60)) as helper:
        assert rewritten_url(helper.ask(REPOMD)) == a.url + "repodata/repomd.xml"
        assert surveyed(tmp_path)
        push(lab)
        time.sleep(1.2)
        assert rewritten_url(helper.ask_settled(BASE + "Packages/new-2.0.rpm")) == \
            b.url + "Packages/new-2.0.rpm"
        assert surveyed(tmp_path, times=2)
    log = (tmp_path / "helper.log").read_text()
    assert "the metalink changed: judging the mirrors by its new hashes" in log, log
    assert 2 <= metalink_fetches(lab) <= 3  # the first, the refetch after metadata_ttl, and
    # the one the evidence of a push asked for, unless that found the refetch still running


def test_a_mirror_newer_than_a_lagging_metalink_is_used_for_what_it_alone_has(tmp_path, lab):
    """The metalink has not caught up with the push (MirrorManager crawls later): B's newer
    repomd.xml matches nothing in it. B is not treated as stale: a package only it has is
    answered with B, while repomd.xml still follows the metalink."""
    a, b = lab["a"], lab["b"]
    with HelperProcess(config(tmp_path, lab, metadata_ttl=1, refresh_interval=60)) as helper:
        assert rewritten_url(helper.ask(REPOMD)) == a.url + "repodata/repomd.xml"
        assert surveyed(tmp_path)
        b.root = lab["two"]  # B synced; the metalink still announces snapshot 1
        time.sleep(1.2)
        assert rewritten_url(helper.ask(REPOMD)) == a.url + "repodata/repomd.xml"
        assert rewritten_url(helper.ask_settled(BASE + "Packages/new-2.0.rpm")) == \
            b.url + "Packages/new-2.0.rpm"
    # The evidence of a push made the helper read the metalink again, once (rate-limited).
    assert metalink_fetches(lab) == 3
