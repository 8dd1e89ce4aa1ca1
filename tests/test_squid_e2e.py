"""End to end: the real Squid with the installed helper, real RPM repositories on local mirrors,
and the real dnf client (isolated installroot, cache and config for every "build slave").

Fails (never skips) with CI=true when squid, squidclient, dnf, createrepo_c or rpmbuild is
missing; elsewhere it skips with the reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest
import yaml

from lab.dns import LoopbackDns
from lab.helper import helper_command
from lab.httpclient import http_get
from lab.mirrors import ERROR, GOOD, MirrorServer, dead_url, free_port, metalink_xml
from lab.rpmrepo import (
    NEW_RPMS,
    PACKAGES_PATH,
    PACKAGES_URL,
    REPO,
    TEMPLATE_PATH,
    TREE,
    VIRTUAL_BASE,
    WANTED,
    DnfClient,
    dnf_output,
)
from lab.squid import SquidInstance, WorldReadableDir, chown_proxy
from lab.wait import wait_for
from squid_helper.facts.memo import FRONT_CACHE_SECONDS
from squid_helper.squid.storeid import STORE_ID_HOST

from conftest import require


@pytest.fixture
def world() -> Iterator[Path]:
    """A directory the proxy user can reach, for Squid, the helper's config, memo and log."""
    require("squid", "squidclient", "dnf", "createrepo_c", "rpmbuild")
    with WorldReadableDir("squid-helper-e2e-") as path:
        yield path


def mirror(servers: List[MirrorServer], root: Path, behaviour: str = GOOD,
           documents=None, delay: float = 0.0) -> MirrorServer:
    server = MirrorServer(root, behaviour, documents=documents, delay=delay).start()
    servers.append(server)
    return server


def helper_config(directory: Path, repos: dict, accel_port: int, **settings) -> Path:
    """repos.yaml for the helpers, with its memo and log file owned by proxy."""
    data = {"virtual_hosts": ["repoproxy"], "accel_ports": [accel_port],
            "cache_dir": str(directory / "memo"), "log_file": str(directory / "helper.log"),
            "probe_timeout": 2, **settings, "repos": repos}
    path = directory / "repos.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    (directory / "helper.log").touch()
    chown_proxy(directory / "memo", directory / "helper.log")
    return path


def alpha(mirror: MirrorServer, method: str) -> int:
    return mirror.count(method, "alpha-1.0-1.noarch.rpm", PACKAGES_PATH)


def diagnosis(squid: SquidInstance, *mirrors: MirrorServer) -> str:
    """What the mirrors saw and what Squid logged, for an assertion message."""
    seen = "\n".join(f"{m.url}: {method} {path}" for m in mirrors
                     for method, path, _ in list(m.requests))
    helper_log = squid.helper_config.parent / "helper.log"
    return (f"mirror requests:\n{seen}\naccess.log:\n"
            + "\n".join(map(str, squid.access_log()[-30:]))
            + f"\nhelper.log:\n{helper_log.read_text()[-6000:]}")


def rpm_requests(*mirrors: MirrorServer, method=None) -> int:
    """Requests for this test's packages. Only paths under TREE count: another test running
    at the same time may take one of these ports for a 'dead' mirror of its own and probe it."""
    return sum(m.count(method, ".rpm", PACKAGES_PATH) for m in mirrors)


def start_squid(directory: Path, repos: dict, squid_params: Optional[dict] = None,
                **settings):
    accel = free_port()
    config = helper_config(directory, repos, accel, **settings)
    squid = SquidInstance(directory / "squid", config, accel_port=accel, **(squid_params or {}))
    return squid, config


def slave(world: Path, name: str, squid: SquidInstance, baseurl: str = VIRTUAL_BASE,
          proxy: bool = True) -> DnfClient:
    """One build slave's `dnf install --downloadonly`, which must succeed."""
    client = DnfClient(world, name)
    result = client.install(baseurl, WANTED, proxy=squid.proxy_url if proxy else None)
    assert_installed(client, result, squid)
    return client


