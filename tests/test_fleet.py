"""A fleet: proxies that share one cache as Squid HTCP siblings (peers: in repos.yaml).

The end-to-end test runs two real Squids started by `squid-helper serve` on two loopback
addresses (127.0.0.2 and 127.0.0.3 stand for two hosts) and the real dnf: what a client of
proxy 1 fetched, a client of proxy 2 gets without a mirror GET, although the two helpers chose
different mirrors; with proxy 1 stopped, proxy 2 serves on by itself."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Tuple

import pytest
import yaml

from lab.httpclient import http_get
from lab.mirrors import MirrorServer, free_port
from lab.rpmrepo import (
    NEW_RPMS,
    PACKAGES_PATH,
    PACKAGES_URL,
    REPO,
    TEMPLATE_PATH,
    VIRTUAL_BASE,
    WANTED,
    DnfClient,
    dnf_output,
)
from lab.serve import ServeProcess
from lab.squid import ParentSquid, SquidInstance, WorldReadableDir, parse_rendered
from squid_helper.config.files import parse_config
from squid_helper.config.settings import ConfigError
from squid_helper.ops.serve import fleet_peers
from squid_helper.ops.squidconf import SquidConfError, SquidConfParams, render
from squid_helper.squid.storeid import STORE_ID_HOST

from conftest import require

REPOS = "repos: {x: {mirrors: ['http://m/']}}\n"


def directives(text: str) -> list:
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


# -- configuration --------------------------------------------------------------------------------
def test_peers_and_htcp_port_in_repos_yaml():
    config = parse_config("peers: ['proxy-b.lab:3129', proxy-c.lab]\nhtcp_port: 4900\n" + REPOS)
    assert config.peers == (("proxy-b.lab", 3129), ("proxy-c.lab", 3128))
    assert config.htcp_port == 4900
    alone = parse_config(REPOS)
    assert alone.peers == () and alone.htcp_port == 4827 and alone.memo is None


@pytest.mark.parametrize("text, where, fix", [
    ("peers: proxy-b.lab\n", "<config>:1: peers:", "'host:port'"),
    ("peers: ['proxy b']\n", "<config>:1: peers.0:", "is not 'host:port'"),
    ("peers: ['b:99999']\n", "<config>:1: peers.0:", "port number 1-65535"),
    ("peers:\n  - b:3128\n  - b\n", "<config>:3: peers.1:", "listed twice"),
    ("htcp_port: udp\n", "<config>:1: htcp_port:", "port number 1-65535"),
])
def test_bad_peers_are_named_with_line_key_and_fix(text, where, fix):
    with pytest.raises(ConfigError) as info:
        parse_config(text + REPOS)
    assert str(info.value).startswith(where) and fix in str(info.value), str(info.value)


def test_serve_leaves_itself_out_of_a_shared_peer_list():
    """Every proxy of a fleet may get the same repos.yaml: the entry for itself is dropped."""
    peers = (("127.0.0.2", 3128), ("127.0.0.3", 3128), ("127.0.0.3", 3129))
    assert fleet_peers(peers, "127.0.0.3", 3128) == (("127.0.0.2", 3128), ("127.0.0.3", 3129))
    assert fleet_peers(peers, "0.0.0.0", 3128) == peers


# -- squid.conf -----------------------------------------------------------------------------------
def test_each_proxy_of_a_fleet_has_its_own_name_in_via():
    """A Squid that finds its own name in Via sees a forwarding loop: peers must differ."""
    names = []
    for port in (3128, 3129):
        text = render(SquidConfParams(forward_port=port, accel_port=5000,
                                      peers=(("10.0.0.2", 3128),)))
        names += re.findall(r"^unique_hostname (\S+)$", text, re.M)
    assert len(names) == 2 and names[0] != names[1] and all(
        n.startswith("squid-helper-") for n in names), names
    text = render(SquidConfParams(peers=(("10.0.0.2", 3128),), unique_hostname="proxy-a"))
    assert "\nunique_hostname proxy-a\n" in text
    assert "unique_hostname" not in render(SquidConfParams())
    with pytest.raises(SquidConfError, match="unique_hostname"):
        render(SquidConfParams(peers=(("10.0.0.2", 3128),), unique_hostname="a b"))


def test_a_proxy_without_peers_renders_as_before():
    lines = directives(render())
    assert "always_direct allow repo_accel" in lines
    assert not any(line.startswith(("cache_peer", "htcp_", "udp_incoming")) for line in lines)
    assert "http_port 5000 accel defaultsite=repoproxy vhost name=repo_accel" in lines


def test_peers_are_htcp_siblings_asked_for_repo_files_only():
    text = render(SquidConfParams(peers=(("proxy-b.lab", 3128), ("10.1.0.3", 3129)),
                                  htcp_port=4900, listen_address="10.1.0.2"))
    lines = directives(text)
    assert "htcp_port 4900" in lines
    assert "udp_incoming_address 10.1.0.2" in lines  # HTCP leaves from this proxy's address
    assert ("cache_peer proxy-b.lab sibling 3128 4900 htcp no-digest "
            "name=peer-proxy-b.lab-3128") in lines
    assert "cache_peer 10.1.0.3 sibling 3129 4900 htcp no-digest name=peer-10.1.0.3-3129" in lines
    for name in ("peer-proxy-b.lab-3128", "peer-10.1.0.3-3129"):
        assert lines.index(f"cache_peer_access {name} allow repo_rewritten") < \
            lines.index(f"cache_peer_access {name} deny all")
    assert [line for line in lines if line.startswith("htcp_access")] == \
        ["htcp_access allow fleet_peers", "htcp_access deny all"]
    assert "acl fleet_peers src 10.1.0.3 proxy-b.lab" in lines
    access = [line for line in lines if line.startswith("http_access")]
    assert access.index("http_access allow fleet_peers") < access.index("http_access deny all")
    # Accel requests may use the peers: allow-direct on the port instead of always_direct.
    assert "http_port 10.1.0.2:5000 accel defaultsite=repoproxy vhost allow-direct " \
        "name=repo_accel" in lines
    assert "always_direct allow repo_accel" not in lines
    # The local guard still stands, except for cache-only requests (peers fetching hits).
    assert "http_access deny !repo_virtual !repo_accel !cache_only to_localhost" in lines
    assert "acl cache_only req_header Cache-Control -i only-if-cached" in lines


def test_peer_names_are_checked_before_they_reach_squid_conf():
    with pytest.raises(SquidConfError, match="peers"):
        render(SquidConfParams(peers=(("b\nhttp_access allow all", 3128),)))


def test_squid_accepts_a_fleet_config(tmp_path):
    require("squid", root=False)
    output, problems = parse_rendered(tmp_path, peers=(("127.0.0.3", 3128), ("localhost", 3129)),
                                      listen_address="127.0.0.2")
    assert problems == [], output


def test_cache_only_requests_never_reach_this_hosts_services(tmp_path, snapshots):
    """The guard's exemption for peers' fetches (only-if-cached) gives no client a way to this
    host's services: Squid answers such a request from its cache or with a 504."""
    require("squid")
    service = MirrorServer(snapshots["new"]).start()  # a service on this host's loopback
    try:
        with WorldReadableDir("squid-helper-fleet-guard-") as world:
            config = world / "repos.yaml"
            config.write_text(yaml.safe_dump({"cache_dir": str(world / "memo"),
                                              "log_file": None,
                                              "repos": {REPO: {"mirrors": [service.url]}}}))
            squid = SquidInstance(world / "squid", config,
                                  peers=(("127.0.0.9", free_port()),), htcp_port=free_port())
            squid.start()
            try:
                url = f"{service.url}repodata/repomd.xml"
                status, _, _ = squid.get(url)
                assert status == 403
                status, _, _ = http_get("127.0.0.1", squid.port, url,
                                        {"Host": url.split("/")[2],
                                         "Cache-Control": "only-if-cached"})
                assert status == 504
            finally:
                squid.stop()
    finally:
        service.stop()
    assert service.requests == []


