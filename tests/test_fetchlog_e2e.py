"""End to end: Squid tells the fetch log daemon what happened to each of its fetches, and the
helpers learn from it (real Squid, real mirrors on 127.0.0.1, real dnf)."""

from __future__ import annotations

import os
import time
from contextlib import closing
from typing import List

import test_squid_e2e
from test_squid_e2e import assert_installed, diagnosis, mirror, rpm_requests, start_squid

from lab.mirrors import MirrorServer, make_snapshot
from lab.rpmrepo import PACKAGES_URL, REPO, TEMPLATE_PATH, TREE, VIRTUAL_BASE, WANTED, DnfClient
from lab.wait import wait_for
from squid_helper.config.files import load_config
from squid_helper.facts.lifetimes import Lifetimes
from squid_helper.facts.memo import Memo
from squid_helper.ops.metrics import exposition
from squid_helper.ops.status import collect, render_table
from squid_helper.resolve.health import host_of

world = test_squid_e2e.world  # the fixture: a directory Squid's user can reach


def rpm_gets(server: MirrorServer) -> List[str]:
    """The package names the mirror got a GET for, in order."""
    return [p.rsplit("/", 1)[1] for m, p, _ in list(server.requests)
            if m == "GET" and p.endswith(".rpm")]


def test_a_mirror_whose_gets_fail_gets_no_more_once_squid_reported_it(world, rpm_snapshots,
                                                                       servers):
    """HEAD answers 200, GET of a package 500, and that mirror ranks first (it answers
    faster): every probe finds it fine. Squid's failed fetches take it out: the second client
    installs without one more GET sent there."""
    bad = mirror(servers, rpm_snapshots["new"])
    bad.fail_gets[".rpm"] = 500
    good = mirror(servers, rpm_snapshots["new"], delay=0.05)
    repos = {REPO: {"mirrors": [bad.url + TEMPLATE_PATH, good.url + TEMPLATE_PATH]}}
    squid, config = start_squid(world, repos, unhealthy_ttl=600)
    helper_log = world / "helper.log"

    def reported() -> bool:
        text = helper_log.read_text()
        asked = set(rpm_gets(bad))
        return bool(asked) and all(f"Packages/{name}: Squid's GET got 500" in text
                                   for name in asked)

    with squid:
        DnfClient(world, "slave1").install(VIRTUAL_BASE, WANTED, proxy=squid.proxy_url)
        assert rpm_gets(bad), "the GET-failing mirror was not tried first: " + diagnosis(
            squid, bad, good)
        assert wait_for(reported, timeout=15), diagnosis(squid, bad, good)
        failed_gets = rpm_requests(bad, method="GET")
        second = DnfClient(world, "slave2")
        result = second.install(VIRTUAL_BASE, WANTED, proxy=squid.proxy_url)
        assert_installed(second, result, squid)
        assert rpm_requests(bad, method="GET") == failed_gets, diagnosis(squid, bad, good)
    # Three paths failed within a minute: the host is out, as after failed probes.
    text = helper_log.read_text()
    assert f"mirror {host_of(bad.url)} marked unhealthy" in text, text[-3000:]
    # status and metrics show it, from the same log lines.
    status = collect(load_config(str(config)), None)
    fetches = status["fetches"]
    assert fetches["mirrors"][host_of(bad.url)]["failed_fetches"] >= 3, fetches
    assert fetches["mirrors"].get(host_of(good.url), {}).get("failed_fetches", 0) == 0
    traffic = fetches["repos"][REPO]
    assert traffic["hits"] >= 3 and traffic["bytes_from_cache"] > 0, fetches  # slave2's RPMs
    assert traffic["misses"] >= 3 + 3 and traffic["bytes_fetched"] > 0, fetches
    assert "failed fetches, last: Squid's GET got 500" in render_table(status)
    assert f'squid_helper_mirror_failed_fetches_total{{host="{host_of(bad.url)}"}}' in \
        exposition(status)


SIZE = 256 * 1024
FAST = 4e6  # bytes/s: a package takes about 65 ms
PACKAGES = [f"pkg-{i:02d}-1.0-1.noarch.rpm" for i in range(60)]


def test_a_mirror_whose_downloads_slow_down_loses_new_fetches(world, servers):
    """Two mirrors as fast; the one that served the first packages becomes ten times slower:
    within a minute, new packages go to the other one."""
    root = world / "tree"
    make_snapshot(root / TREE, 3000, [])
    for name in PACKAGES:
        (root / TREE / "Packages" / name).write_bytes(os.urandom(SIZE))
    a, b = mirror(servers, root), mirror(servers, root)
    for server in (a, b):
        server.bytes_per_second = FAST
    repos = {REPO: {"mirrors": [a.url + TEMPLATE_PATH, b.url + TEMPLATE_PATH]}}
    squid, config = start_squid(world, repos)
    helper_config = load_config(str(config))
    memo, lifetimes = Memo.reader(helper_config), Lifetimes(helper_config)

    def samples(server: MirrorServer) -> int:
        known = memo.last(lifetimes.throughput(host_of(server.url)))
        return known.value["samples"] if known is not None else 0

    def fetch(name: str) -> MirrorServer:
        """One new package through Squid; the mirror that served it, once the fetch log
        daemon has learnt its speed."""
        before = samples(a) + samples(b)
        status, _, body = squid.get(PACKAGES_URL + name)
        assert status == 200 and len(body) == SIZE, (status, len(body))
        assert wait_for(lambda: samples(a) + samples(b) > before, timeout=10), \
            diagnosis(squid, a, b)
        served = [s for s in (a, b) if name in rpm_gets(s)]
        assert len(served) == 1, diagnosis(squid, a, b)
        return served[0]

    with squid, closing(memo):
        names = iter(PACKAGES)
        leader = fetch(next(names))
        for _ in range(4):  # only the leader is measured: it keeps every new fetch
            assert fetch(next(names)) is leader
        other = b if leader is a else a
        leader.bytes_per_second = FAST / 10
        started = time.monotonic()
        slow = 0
        while fetch(next(names)) is leader and time.monotonic() - started < 60:
            slow += 1
        moved = time.monotonic() - started
        after = [fetch(next(names)) for _ in range(5)]
    assert moved < 60, f"still on the slow mirror after {moved:.1f}s ({slow} slow fetches)"
    # It stays with the other one: the slow mirror is measured slower now.
    assert after == [other] * 5, ([s.url for s in after], diagnosis(squid, a, b))
