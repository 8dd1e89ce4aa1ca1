"""Issue 23, item 1: no lab client reaches the proxy host's own services, on any of its
addresses, through the proxy (CONNECT included), while repo URLs, accel-port URLs and fetches
from hosts that really are elsewhere keep working. serve reads the host's addresses again at
every reload. The metrics listener serves loopback unless told otherwise.

The lab is a network namespace (lab.netns) joined to this host by a veth pair: the host end is
the proxy host's LAN address, the clients and a mirror live inside. Squid listens on the host
end only."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import yaml
from test_squid_e2e import start_squid, world  # noqa: F401 (world: a fixture)

from lab.httpclient import http_get
from lab.mirrors import MirrorServer, free_port
from lab.netns import NetworkNamespace
from lab.rpmrepo import PACKAGES_URL, REPO, TEMPLATE_PATH
from lab.serve import ServeProcess
from lab.squid import WorldReadableDir, parse_rendered
from lab.wait import wait_for
from squid_helper.ops.hostaddresses import ipv4_local, ipv6_local, this_host_addresses
from squid_helper.ops.metrics import listen_address
from squid_helper.ops.squidconf import SquidConfError, SquidConfParams, render

from conftest import require

FIB_TRIE = """\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
     +-- 10.9.0.0/16 2 0 2
           |-- 10.9.0.0
              /16 host LOCAL
     +-- 192.0.2.0/24 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
Local:
     +-- 192.0.2.0/24 2 0 2
           |-- 192.0.2.2
              /32 host LOCAL
