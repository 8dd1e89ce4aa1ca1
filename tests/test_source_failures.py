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
