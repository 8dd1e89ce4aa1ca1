"""One probe against real mirrors on 127.0.0.1: one time limit, and only the mirror's failures
count against it."""

from __future__ import annotations

import socket
import time

import pytest
import requests

from lab.mirrors import DRIP, GOOD, NO_HEAD, MirrorServer
from lab.tls import LabCA
from lab.wait import wait_for
from squid_helper.resolve.probe import FAILED, FOUND, Prober


@pytest.fixture
def slow_head_refuser(snapshots):
    # Refuses HEAD (405) after 0.6 s, and answers the ranged GET after 0.6 s more.
    with MirrorServer(snapshots["new"], NO_HEAD, delay=0.6) as server:
        yield server


def test_head_and_its_fallback_share_one_time_limit(slow_head_refuser):
    with Prober(timeout=1.0) as prober:
        started = time.monotonic()
        result = prober.probe(slow_head_refuser.url + "Packages/common-1.0.rpm")
        took = time.monotonic() - started
    # Each request alone fits the limit; both together do not. It used to take 1.2 s and
    # count as found: a probe could last about twice probe_timeout (four times, hanging).
    assert result.outcome == FAILED and "timeout" in result.detail, result
    assert took < 1.5, took  # one limit plus scheduling slack, not two


def test_the_fallback_gets_what_is_left_and_succeeds_within_it(snapshots):
    with MirrorServer(snapshots["new"], NO_HEAD, delay=0.2) as server, \
            Prober(timeout=1.0) as prober:
        result = prober.probe(server.url + "Packages/common-1.0.rpm")
    assert result.outcome == FOUND and result.detail == "GET 206 after HEAD 405", result


def test_a_bug_in_a_probe_is_raised_not_blamed_on_the_mirror(snapshots, monkeypatch):
    with MirrorServer(snapshots["new"]) as server:
        def broken(*args, **kwargs):
            raise TypeError("a bug of ours")

        monkeypatch.setattr(requests.Session, "head", broken)
        with Prober(timeout=1.0) as prober, pytest.raises(TypeError):
            prober.probe(server.url + "Packages/common-1.0.rpm")


def test_network_failures_are_the_mirrors(snapshots):
    with MirrorServer(snapshots["new"]) as server:
        url = server.url
    with Prober(timeout=1.0) as prober:
        result = prober.probe(url + "Packages/common-1.0.rpm")  # nothing listens any more
    assert result.outcome == FAILED and result.detail == "connection failed (refused)"


@pytest.mark.parametrize("call", ["probe", "fetch"])
def test_a_mirror_that_drips_its_answer_is_cut_off_at_the_time_limit(call):
    """requests' timeouts bound each read, not the whole answer: a mirror that sends a byte
    every DRIP_INTERVAL would hold a probe (or a mirror list fetch, on the client's request
    path) for as long as it likes."""
    with MirrorServer(behaviour=DRIP) as server, Prober(timeout=1.0) as prober:
        started = time.monotonic()
        result = getattr(prober, call)(server.url + "Packages/common-1.0.rpm")
        took = time.monotonic() - started
        # The connection is cut, not merely abandoned: the mirror sees its client go.
        assert wait_for(lambda: server.connections == set(), timeout=5)
    assert result.outcome == FAILED and result.detail == "timeout after 1.0s", result
    assert took < 1.5, took


@pytest.mark.parametrize("call", ["probe", "fetch"])
def test_a_mirror_cut_off_once_is_asked_again_on_a_new_connection(snapshots, call):
    """The cut connection is not reused, and a finished call's time limit cuts nothing later:
    its connection, kept alive in the pool, serves the calls that follow past that limit."""
    with MirrorServer(snapshots["new"], behaviour=DRIP) as server:
        url = server.url + "repodata/repomd.xml"
        with Prober(timeout=1.0) as prober:
            assert getattr(prober, call)(url).outcome == FAILED
            server.behaviour = GOOD
            results = [getattr(prober, call)(url)]
            time.sleep(1.2)  # past the first good call's limit
            results.append(getattr(prober, call)(url))
        assert [r.outcome for r in results] == [FOUND, FOUND], results
        assert server.accepted == 2  # the cut connection, then one kept alive for both


def test_an_upstream_proxy_that_drips_is_cut_off_at_the_time_limit():
    """The same limit through upstream_proxy (a MirrorServer receives a proxy request's
    absolute URL as its path: dripping, it stands for a proxy relaying a dripping mirror)."""
    with MirrorServer(behaviour=DRIP) as proxy, \
            Prober(timeout=1.0, proxy=proxy.url.rstrip("/")) as prober:
        started = time.monotonic()
        results = [prober.probe("http://mirror.invalid/pub/Packages/a.rpm"),
                   prober.fetch("http://mirror.invalid/pub/repodata/repomd.xml")]
        took = time.monotonic() - started
    assert [(r.outcome, r.detail) for r in results] == [(FAILED, "timeout after 1.0s")] * 2
    assert took < 3, took


# -- name lookups under the same limit ------------------------------------------------------------
# The machine's resolver cannot be made slow for one name, so its function is replaced at this
# edge: names under .slow.test answer after 5 s, two.test gives 127.0.0.2 (where nothing
# listens) before 127.0.0.1, and every other name goes to the real resolver.
@pytest.fixture
def names(monkeypatch):
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host.endswith(".slow.test"):
            time.sleep(5)
            host = "127.0.0.1"
        elif host == "two.test":
            return real("127.0.0.2", port, *args, **kwargs) + real("127.0.0.1", port, *args,
                                                                  **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize("call", ["probe", "fetch"])
def test_a_name_lookup_that_hangs_is_given_up_at_the_time_limit(snapshots, names, call):
    with MirrorServer(snapshots["new"]) as server, Prober(timeout=1.0) as prober:
        started = time.monotonic()
        result = getattr(prober, call)(
            f"http://mirror.slow.test:{server.port}/repodata/repomd.xml")
        took = time.monotonic() - started
    assert result.outcome == FAILED and result.detail.startswith("timeout after 1."), result
    assert took < 1.5, took
    assert server.count() == 0


def test_a_name_with_several_addresses_is_tried_in_order_and_keeps_its_name(snapshots, names):
    """As urllib3 itself would: the next address when one refuses; the Host header (and, over
    TLS, the server name checked) stays the name."""
    with MirrorServer(snapshots["new"]) as server:
        with Prober(timeout=2.0) as prober:
            result = prober.fetch(f"http://two.test:{server.port}/repodata/repomd.xml")
        assert result.outcome == FOUND, result
        assert [h.get("Host") for _, _, h in server.requests] == [f"two.test:{server.port}"]


def test_an_https_mirror_by_name_is_checked_against_that_name(tmp_path, snapshots):
    ca = LabCA(tmp_path / "ca")
    # server_context() names 127.0.0.1 and localhost
    with MirrorServer(snapshots["new"], tls=ca.server_context()) as server, \
            Prober(timeout=2.0, ca_file=str(ca.cert_file)) as prober:
        found = prober.fetch(f"https://localhost:{server.port}/repodata/repomd.xml")
    assert found.outcome == FOUND, found
    with MirrorServer(snapshots["new"], tls=ca.server_context("other.test")) as server, \
            Prober(timeout=2.0, ca_file=str(ca.cert_file)) as prober:
        refused = prober.fetch(f"https://localhost:{server.port}/repodata/repomd.xml")
    assert refused.outcome == FAILED and "certificate verify failed for host localhost" in \
        refused.detail, refused