# -- two real proxies ------------------------------------------------------------------------------
def proxy_config(directory: Path, mirrors, peers, htcp_port: int, **settings) -> Path:
    path = directory / f"{directory.name}.yaml"
    directory.mkdir()
    path.write_text(yaml.safe_dump({
        "virtual_hosts": ["repoproxy"], "probe_timeout": 2, "peers": peers,
        "htcp_port": htcp_port, **settings,
        "repos": {REPO: {"mirrors": [m.url + TEMPLATE_PATH for m in mirrors]}}}))
    path.chmod(0o644)
    return path


def two_proxies(world: Path, mirrors, **settings) -> Tuple[ServeProcess, ServeProcess]:
    """`serve` for proxy 1 on 127.0.0.2 and proxy 2 on 127.0.0.3 (two hosts), each the other's
    peer, with settings in both repos.yaml; the caller starts them."""
    port1, port2, htcp = free_port(), free_port(), free_port()
    one = ServeProcess(proxy_config(world / "proxy1", mirrors, [f"127.0.0.3:{port2}"], htcp,
                                    **settings),
                       world / "proxy1" / "serve", port1, free_port(), listen="127.0.0.2")
    two = ServeProcess(proxy_config(world / "proxy2", mirrors, [f"127.0.0.2:{port1}"], htcp,
                                    **settings),
                       world / "proxy2" / "serve", port2, free_port(), listen="127.0.0.3")
    return one, two