"""
IF_INET6 = """\
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
fd000000000000000000000000000002 04 40 00 82     eth0
"""
SECRET = b"only for this host\n"


# -- finding the addresses (pure) ----------------------------------------------------------------
def test_every_local_address_is_found_but_loopback_and_link_local():
    # 10.9.0.0/16 "host LOCAL" is an AnyIP route: the whole network is this host.
    assert ipv4_local(FIB_TRIE) == ["10.9.0.0/16", "192.0.2.2"]
    assert ipv6_local(IF_INET6) == ["fd00::2"]


def test_a_missing_kernel_list_adds_nothing(tmp_path):
    fib = tmp_path / "fib_trie"
    fib.write_text(FIB_TRIE)
    assert this_host_addresses(fib, tmp_path / "no-if_inet6") == ("10.9.0.0/16", "192.0.2.2")


# -- rendering them (pure) ----------------------------------------------------------------------
def test_the_host_addresses_go_into_to_this_host_and_are_refused_to_clients():
    text = render(SquidConfParams(host_addresses=("192.0.2.2", "fd00::2", "10.9.0.0/16")))
    assert "\nacl to_this_host dst 192.0.2.2 fd00::2 10.9.0.0/16\n" in text
    assert "\nhttp_access deny !repo_virtual !repo_accel to_this_host\n" in text
    # Before any allow: the lab cannot get past it.
    assert text.index("deny !repo_virtual !repo_accel to_this_host") < text.index(
        "http_access allow lab")
    # With peers, only-if-cached (a sibling's fetch, answered from the cache) is exempt.
    fleet = render(SquidConfParams(host_addresses=("192.0.2.2",), peers=(("10.0.0.7", 3128),)))
    assert "\nhttp_access deny !repo_virtual !repo_accel !cache_only to_this_host\n" in fleet


def test_the_example_asks_the_admin_for_the_addresses_and_a_bare_host_stays_valid():
    example = render(SquidConfParams())
    assert "# EDIT THIS: every address of this host" in example
    assert "\nacl to_this_host dst 127.0.0.1\n" in example
    assert "\nacl to_this_host dst 127.0.0.1\n" in render(SquidConfParams(host_addresses=()))


@pytest.mark.parametrize("bad", ["10.0.0.300", "example.org", "10.0.0.1\nhttp_access allow all"])
def test_a_bad_host_address_is_refused_naming_it(bad):
    with pytest.raises(SquidConfError, match="host_addresses"):
        render(SquidConfParams(host_addresses=("192.0.2.2", bad)))


def test_squid_accepts_the_addresses_of_this_host(tmp_path):
    require("squid", root=False)
    output, problems = parse_rendered(tmp_path, host_addresses=this_host_addresses())
    assert not problems, output


# -- the metrics listener --------------------------------------------------------------------------
def test_the_metrics_listener_serves_loopback_unless_an_address_is_named():
    assert listen_address("9311") == ("127.0.0.1", 9311)
    assert listen_address(":9311") == ("127.0.0.1", 9311)
    assert listen_address("0.0.0.0:9311") == ("0.0.0.0", 9311)
    assert listen_address("[::1]:9311") == ("::1", 9311)
    assert listen_address("host:port") is None and listen_address("70000") is None


# -- a lab client against the real Squid -----------------------------------------------------------
def ask(lan: NetworkNamespace, client: str, squid, url: str, method: str = "GET",
        headers: dict = None) -> int:
    """The status a lab client at `client` gets from Squid for url (a request line's target)."""
    host = url.split("/")[2] if "://" in url else url

    def request() -> int:
        return http_get(squid.address, squid.port, url, {"Host": host, **(headers or {})},
                        method=method, timeout=15, source=client)[0]
    return lan.run(request)


def test_no_lab_client_reaches_this_hosts_services_on_any_of_its_addresses(
        world, rpm_snapshots, servers):  # noqa: F811
    require("squid", "ip")
    with NetworkNamespace(clients=3) as lan:
        inside, outside, elsewhere = lan.client_addresses
        second = lan.add_host_address()  # an address of this host where Squid does not listen
        # A mirror on another host of the LAN (inside the namespace), and services of this host
        # on both of its LAN addresses, one on 443 for CONNECT.
        far = lan.run(lambda: MirrorServer(rpm_snapshots["new"], host=elsewhere).start())
        servers.append(far)
        services = [MirrorServer(documents={"/secret.txt": SECRET}, host=address).start()
                    for address in (lan.host_address, second)]
        tls_service = MirrorServer(documents={"/": SECRET}, host=second, port=443).start()
        servers.extend([*services, tls_service])
        addresses = this_host_addresses()
        assert lan.host_address in addresses and second in addresses, addresses
        squid, _ = start_squid(world, {REPO: {"mirrors": [far.url + TEMPLATE_PATH]}},
                               squid_params={"listen_address": lan.host_address,
                                             "lab_networks": (f"{inside}/32",),
                                             "host_addresses": addresses})
        with squid:
            package = PACKAGES_URL + "alpha-1.0-1.noarch.rpm"
            # What the lab needs keeps working: repo URLs (rewritten to the mirror elsewhere),
            # old-style URLs on the accel port (addressed to this host until rewritten), and
            # the generic proxy to other hosts.
            assert ask(lan, inside, squid, package) == 200
            accel = lan.run(lambda: http_get(
                squid.address, squid.accel_port, f"/{REPO}/9/x86_64/Packages/beta-2.0-1."
                "noarch.rpm", {"Host": f"{squid.address}:{squid.accel_port}"}, timeout=15,
                source=inside)[0])
            assert accel == 200
            assert ask(lan, inside, squid, far.url + "pub/9/x86_64/repodata/repomd.xml") == 200
            # This host's services are not reachable on any address, nor by CONNECT.
            for service in services:
                assert ask(lan, inside, squid, service.url + "secret.txt") == 403, service.url
            assert ask(lan, inside, squid, f"{second}:443", method="CONNECT") == 403
            assert ask(lan, inside, squid, f"{lan.host_address}:443", method="CONNECT") == 403
            # A client outside the lab acl gets nothing at all.
            assert ask(lan, outside, squid, package) == 403
            assert ask(lan, outside, squid, services[1].url + "secret.txt") == 403
        assert all(service.count() == 0 for service in services)
        assert tls_service.accepted == 0


def test_serve_covers_an_address_added_after_it_started_from_a_reload(rpm_snapshots):
    require("squid", "ip", "runuser")
    good = MirrorServer(rpm_snapshots["new"]).start()
    try:
        with WorldReadableDir("squid-helper-guards-") as world_dir, \
                NetworkNamespace() as lan:
            config = world_dir / "repos.yaml"
            config.write_text(yaml.safe_dump({
                "virtual_hosts": ["repoproxy"], "probe_timeout": 2,
                "repos": {REPO: {"mirrors": [good.url + TEMPLATE_PATH]}}}))
            with ServeProcess(config, world_dir / "serve", free_port(), free_port()) as serve:
                added = lan.add_host_address()
                service = MirrorServer(documents={"/secret.txt": SECRET}, host=added).start()
                try:
                    def status() -> int:
                        try:
                            return http_get("127.0.0.1", serve.port,
                                            f"http://{added}:{service.port}/secret.txt",
                                            {"Host": f"{added}:{service.port}"}, timeout=15)[0]
                        except OSError:  # Squid reopens its port while it reconfigures
                            return 0
                    # Not known when squid.conf was rendered: the address is not covered yet.
                    assert status() == 200 and service.count() == 1
                    serve.process.send_signal(signal.SIGHUP)
                    assert wait_for(lambda: "reloaded" in serve.output(), 60), serve.output()
                    assert wait_for(lambda: status() == 403, 30), serve.output()
                    conf = Path(world_dir / "serve" / "squid.conf").read_text()
                    listed = conf.split("\nacl to_this_host dst ", 1)[1].split("\n")[0]
                    assert added in listed.split(), listed
                    reached = service.count()
                    assert status() == 403 and service.count() == reached
                finally:
                    service.stop()
    finally:
        good.stop()