def assert_installed(client: DnfClient, result: subprocess.CompletedProcess,
                     squid: SquidInstance) -> None:
    if result.returncode != 0 or client.downloaded() != NEW_RPMS:
        helper_log = squid.helper_config.parent / "helper.log"
        pytest.fail(f"{client.directory.name}: dnf failed or downloaded {client.downloaded()}"
                    f"\n{dnf_output(result)}\naccess.log:\n"
                    + "\n".join(map(str, squid.access_log()[-30:]))
                    + f"\nhelper.log:\n{helper_log.read_text()[-5000:]}"
                    + f"\ncache.log:\n{squid.cache_log()[-3000:]}", pytrace=False)


def test_cold_then_warm_then_every_mirror_down(world, rpm_snapshots, servers):
    """Cold run past a dead and a 500 mirror; a second slave costs the mirrors no RPM; a third
    slave succeeds from Squid's cache alone with every mirror and the mirrorlist server down."""
    error = mirror(servers, rpm_snapshots["new"], ERROR)
    stale = mirror(servers, rpm_snapshots["old"])
    good = mirror(servers, rpm_snapshots["new"])
    bases = [dead_url("/"), error.url, stale.url, good.url]
    listing = "# test mirrorlist\n" + "".join(f"{b}{TREE}/\n" for b in bases)
    source = mirror(servers, None, documents={"/mirrorlist": listing.encode()})
    repos = {REPO: {"mirrorlist": source.url + "mirrorlist?repo=test-{releasever}&arch={arch}"}}
    squid, config = start_squid(world, repos)
    # Freshly published files (Last-Modified a second ago): Squid's heuristic would call them
    # stale a second after caching unless refresh_pattern says override-lastmod.
    published = time.time() - 1
    for path in rpm_snapshots["new"].rglob("*"):
        os.utime(path, (published, published))
    with squid:
        first = DnfClient(world, "slave1")
        started = time.monotonic()
        result = first.install(VIRTUAL_BASE, WANTED, proxy=squid.proxy_url)
        cold = time.monotonic() - started
        assert_installed(first, result, squid)
        assert rpm_requests(good, method="GET") == 3
        assert rpm_requests(stale) == 0, "stale mirror served packages"
        assert rpm_requests(error) == 0
        assert cold < 60, f"cold run took {cold:.1f}s"

        # Second slave, a little later: every RPM and checksum-named repodata file is a hit.
        time.sleep(2)
        before = rpm_requests(error, stale, good)
        logged = len(squid.wait_rpm_entries(3))
        second = DnfClient(world, "slave2")
        result = second.install(VIRTUAL_BASE, WANTED, proxy=squid.proxy_url)
        assert_installed(second, result, squid)
        assert rpm_requests(error, stale, good) == before, diagnosis(squid, good)
        entries = squid.wait_rpm_entries(3, start=logged)
        rpms = [e for e in entries if e.url.endswith(".rpm")]
        assert len(rpms) == 3 and all("HIT" in e.code for e in rpms), entries

        # Every mirror and the mirrorlist server gone; the helpers' path answers expired too
        # (short TTLs, picked up by `squid -k reconfigure`): last-known answers + Squid's copy.
        data = yaml.safe_load(config.read_text())
        data.update(path_ttl=1, metadata_ttl=1, mirrorlist_ttl=1)
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        for server in (error, stale, good, source):
            server.stop()
        squid.reconfigure()
        time.sleep(1.5)
        logged = len(squid.wait_rpm_entries(6))
        third = DnfClient(world, "slave3")
        result = third.install(VIRTUAL_BASE, WANTED, proxy=squid.proxy_url)
        assert_installed(third, result, squid)
        entries = squid.wait_rpm_entries(3, start=logged)
        repomd = [e for e in entries if e.url.endswith("/repomd.xml")]
        assert repomd and all(e.status == 200 for e in repomd), entries
    assert "last-known" in (world / "helper.log").read_text()