def helper_requests(*mirrors: MirrorServer) -> int:
    """What the helpers asked the mirrors for repo files (probes: HEAD or ranged GET), not
    Squid's fetches (those carry Via) nor the watch's look at repomd.xml."""
    return sum(1 for m in mirrors for _method, path, headers in list(m.requests)
               if "Via" not in headers and not path.endswith("repomd.xml"))


def rpm_gets(*mirrors: MirrorServer) -> int:
    return sum(m.count("GET", ".rpm", PACKAGES_PATH) for m in mirrors)


def rpm_lines(serve: ServeProcess) -> list:
    text = serve.access_log.read_text() if serve.access_log.exists() else ""
    return [line for line in text.splitlines() if re.search(r" GET \S+\.rpm ", line)]


def fleet_logs(*serves: ServeProcess) -> str:
    """What each proxy logged, for an assertion message."""
    parts = []
    for serve in serves:
        for path in (serve.access_log, serve.directory / "logs" / "cache.log"):
            text = path.read_text(errors="replace") if path.exists() else "(none)"
            parts.append(f"--- {serve.listen}: {path.name}\n{text[-4000:]}")
    return "\n".join(parts)


def install(world: Path, name: str, serve: ServeProcess, *mirrors: MirrorServer,
            accel: bool = False) -> DnfClient:
    """dnf installs through serve: as a proxy client, or (accel) an old-style client of the
    accel port, whose baseurl names the proxy itself."""
    client = DnfClient(world, name)
    if accel:
        baseurl = f"http://{serve.listen}:{serve.accel_port}/{REPO}/$releasever/$basearch/"
        result = client.install(baseurl, WANTED)
    else:
        result = client.install(VIRTUAL_BASE, WANTED, proxy=serve.proxy_url)
    if result.returncode != 0 or client.downloaded() != NEW_RPMS:
        seen = "\n".join(f"{m.url}: {method} {path}" for m in mirrors
                         for method, path, _ in list(m.requests)[-20:])
        pytest.fail(f"{name} via {serve.proxy_url}: {dnf_output(result)}\nmirrors:\n{seen}\n"
                    f"access.log:\n" + "\n".join(rpm_lines(serve))
                    + f"\nhelper.log:\n{serve.helper_log.read_text()[-4000:]}", pytrace=False)
    return client


def test_a_file_one_proxy_fetched_is_a_hit_for_another_and_a_dead_peer_costs_nothing(
        rpm_snapshots):
    require("squid", "dnf", "runuser")
    first = MirrorServer(rpm_snapshots["new"], delay=0.0).start()
    second = MirrorServer(rpm_snapshots["new"], delay=1.0).start()  # far, for proxy 1
    serves = []
    try:
        with WorldReadableDir("squid-helper-fleet-") as world:
            mirrors = [first, second]
            one, two = two_proxies(world, mirrors)
            serves += [one, two]
            for serve in (one, two):
                serve.start()
                assert "Fleet: HTCP siblings" in serve.output(), serve.output()

            # A client of proxy 1: its helper chose the near mirror (the other is far).
            install(world, "slave1", one, *mirrors)
            assert (rpm_gets(first), rpm_gets(second)) == (3, 0)

            # Now the first mirror is the far one: proxy 2's own helper chooses the second.
            first.delay, second.delay = 1.0, 0.0
            install(world, "slave2", two, *mirrors)
            assert (rpm_gets(first), rpm_gets(second)) == (3, 0), \
                "a mirror was asked for RPMs:\n" + fleet_logs(one, two)
            lines = rpm_lines(two)
            assert len(lines) == 3 and all("SIBLING_HIT/127.0.0.2" in ln for ln in lines), lines
            assert all(f":{second.port}/" in line for line in lines), \
                "proxy 2's helper chose the same mirror as proxy 1's: no store-id evidence"
            # Proxy 2 asked by the shared key (the store-id), not by its mirror URL.
            asked = (one.access_log.read_text())
            for rpm in NEW_RPMS:
                assert re.search(rf"UDP_HIT/\d+ \d+ HTCP_TST http://{STORE_ID_HOST}/{REPO}/9/"
                                 rf"x86_64/Packages/{re.escape(rpm)}", asked), asked[-3000:]

            # Proxy 1 stops; proxy 2 loses its own copies: its clients still work, the mirror
            # serves what the dead peer held.
            for rpm in NEW_RPMS:
                status, _, _ = http_get(two.listen, two.port, PACKAGES_URL + rpm,
                                        {"Host": "repoproxy"}, method="PURGE")
                assert status == 200, f"PURGE {rpm}: {status}"
            assert one.stop() == 0
            install(world, "slave3", two, *mirrors)
            assert rpm_gets(second) == 3
            assert rpm_gets(first) == 3
    finally:
        for serve in serves:
            serve.stop()
        first.stop()
        second.stop()


