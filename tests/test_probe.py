"""One probe against real mirrors on 127.0.0.1: one time limit, and only the mirror's failures
count against it."""

from __future__ import annotations

import time

import pytest
import requests

from lab.mirrors import NO_HEAD, MirrorServer
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