def test_store_id_keeps_the_cache_across_a_mirror_failover(world, rpm_snapshots, servers):
    """Warm via mirror A; A dies and the helper's path answers expire, so it re-verifies every
    path on B; Squid's copies fetched from A are still hits (one store key per repo path)."""
    a = mirror(servers, rpm_snapshots["new"])
    b = mirror(servers, rpm_snapshots["new"])
    repos = {REPO: {"mirrors": [a.url + TEMPLATE_PATH, b.url + TEMPLATE_PATH]}}
    squid, _ = start_squid(world, repos, path_ttl=1, metadata_ttl=1, unhealthy_ttl=600)
    with squid:
        slave(world, "slave1", squid)
        # Both are as fast: whichever the helper measured faster served every package.
        a, b = (a, b) if rpm_requests(a, method="GET") else (b, a)
        assert rpm_requests(a, method="GET") == 3
        assert rpm_requests(b) == 0
        a.stop()
        time.sleep(1.5)
        slave(world, "slave2", squid)
    # The helper did move to B (it verified the packages there) ...
    assert rpm_requests(b, method="HEAD") + b.count("GET", "repomd.xml") > 0
    log = (world / "helper.log").read_text()
    assert f"-> {b.url}{TREE}/Packages/" in log, log[-3000:]
    # ... and yet B sent no package: Squid found A's copies under the same store-id.
    assert rpm_requests(b, method="GET") == 0, b.paths()