def test_a_fleet_sharing_its_memo_probes_once_and_keeps_serving_when_redis_stops(
        rpm_snapshots, redis_server):
    """Two proxies with one memo in Redis: proxy 2's helper answers from what proxy 1's
    verified (no probe of its own); Redis stopped mid-run, both proxies' clients still work."""
    require("squid", "dnf", "runuser")
    first = MirrorServer(rpm_snapshots["new"]).start()
    second = MirrorServer(rpm_snapshots["new"]).start()
    serves = []
    try:
        with WorldReadableDir("squid-helper-fleet-redis-") as world:
            mirrors = [first, second]
            one, two = two_proxies(world, mirrors, memo=redis_server.url)
            serves += [one, two]
            for serve in (one, two):
                serve.start()
                assert f"Shared memo: {redis_server.url}" in serve.output(), serve.output()

            install(world, "slave1", one, *mirrors)
            probed = helper_requests(*mirrors)
            assert probed >= 3  # proxy 1's helper verified (at least) the three packages
            install(world, "slave2", two, *mirrors)
            assert helper_requests(*mirrors) == probed, "proxy 2's helper probed again"
            assert rpm_gets(*mirrors) == 3

            redis_server.stop()  # mid-run
            install(world, "slave3", two, *mirrors)
            install(world, "slave4", one, *mirrors)
            for serve in (one, two):
                log = serve.helper_log.read_text()
                assert "unreachable, answering from the local memo" in log, log[-3000:]
    finally:
        for serve in serves:
            serve.stop()
        first.stop()
        second.stop()


@pytest.mark.parametrize("through_parent", [False, True], ids=["direct", "upstream-proxy"])
def test_old_style_clients_of_a_fleet_get_sibling_hits(rpm_snapshots, through_parent):
    """An old-style client (accel port, proxy named by address) of proxy 2 gets what a client
    of proxy 1 fetched as sibling hits. With upstream_proxy too (a lab whose proxies reach the
    mirrors only through the site's parent proxy), misses go to the parent, hits to the
    sibling, and each file reaches the mirror once."""
    require("squid", "dnf", "runuser")
    with MirrorServer(rpm_snapshots["new"]) as mirror, \
            WorldReadableDir("squid-helper-fleet-accel-") as world, \
            ParentSquid(world / "parent") as parent:
        settings = {"upstream_proxy": parent.proxy_url} if through_parent else {}
        one, two = two_proxies(world, [mirror], **settings)
        try:
            for serve in (one, two):
                serve.start()
                assert "Fleet: HTCP siblings" in serve.output(), serve.output()
            install(world, "slave1", one, mirror)
            install(world, "slave2", two, mirror, accel=True)
        finally:
            for serve in (one, two):
                serve.stop()
        lines = rpm_lines(two)
        assert len(lines) == 3 and all("SIBLING_HIT/127.0.0.2" in ln for ln in lines), \
            f"{lines}\n" + fleet_logs(one, two)
        fetched = [h for m, p, h in list(mirror.requests) if m == "GET" and p.endswith(".rpm")]
        assert len(fetched) == 3, fetched
        parent_gets = [e.url for e, agent in parent.requests()
                       if e.method == "GET" and e.url.endswith(".rpm")
                       and agent != "squid-helper"]
        if through_parent:
            assert sorted(u.rsplit("/", 1)[1] for u in parent_gets) == sorted(NEW_RPMS), \
                parent.requests()
            assert all(parent.hostname in h.get("Via", "") for h in fetched), fetched
        else:
            assert parent_gets == [] and not any(parent.hostname in h.get("Via", "")
                                                 for h in fetched), fetched
        for serve in (one, two):
            cache_log = (serve.directory / "logs" / "cache.log").read_text(errors="replace")
            assert "Forwarding loop" not in cache_log, cache_log[-3000:]
