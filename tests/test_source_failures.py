"""A mirrorlist/metalink server that is down, slow or sends garbage: the last good list is used;
without one the client gets a clear ERR message."""

from __future__ import annotations

import time

import pytest

from lab.helper import HelperProcess, rewritten_url, write_config
from lab.mirrors import HANG, MirrorServer

PKG = "http://repoproxy/test/9/x86_64/Packages/"

GARBAGE = {
    "html": b"<html><body><h1>503 Service Unavailable</h1></body></html>",
    "empty": b"",
    "comments-only": b"# bad repo or arch\n",
    "huge": b"a" * (9 * 1024 * 1024),
    "binary": bytes(range(256)) * 64,
}


@pytest.mark.parametrize("kind", ["mirrorlist", "metalink"])
@pytest.mark.parametrize("garbage", sorted(GARBAGE))
def test_garbage_source_without_a_good_list_is_a_clear_error(tmp_path, kind, garbage):
    with MirrorServer(documents={"/list": GARBAGE[garbage]}) as source:
        config = write_config(tmp_path, {"test": {kind: source.url + "list"}})
        with HelperProcess(config) as helper:
            reply = helper.ask(PKG + "common-1.0.rpm")
    assert reply.startswith("ERR message=") and "no mirror list is available" in reply, reply
    log = (tmp_path / "helper.log").read_text()
    assert f"{kind} {source.url}list unusable" in log


def test_slow_source_without_a_good_list_is_a_clear_error(tmp_path):
    with MirrorServer(behaviour=HANG) as source:
        config = write_config(tmp_path, {"test": {"mirrorlist": source.url + "list"}},
                              probe_timeout=1)
        with HelperProcess(config) as helper:
            started = time.monotonic()
            reply = helper.ask(PKG + "common-1.0.rpm")
            took = time.monotonic() - started
    assert reply.startswith("ERR message=") and "no mirror list" in reply
    assert took < 4, took


@pytest.mark.parametrize("garbage", ["html", "empty", "huge", "slow", "down"])
def test_last_good_list_survives_a_broken_source(tmp_path, fleet, garbage):
    good = fleet["good"]
    source = MirrorServer(documents={"/list": good.url.encode() + b"\n"}).start()
    try:
        config = write_config(tmp_path, {"test": {"mirrorlist": source.url + "list"}},
                              mirrorlist_ttl=1, probe_timeout=1)
        with HelperProcess(config) as helper:
            assert rewritten_url(helper.ask(PKG + "common-1.0.rpm")).startswith(good.url)
            if garbage == "down":
                source.stop()
            elif garbage == "slow":
                source.behaviour = HANG
            else:
                source.documents["/list"] = GARBAGE[garbage]
            time.sleep(1.2)  # the list is due for a refetch
            for name in ("new-2.0.rpm", "bulk-1.rpm", "bulk-2.rpm"):
                assert rewritten_url(helper.ask(PKG + name)).startswith(good.url)
        if garbage != "down":
            # The broken source is not hammered: one refetch, then a pause.
            assert source.count("GET", "/list") == 2
    finally:
        if not source.stopping.is_set():
            source.stop()


def test_a_hanging_source_at_cold_start_costs_one_timeout_not_one_per_path(tmp_path):
    """Every new path used to wait for the hanging metalink/mirrorlist host again."""
    with MirrorServer(behaviour=HANG) as source:
        config = write_config(tmp_path, {"test": {"mirrorlist": source.url + "list"}},
                              probe_timeout=1)
        with HelperProcess(config) as helper:
            started = time.monotonic()
            replies = [helper.ask(PKG + name) for name in
                       ("common-1.0.rpm", "new-2.0.rpm", "bulk-1.rpm", "bulk-2.rpm")]
            took = time.monotonic() - started
        asked = source.count("GET", "/list")
    for reply in replies:
        assert reply.startswith("ERR message=") and "no mirror list" in reply, reply
    assert "unhealthy" in replies[-1]  # the reason is in the reply, for Squid's log
    assert took < 2.5, took  # one probe_timeout, not four
    assert asked == 1


def test_a_failing_source_host_rests_for_every_repo_it_serves(tmp_path):
    """Health is one fact: the source host that failed for one repo is not asked for another
    (here, another releasever) until unhealthy_ttl has passed."""
    with MirrorServer(behaviour=HANG) as source:
        config = write_config(tmp_path, {"test": {
            "mirrorlist": source.url + "list?release={releasever}"}}, probe_timeout=1)
        with HelperProcess(config) as helper:
            helper.ask(PKG + "common-1.0.rpm")
            started = time.monotonic()
            other = helper.ask("http://repoproxy/test/10/x86_64/Packages/common-1.0.rpm")
            took = time.monotonic() - started
    assert other.startswith("ERR message=") and "no mirror list" in other
    assert took < 0.8, took  # well under the probe_timeout a fetch would cost
    assert source.count("GET", "/list") == 1


def test_a_mirrorlist_with_an_ftp_line_among_http_lines_is_used(tmp_path, fleet):
    """librepo's own test mirrorlists have one; the whole list used to be rejected."""
    good = fleet["good"]
    listing = f"# mirrorlist\nftp://ftp.example.org/pub/\n{good.url}\n".encode()
    with MirrorServer(documents={"/list": listing}) as source:
        config = write_config(tmp_path, {"test": {"mirrorlist": source.url + "list"}})
        with HelperProcess(config) as helper:
            reply = helper.ask(PKG + "common-1.0.rpm")
    assert rewritten_url(reply) == good.url + "Packages/common-1.0.rpm"
    log = (tmp_path / "helper.log").read_text()
    assert "skipped 1 unusable entry: ftp://ftp.example.org/pub/" in log, log