def test_purge_with_squidclient_and_with_squid_helper_purge(world, rpm_snapshots, servers):
    good = mirror(servers, rpm_snapshots["new"])
    repos = {REPO: {"mirrors": [good.url + TEMPLATE_PATH]}}
    squid, config = start_squid(world, repos)
    url = PACKAGES_URL + "alpha-1.0-1.noarch.rpm"
    with squid:
        slave(world, "slave1", squid)
        fetched = alpha(good, "GET")
        assert fetched == 1
        status, _, body = squid.get(url)
        assert status == 200 and body[:4] == b"\xed\xab\xee\xdb"  # the RPM lead's magic
        assert alpha(good, "GET") == fetched, "not a cache hit"

        purged = subprocess.run(["squidclient", "-h", "127.0.0.1", "-p", str(squid.port),
                                 "-m", "PURGE", url], capture_output=True, text=True, timeout=30)
        assert purged.returncode == 0 and " 200 " in purged.stdout.splitlines()[0], purged
        assert squid.get(url)[0] == 200
        assert alpha(good, "GET") == fetched + 1
        assert squid.get(url)[0] == 200  # cached again
        assert alpha(good, "GET") == fetched + 1

        heads = alpha(good, "HEAD")
        purged = subprocess.run([*helper_command(), "purge", "--config", str(config),
                                 "--proxy", squid.proxy, url],
                                capture_output=True, text=True, timeout=60)
        assert purged.returncode == 0, purged
        assert purged.stdout.startswith("OK") and "purged from Squid" in purged.stdout, purged
        assert squid.get(url)[0] == 200
        assert alpha(good, "GET") == fetched + 2
        # The memo's answer went too: the helper verifies the path on the mirror again, once
        # it notices the purge (a helper process may reuse its copy of the answer this long).
        assert wait_for(lambda: squid.get(url)[0] == 200 and alpha(good, "HEAD") > heads,
                        timeout=FRONT_CACHE_SECONDS + 0.5, step=0.05)
        assert alpha(good, "GET") == fetched + 2  # the copy fetched after the purge is a hit

        # Purging what is not cached is not a failure; a non-repo URL is.
        again = subprocess.run([*helper_command(), "purge", "--config", str(config),
                                "--proxy", squid.proxy, PACKAGES_URL + "nothing.rpm"],
                               capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "not in Squid's cache" in again.stdout, again
        foreign = subprocess.run([*helper_command(), "purge", "--config", str(config),
                                  "--proxy", squid.proxy, "http://example.org/x.rpm"],
                                 capture_output=True, text=True, timeout=60)
        assert foreign.returncode == 1 and foreign.stdout.startswith("FAIL"), foreign
        # A purge with another repos.yaml clears Squid and a memo the helpers do not use: it
        # says so, and which config they run with.
        elsewhere = world / "elsewhere"
        elsewhere.mkdir()
        other = helper_config(elsewhere, repos, squid.accel_port)
        stray = subprocess.run([*helper_command(), "purge", "--config", str(other),
                                "--proxy", squid.proxy, url],
                               capture_output=True, text=True, timeout=60)
        assert stray.returncode == 1, stray
        assert "did not reach them" in stray.stderr and str(config) in stray.stderr, stray

        # A root-run purge left the memo usable by the helpers (still owned by proxy).
        slave(world, "slave2", squid)
    assert "memo" not in "".join(line for line in (world / "helper.log").read_text()
                                 .splitlines() if "unusable" in line)


def test_old_style_urls_on_the_accel_port(world, rpm_snapshots, servers):
    """dnf with baseurl=http://proxy:ACCEL/<repo>/$releasever/$basearch/ and no proxy=."""
    stale = mirror(servers, rpm_snapshots["old"])
    good = mirror(servers, rpm_snapshots["new"])
    repos = {REPO: {"mirrors": [dead_url("/") + TEMPLATE_PATH, stale.url + TEMPLATE_PATH,
                                good.url + TEMPLATE_PATH]}}
    squid, _ = start_squid(world, repos)
    baseurl = f"http://127.0.0.1:{squid.accel_port}/{REPO}/$releasever/$basearch/"
    with squid:
        slave(world, "slave1", squid, baseurl, proxy=False)
        assert rpm_requests(good, method="GET") == 3
        assert rpm_requests(stale) == 0
        slave(world, "slave2", squid, baseurl, proxy=False)
        assert rpm_requests(good, method="GET") == 3, "the second slave's packages were not hits"


def test_urls_naming_a_host_by_address_cost_no_reverse_dns_lookup(world, rpm_snapshots,
                                                                  servers):
    """Squid's dstdomain asks the DNS for an address's name (PTR) unless told not to (-n):
    an old-style client naming the proxy by address, or a client of a web server named by
    address, would wait on the DNS at every request; a fleet proxy's accel clients waited
    dns_timeout (30 s) on a DNS that did not answer."""
    good = mirror(servers, rpm_snapshots["new"])
    repos = {REPO: {"mirrors": [good.url + TEMPLATE_PATH]}}
    with LoopbackDns() as dns:
        squid, _ = start_squid(world, repos,
                               squid_params={"extra_lines": [f"dns_nameservers {dns.address}"]})
        with squid:
            accel = http_get("127.0.0.1", squid.accel_port, f"/{REPO}/9/x86_64/Packages/"
                             "alpha-1.0-1.noarch.rpm",
                             {"Host": f"127.0.0.9:{squid.accel_port}"}, timeout=10)
            assert accel[0] == 200, diagnosis(squid, good)
            other = squid.get(f"http://127.0.0.9:{good.port}/{TREE}/repodata/repomd.xml")
            assert other[0] == 403  # the guard: a loopback destination, not a repo URL
            # A name the hosts file does not know is still looked up, as it must be.
            squid.get("http://no-such-host.invalid/")
        assert any(n == "no-such-host.invalid" for n in dns.names), dns.names
    assert not [n for n in dns.names if n.endswith(".in-addr.arpa")], dns.names


def test_only_localhost_and_the_lab_may_use_the_proxy_or_purge(world, rpm_snapshots, servers):
    """The lab acl decides: a lab address may fetch and PURGE, any other address gets 403."""
    good = mirror(servers, rpm_snapshots["new"])
    repos = {REPO: {"mirrors": [good.url + TEMPLATE_PATH]}}
    lab, outsider = "127.0.0.2", "127.0.0.3"
    squid, _ = start_squid(world, repos, squid_params={"lab_networks": (f"{lab}/32",)})
    url = PACKAGES_URL + "alpha-1.0-1.noarch.rpm"
    with squid:
        assert squid.get(url, source=lab)[0] == 200
        assert squid.get(url, source=outsider)[0] == 403
        accel = http_get("127.0.0.1", squid.accel_port, f"/{REPO}/9/x86_64/Packages/"
                         "alpha-1.0-1.noarch.rpm", {"Host": f"127.0.0.1:{squid.accel_port}"},
                         source=outsider)
        assert accel[0] == 403
        assert squid.get(url, method="PURGE", source=outsider)[0] == 403
        assert squid.get(url, method="PURGE", source=lab)[0] == 200
        assert squid.get(url, method="PURGE", source="127.0.0.1")[0] == 404  # already gone
    assert alpha(good, "GET") == 1


def test_repo_urls_the_helper_cannot_serve_get_a_plain_http_error(world, rpm_snapshots, servers):
    """404 for a file no mirror has, 400 for a refused URL, 503 with every mirror down: on both
    ports, quickly, never a forwarding loop or a DNS error for the virtual host."""
    good = mirror(servers, rpm_snapshots["new"])
    repos = {REPO: {"mirrors": [good.url + TEMPLATE_PATH]}}
    squid, _ = start_squid(world, repos)

    def accel(path: str, method: str = "GET") -> int:
        return http_get("127.0.0.1", squid.accel_port, path,
                        {"Host": f"127.0.0.1:{squid.accel_port}"}, method=method)[0]

    with squid:
        started = time.monotonic()
        assert squid.get(PACKAGES_URL + "alpha-1.0-1.noarch.rpm")[0] == 200
        assert squid.get(PACKAGES_URL + "no-such-1.0.rpm")[0] == 404
        assert accel(f"/{REPO}/9/x86_64/Packages/no-such-1.0.rpm") == 404
        assert squid.get("http://repoproxy/unknown/9/x86_64/x.rpm")[0] == 400
        assert accel("/unknown/9/x86_64/x.rpm") == 400
        assert accel(f"/{REPO}/9/x86_64/Packages/%2e%2e/%2e%2e/x") == 400
        # A PURGE is never refused by these rules: there may be a copy to drop.
        assert squid.get(PACKAGES_URL + "no-such-1.0.rpm", method="PURGE")[0] == 404
        good.stop()
        # Never verified, no last-known answer, no mirror: 503.
        assert squid.get(PACKAGES_URL + "beta-2.0-1.noarch.rpm")[0] == 503
        assert time.monotonic() - started < 20
    # One package fetched; the missing one was asked of the mirror, which said 404 itself.
    assert alpha(good, "GET") == 1
    assert rpm_requests(good, method="GET") == 1 + good.count("GET", "no-such-1.0.rpm")


def test_a_half_synced_mirror_costs_dnf_a_retry_not_a_failure(world, rpm_snapshots, servers):
    """The fastest mirror serves the new repomd.xml but lacks one of its packages (caught in the
    middle of a sync). Packages go to it at once, unprobed; the missing one's 404 reaches dnf,
    whose retry goes to the complete mirror: dnf succeeds, and the complete mirror sends only
    that package."""
    half = world / "half"
    shutil.copytree(rpm_snapshots["new"], half)
    missing = "beta-2.0-1.noarch.rpm"
    (half / TREE / "Packages" / missing).unlink()
    complete = mirror(servers, rpm_snapshots["new"], delay=0.05)  # slower: not chosen first
    partial = mirror(servers, half)
    repos = {REPO: {"mirrors": [complete.url + TEMPLATE_PATH, partial.url + TEMPLATE_PATH]}}
    squid, _ = start_squid(world, repos)
    with squid:
        slave(world, "slave1", squid)
        # The partial mirror was preferred for its speed, and served all it has ...
        assert partial.count("GET", "repomd.xml") >= 1
        assert rpm_requests(partial, method="GET") == 3, diagnosis(squid, partial, complete)
        assert partial.count("GET", missing) == 1
        # ... the one package it lacks came from the complete mirror, on dnf's retry.
        assert complete.count("GET", missing) == 1, diagnosis(squid, partial, complete)
        assert rpm_requests(complete, method="GET") == 1
        # Later clients go straight to the complete mirror for it (a cache hit in fact).
        slave(world, "slave2", squid)
        assert partial.count("GET", missing) == 1
    log = (world / "helper.log").read_text()
    assert "optimistic answer for" in log and "corrected" in log, log[-3000:]


# -- freshness: a push upstream reaches dnf through the proxy -----------------------------------
def push_lab(world: Path, rpm_snapshots, servers: List[MirrorServer]):
    """Mirrors A and B carry the old snapshot and the metalink announces it; A is the faster.
    Returns (a, b, source, push): push() makes the metalink announce the new snapshot (the old
    one as an alternate) and B sync it, while A lags behind."""
    new = world / "pushed"
    shutil.copytree(rpm_snapshots["new"], new)
    old_repomd = (rpm_snapshots["old"] / TREE / "repodata" / "repomd.xml").read_bytes()
    new_repomd = (new / TREE / "repodata" / "repomd.xml").read_bytes()
    a = mirror(servers, rpm_snapshots["old"])
    b = mirror(servers, rpm_snapshots["old"], delay=0.05)
    bases = [a.url + TREE + "/", b.url + TREE + "/"]
    source = mirror(servers, None, documents={"/metalink": metalink_xml(bases, old_repomd)})

    def push() -> None:
        published = time.time()  # the pushed repomd.xml is newer than the copy Squid holds
        os.utime(new / TREE / "repodata" / "repomd.xml", (published, published))
        b.root = new
        source.documents["/metalink"] = metalink_xml(bases, new_repomd,
                                                     alternates=[old_repomd])
    return a, b, source, push


def dnf_repomd_gets(server: MirrorServer) -> int:
    """repomd.xml GETs that Squid made for dnf (the helper's own surveys excluded)."""
    return sum(1 for method, path, headers in list(server.requests)
               if method == "GET" and path.endswith("/repomd.xml")
               and not headers.get("User-Agent", "").startswith("squid-helper"))


def install(world: Path, name: str, squid: SquidInstance, packages: List[str],
            client: Optional[DnfClient] = None) -> DnfClient:
    """dnf install --downloadonly through Squid, which must succeed and bring the packages."""
    client = client or DnfClient(world, name)
    result = client.install(VIRTUAL_BASE, packages, proxy=squid.proxy_url)
    wanted = {f"{p}-" for p in packages}
    got = client.downloaded()
    if result.returncode != 0 or not all(any(g.startswith(w) for g in got) for w in wanted):
        helper_log = squid.helper_config.parent / "helper.log"
        pytest.fail(f"{name}: dnf failed or downloaded {got}\n{dnf_output(result)}\n"
                    f"helper.log:\n{helper_log.read_text()[-5000:]}", pytrace=False)
    return client


def surveyed(world: Path) -> bool:
    return wait_for(lambda: "complete" in (world / "helper.log").read_text())


def test_a_push_reaches_a_new_dnf_client_within_metadata_ttl(world, rpm_snapshots, servers):
    a, b, source, push = push_lab(world, rpm_snapshots, servers)
    repos = {REPO: {"metalink": source.url + "metalink?repo=test-{releasever}&arch={arch}"}}
    metadata_ttl = 3
    squid, _ = start_squid(world, repos, metadata_ttl=metadata_ttl, refresh_interval=3600)
    with squid:
        install(world, "slave1", squid, ["beta"])
        assert "beta-1.0-1.noarch.rpm" in DnfClient(world, "slave1").downloaded()
        assert surveyed(world)
        push()
        pushed = time.monotonic()
        a_before = dnf_repomd_gets(a)
        time.sleep(metadata_ttl + 0.5)
        started = time.monotonic()
        client = install(world, "slave2", squid, ["gamma", "beta"])
        assert started - pushed < metadata_ttl + 1
        assert "beta-2.0-1.noarch.rpm" in client.downloaded()
        # A never served the new repomd.xml to dnf; B did.
        assert dnf_repomd_gets(a) == a_before, diagnosis(squid, a, b)
        assert dnf_repomd_gets(b) >= 1
    # Steady state: one metalink fetch per metadata_ttl at most (the first, one after expiry).
    assert source.count("GET", "/metalink") <= 2


def test_dnf_refresh_pulls_a_push_through_at_once(world, rpm_snapshots, servers):
    """A long metadata_ttl: the memoised answer would hold for an hour. dnf asks for repomd.xml
    with no-cache whenever it refreshes: the helper checks again (once per refresh_interval)."""
    a, b, source, push = push_lab(world, rpm_snapshots, servers)
    repos = {REPO: {"metalink": source.url + "metalink?repo=test-{releasever}&arch={arch}"}}
    interval = 2
    squid, _ = start_squid(world, repos, metadata_ttl=3600, refresh_interval=interval)
    with squid:
        client = install(world, "slave1", squid, ["beta"])
        assert surveyed(world)
        push()
        a_before = dnf_repomd_gets(a)
        time.sleep(interval + 0.1)  # the first run's check was this long ago
        fetches = source.count("GET", "/metalink")
        started = time.monotonic()
        install(world, "slave1", squid, ["gamma"], client)  # dnf --refresh, in effect
        install(world, "slave2", squid, ["gamma"])
        elapsed = time.monotonic() - started
        assert dnf_repomd_gets(a) == a_before, diagnosis(squid, a, b)
    # One extra metalink fetch per refresh window at most, however many clients refresh.
    assert 1 <= source.count("GET", "/metalink") - fetches <= 1 + int(elapsed // interval)


# -- security: no client can poison the shared cache or reach the proxy host ------------------
def accel_get(squid: SquidInstance, path: str, host: str, headers=None, timeout=30.0) -> tuple:
    return http_get("127.0.0.1", squid.accel_port, path, {"Host": host, **(headers or {})},
                    timeout=timeout)


def test_a_rewrite_helper_that_dies_mid_request_lets_no_attacker_into_the_cache(
        world, rpm_snapshots, servers):
    """A lab client asks on the accel port for a package with its own server as the Host, and
    the rewrite helper dies while it works the request out. Squid used to forward the request
    as it was, to the attacker, and store the answer under the shared key: every client then
    got the attacker's file. Now the request fails, and the package is the mirror's."""
    attack = world / "attack"
    (attack / TREE / "Packages").mkdir(parents=True)
    (attack / TREE / "Packages" / "alpha-1.0-1.noarch.rpm").write_bytes(b"attacker's bytes")
    attacker = mirror(servers, attack)
    # Slow mirrors: the first request waits for the survey, long enough to kill the helper.
    one = mirror(servers, rpm_snapshots["new"], delay=1.5)
    two = mirror(servers, rpm_snapshots["new"], delay=1.5)
    repos = {REPO: {"mirrors": [one.url + TEMPLATE_PATH, two.url + TEMPLATE_PATH]}}
    squid, _ = start_squid(world, repos)
    path = f"/{REPO}/9/x86_64/Packages/alpha-1.0-1.noarch.rpm"
    with squid:
        answers = []
        request = threading.Thread(target=lambda: answers.append(
            accel_get(squid, path, f"127.0.0.1:{attacker.port}", timeout=60)))
        request.start()
        assert wait_for(lambda: one.count("GET", "repomd.xml") >= 1)  # the helper is at work
        for pid, role in squid.helper_roles().items():
            if role == "rewrite":
                os.kill(pid, signal.SIGKILL)
        request.join(90)
        assert answers and answers[0][0] != 200, answers
        assert attacker.count() == 0, attacker.paths()
        # The clean URL, through the forward port and the accel port: the mirror's package.
        status, _, body = squid.get(PACKAGES_URL + "alpha-1.0-1.noarch.rpm", timeout=60)
        assert status == 200 and body[:4] == b"\xed\xab\xee\xdb"  # the RPM lead's magic
        status, _, body = accel_get(squid, path, f"127.0.0.1:{squid.accel_port}")
        assert status == 200 and body[:4] == b"\xed\xab\xee\xdb"
    assert attacker.count() == 0


def test_the_shared_key_and_this_hosts_services_are_refused_to_clients(
        world, rpm_snapshots, servers):
    good = mirror(servers, rpm_snapshots["new"])
    service = mirror(servers, None, documents={"/secret.txt": b"only for this host\n"})
    repos = {REPO: {"mirrors": [good.url + TEMPLATE_PATH]}}
    squid, _ = start_squid(world, repos)
    with squid:
        # Repo URLs are rewritten to mirrors on loopback, and that works ...
        assert squid.get(PACKAGES_URL + "alpha-1.0-1.noarch.rpm")[0] == 200
        # ... but no client reaches this host's own services through the proxy,
        assert squid.get(service.url + "secret.txt")[0] == 403
        assert squid.get(f"http://localhost:{service.port}/secret.txt")[0] == 403
        # nor a link-local address (cloud metadata services),
        assert squid.get("http://169.254.169.254/latest/meta-data/")[0] == 403
        # nor the shared key of a cached package, now that it is cached.
        key = f"http://{STORE_ID_HOST}/{REPO}/9/x86_64/Packages/alpha-1.0-1.noarch.rpm"
        status, headers, _ = squid.get(key)
        assert status == 403, (status, headers)
        # The proxy names no version, and mirrors learn nothing of the client.
        status, headers, _ = squid.get(PACKAGES_URL + "alpha-1.0-1.noarch.rpm")
        assert "5." not in headers.get("server", "") + headers.get("via", ""), headers
    gets = [h for m, p, h in good.requests if m == "GET" and p.endswith(".rpm")]
    assert gets and all("X-Forwarded-For" not in h for h in gets), gets
    assert service.count() == 0


def test_a_one_byte_range_fetches_a_whole_repodata_file_but_not_a_whole_other_file(
        world, rpm_snapshots, servers):
    big = world / "origin"
    big.mkdir()
    (big / "big.iso").write_bytes(os.urandom(8 * 1024 * 1024))
    origin = mirror(servers, big)
    good = mirror(servers, rpm_snapshots["new"])
    repos = {REPO: {"mirrors": [good.url + TEMPLATE_PATH]}}
    # The generic origin lives on loopback here, so this Squid lets clients reach it.
    squid, _ = start_squid(world, repos,
                           squid_params={"guard_local_destinations": False})
    with squid:
        status, _, body = http_get("127.0.0.1", squid.port, origin.url + "big.iso",
                                   {"Host": f"127.0.0.1:{origin.port}", "Range": "bytes=0-0"})
        assert status == 206 and len(body) == 1
        # The origin was asked for that byte only, not for 8 MiB.
        assert origin.requests[-1][2].get("Range") == "bytes=0-0", origin.requests[-1]
        # Repodata (zchunk metadata is read in ranges): the whole file comes into the cache,
        # for the next client. (A package's range goes to the mirror as it is:
        # test_security_ranges.py.)
        name = next((rpm_snapshots["new"] / TREE / "repodata").glob("*-primary.xml*")).name
        url = f"http://repoproxy/{REPO}/9/x86_64/repodata/{name}"
        status, _, body = http_get("127.0.0.1", squid.port, url,
                                   {"Host": "repoproxy", "Range": "bytes=0-0"})
        assert status == 206 and len(body) == 1
        assert wait_for(lambda: squid.get(url)[0] == 200
                        and good.count("GET", name) == 1)
        gets = [h for m, p, h in good.requests if m == "GET" and p.endswith(name)]
        assert len(gets) == 1 and "Range" not in gets[0], gets


def test_the_client_reads_why_a_repo_url_cannot_be_served(world, rpm_snapshots, servers):
    """The helper's one-line reason reaches the client: in the X-Squid-Helper-Reason header and
    in the error page, for 404, 400 and 503, on both ports; a client's markup in its own URL
    comes back encoded; and dnf, which shows no header, still gets the right status."""
    good = mirror(servers, rpm_snapshots["new"])
    repos = {REPO: {"mirrors": [good.url + TEMPLATE_PATH, dead_url() + TEMPLATE_PATH]}}
    squid, _ = start_squid(world, repos)

    def accel(path: str) -> tuple:
        return http_get("127.0.0.1", squid.accel_port, path,
                        {"Host": f"127.0.0.1:{squid.accel_port}"})

    def reason(answer: tuple) -> str:
        status, headers, body = answer
        why = headers.get("x-squid-helper-reason", "")
        assert why and why in body.decode("utf-8"), (status, headers, body[:2000])
        return why

    with squid:
        missing = squid.get(f"http://repoproxy/{REPO}/9/x86_64/extra/no-such.txt")
        assert missing[0] == 404
        assert "no mirror has extra/no-such.txt" in reason(missing)
        missing_accel = accel(f"/{REPO}/9/x86_64/extra/no-such.txt")
        assert missing_accel[0] == 404 and reason(missing_accel) == reason(missing)
        unknown = squid.get("http://repoproxy/unknown/9/x86_64/x.rpm")
        assert unknown[0] == 400 and "unknown" in reason(unknown)
        hostile = accel(f"/{REPO}/9/x86_64/Packages/%2e%2e/%3Cb%3Ex")
        assert hostile[0] == 400
        assert "<b>" not in hostile[2].decode("utf-8", "replace")
        reason(hostile)
        good.stop()
        # A path outside the snapshot is probed before the answer: every mirror down is 503
        # with the helper's reason (a package would be answered at once on the mirror last
        # known good, and Squid's own connect failure would be the client's 503).
        gone = squid.get(f"http://repoproxy/{REPO}/9/x86_64/extra/other.txt")
        assert gone[0] == 503
        assert "mirror" in reason(gone)
        # dnf shows the status for each URL it tried, not the header: 503, not a DNS error.
        client = DnfClient(world, "slave-down")
        result = client.install(VIRTUAL_BASE, WANTED, proxy=squid.proxy_url)
        assert result.returncode != 0
        assert "503" in dnf_output(result), dnf_output(result)
        # error_directory holds Squid's stock pages too (linked in by make install): Squid
        # loads some of them at start and logs an ERROR for each one it cannot find.
        assert "ERROR: loading file" not in squid.cache_log(), squid.cache_log()[-3000:]
