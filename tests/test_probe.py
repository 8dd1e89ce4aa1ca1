"""One probe against real mirrors on 127.0.0.1: one time limit, and only the mirror's failures
count against it."""

from __future__ import annotations

import time

import pytest
import requests

from lab.mirrors import DRIP, GOOD, NO_HEAD, MirrorServer
from lab.wait import wait_for
from squid_helper.probe import FAILED, FOUND, Prober


@pytest.fixture
def slow_head_refuser(snapshots):
    # Refuses HEAD (405) after 0.6 s, and answers the ranged GET after 0.6 s more.
    with MirrorServer(snapshots["new"], NO_HEAD, delay=0.6) as server:
        yield server


def test_head_and_its_fallback_share_one_time_limit(slow_head_refuser):
    prober = Prober(timeout=1.0)
    try:
        started = time.monotonic()
        result = prober.probe(slow_head_refuser.url + "Packages/common-1.0.rpm")
        took = time.monotonic() - started
    finally:
        prober.close()
    # Each request alone fits the limit; both together do not. It used to take 1.2 s and
    # count as found: a probe could last about twice probe_timeout (four times, hanging).
    assert result.outcome == FAILED and "timeout" in result.detail, result
    assert took < 1.5, took  # one limit plus scheduling slack, not two


def test_the_fallback_gets_what_is_left_and_succeeds_within_it(snapshots):
    with MirrorServer(snapshots["new"], NO_HEAD, delay=0.2) as server:
        prober = Prober(timeout=1.0)
        try:
            result = prober.probe(server.url + "Packages/common-1.0.rpm")
        finally:
            prober.close()
    assert result.outcome == FOUND and result.detail == "GET 206 after HEAD 405", result


def test_a_bug_in_a_probe_is_raised_not_blamed_on_the_mirror(snapshots, monkeypatch):
    with MirrorServer(snapshots["new"]) as server:
        prober = Prober(timeout=1.0)

        def broken(*args, **kwargs):
            raise TypeError("a bug of ours")

        monkeypatch.setattr(requests.Session, "head", broken)
        try:
            with pytest.raises(TypeError):
                prober.probe(server.url + "Packages/common-1.0.rpm")
        finally:
            prober.close()


def test_network_failures_are_the_mirrors(snapshots):
    with MirrorServer(snapshots["new"]) as server:
        url = server.url
    prober = Prober(timeout=1.0)
    try:
        result = prober.probe(url + "Packages/common-1.0.rpm")  # nothing listens any more
    finally:
        prober.close()
    assert result.outcome == FAILED and result.detail == "connection failed"


@pytest.mark.parametrize("call", ["probe", "fetch"])
def test_a_mirror_that_drips_its_answer_is_cut_off_at_the_time_limit(call):
    """requests' timeouts bound each read, not the whole answer: a mirror that sends a byte
    every DRIP_INTERVAL would hold a probe (or a mirror list fetch, on the client's request
    path) for as long as it likes."""
    with MirrorServer(behaviour=DRIP) as server:
        prober = Prober(timeout=1.0)
        try:
            started = time.monotonic()
            result = getattr(prober, call)(server.url + "Packages/common-1.0.rpm")
            took = time.monotonic() - started
            # The connection is cut, not merely abandoned: the mirror sees its client go.
            assert wait_for(lambda: server.connections == set(), timeout=5)
        finally:
            prober.close()
    assert result.outcome == FAILED and result.detail == "timeout after 1.0s", result
    assert took < 1.5, took


@pytest.mark.parametrize("call", ["probe", "fetch"])
def test_a_mirror_cut_off_once_is_asked_again_on_a_new_connection(snapshots, call):
    """The cut connection is not reused, and a finished call's time limit cuts nothing later:
    its connection, kept alive in the pool, serves the calls that follow past that limit."""
    with MirrorServer(snapshots["new"], behaviour=DRIP) as server:
        prober = Prober(timeout=1.0)
        url = server.url + "repodata/repomd.xml"
        try:
            assert getattr(prober, call)(url).outcome == FAILED
            server.behaviour = GOOD
            results = [getattr(prober, call)(url)]
            time.sleep(1.2)  # past the first good call's limit
            results.append(getattr(prober, call)(url))
        finally:
            prober.close()
        assert [r.outcome for r in results] == [FOUND, FOUND], results
        assert server.accepted == 2  # the cut connection, then one kept alive for both


def test_an_upstream_proxy_that_drips_is_cut_off_at_the_time_limit():
    """The same limit through upstream_proxy (a MirrorServer receives a proxy request's
    absolute URL as its path: dripping, it stands for a proxy relaying a dripping mirror)."""
    with MirrorServer(behaviour=DRIP) as proxy:
        prober = Prober(timeout=1.0, proxy=proxy.url.rstrip("/"))
        try:
            started = time.monotonic()
            results = [prober.probe("http://mirror.invalid/pub/Packages/a.rpm"),
                       prober.fetch("http://mirror.invalid/pub/repodata/repomd.xml")]
            took = time.monotonic() - started
        finally:
            prober.close()
    assert [(r.outcome, r.detail) for r in results] == [(FAILED, "timeout after 1.0s")] * 2
    assert took < 3, took
