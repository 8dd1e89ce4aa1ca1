"""Issue 23, as a lab client would attack: invented releases must not turn the helpers into a
cannon aimed at the mirrors and the mirror list host, nor fill the memo; and no single path
may take a mirror away from everyone (a slow path, a 429 asking for ten minutes).

The real helper (lab.helper, driven as Squid drives it) against real mirrors on 127.0.0.1;
each server counts the requests it saw."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import diskcache

from lab.flood import drive
from lab.helper import HelperProcess, rewritten_url, write_config
from lab.mirrors import MirrorServer, make_snapshot
from lab.wait import wait_for
from squid_helper.facts.lifetimes import SURVEYS

from conftest import NEW_ONLY

TREE = "9/x86_64/"
NORMAL = [f"Packages/normal-{i}.rpm" for i in range(5)]
LIMIT = 20  # max_probes_per_second
NEGATIVE_TTL = 5


def test_a_flood_of_invented_releases_spends_one_budget_per_host(tmp_path: Path):
    """2000 requests for repomd.xml of releases nobody has (z0, z1, ...), half through static
    mirrors (a survey each), half through a mirror list whose URL names the release (a list
    fetch each), with memoised requests of an innocent client mixed in."""
    snapshot = make_snapshot(tmp_path / "mirror" / TREE, 4000, [Path(p).name for p in NORMAL])
    with MirrorServer(tmp_path / "mirror") as one, MirrorServer(tmp_path / "mirror") as two, \
            MirrorServer() as lists:
        lists.documents[f"/{TREE}list"] = f"{one.url}{TREE}\n{two.url}{TREE}\n".encode()
        config = write_config(tmp_path, {
            "static": {"mirrors": [m.url + "{releasever}/{arch}/" for m in (one, two)]},
            "listed": {"mirrorlist": lists.url + "{releasever}/{arch}/list"}},
            max_probes_per_second=LIMIT, negative_ttl=NEGATIVE_TTL)
        assert snapshot.is_dir()
        with HelperProcess(config) as helper:
            normal = [(True, f"http://repoproxy/static/{TREE}{p}") for p in NORMAL] + \
                     [(True, f"http://repoproxy/listed/{TREE}{p}") for p in NORMAL]
            for _, url in normal:  # memoised before anything is measured; a request that
                # found this second's budget spent by the ones before it is asked again
                assert wait_for(lambda url=url: rewritten_url(helper.ask_settled(url)),
                                timeout=10, step=0.2), url
            _, alone = drive(helper, normal * 20, 50, 60)
            flood = []
            for i in range(1000):
                for repo in ("static", "listed"):
                    flood.append((False, f"http://repoproxy/{repo}/z{i}/x86_64/repodata/"
                                  "repomd.xml"))
                if i % 5 == 0:
                    flood.append(normal[(i // 5) % len(normal)])
            started = time.monotonic()
            kinds, during = drive(helper, flood, 200, 120)
            seconds = time.monotonic() - started
        stored_at = time.time()
        busiest = {"mirror one": one.busiest_second(), "mirror two": two.busiest_second(),
                   "list host": lists.busiest_second()}
        asked = {"mirror one": one.count(), "mirror two": two.count(),
                 "list host": lists.count()}
    report = (f"2000 invented releases in {seconds:.1f}s, replies {kinds}; busiest second "
              f"{busiest} (limit {LIMIT}/s), requests in all {asked}; innocent client: median "
              f"{1000 * statistics.median(alone):.1f} ms alone, "
              f"{1000 * statistics.median(during):.1f} ms during the flood (max "
              f"{1000 * max(during):.0f} ms)")
    print(report)
    assert kinds["BH"] == 0 and sum(kinds.values()) == 2000, report
    for most in busiest.values():
        # A request counted in one second may arrive in the next: a little slack.
        assert 0 < most <= LIMIT * 1.25, report
    # Memoised answers are not held up by the flood's work: the replies to them wait only
    # for the lines ahead of them in the pipe.
    assert statistics.median(during) < max(10 * statistics.median(alone), 0.1), report
    # What the invented releases left in the memo goes within negative_ttl; the innocent
    # client's answers stay.
    with diskcache.Cache(str(tmp_path / "memo")) as memo:
        invented = [k for k in memo.iterkeys()
                    if isinstance(k, str) and k.startswith(SURVEYS.key("static/z"))]
        assert invented, report  # budget allowing, some were surveyed
        for key in invented:
            _, expires = memo.get(key, expire_time=True)
            assert expires is None or expires <= stored_at + NEGATIVE_TTL, key
        assert all(memo.get(f"path:static/{TREE}{p}") is not None for p in NORMAL)


def static(tmp_path: Path, bases, **settings) -> Path:
    return write_config(tmp_path, {"test": {"mirrors": list(bases)}}, **settings)


PKG = "http://repoproxy/test/9/x86_64/Packages/"


def test_one_slow_path_does_not_take_the_mirror_away(tmp_path, snapshots):
    """A path slower than probe_timeout on the first mirror is answered by the other one;
    every other path is still answered by the first."""
    with MirrorServer(snapshots["new"], delay=0.15) as backup, \
            MirrorServer(snapshots["new"]) as first:
        first.slow_paths["slow-1.rpm"] = 10
        (snapshots["new"] / "Packages" / "slow-1.rpm").write_bytes(b"rpm")
        config = static(tmp_path, [first.url, backup.url], probe_timeout=1)
        with HelperProcess(config) as helper:
            assert rewritten_url(helper.ask_settled(PKG + NEW_ONLY[0])).startswith(first.url)
            assert rewritten_url(helper.ask_settled(PKG + "slow-1.rpm")) == \
                backup.url + "Packages/slow-1.rpm"
            others = [helper.ask_settled(PKG + name) for name in NEW_ONLY[1:7]]
            assert all(rewritten_url(r).startswith(first.url) for r in others), others
    log = (tmp_path / "helper.log").read_text()
    assert "marked unhealthy" not in log, log[-3000:]
    assert "1 failing path(s): not the host's yet" in log, log[-3000:]


def test_a_retry_after_of_ten_minutes_holds_for_unhealthy_ttl_at_most(tmp_path, snapshots):
    unhealthy_ttl = 3
    with MirrorServer(snapshots["new"], delay=0.15) as backup, \
            MirrorServer(snapshots["new"]) as first:
        config = static(tmp_path, [first.url, backup.url], unhealthy_ttl=unhealthy_ttl,
                        path_ttl=1)
        with HelperProcess(config) as helper:
            assert rewritten_url(helper.ask_settled(PKG + NEW_ONLY[0])).startswith(first.url)
            first.fail_paths["bulk-0.rpm"] = (429, {"Retry-After": "600"})
            asked_at = time.monotonic()
            assert rewritten_url(helper.ask_settled(PKG + "bulk-0.rpm")).startswith(backup.url)
            # Left alone while it asked, up to unhealthy_ttl ...
            assert rewritten_url(helper.ask_settled(PKG + "bulk-1.rpm")).startswith(backup.url)
            names = iter(NEW_ONLY[3:])
            # ... and used again afterwards (each try a new path: a probe, not a memo hit).
            assert wait_for(lambda: rewritten_url(helper.ask_settled(
                PKG + next(names))).startswith(first.url), timeout=unhealthy_ttl + 5,
                step=0.2)
            back_after = time.monotonic() - asked_at
    log = (tmp_path / "helper.log").read_text()
    assert f"asked to be left alone for {unhealthy_ttl}s" in log, log[-3000:]
    assert back_after < unhealthy_ttl + 2, back_after
