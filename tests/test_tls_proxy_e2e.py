"""End to end, https:// mirrors and an upstream proxy: the real Squid with the installed helper,
real RPM repositories on local mirrors (some over TLS, with a CA made for the test), and the real
dnf client. Squid and the helper get the test CA through ca_file, as `serve` wires them.

Fails (never skips) with CI=true when squid, dnf, createrepo_c or rpmbuild is missing.
"""

from __future__ import annotations

import queue
import shutil
import signal
import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Iterator, List, Optional

import pytest
import yaml

# The end-to-end helpers of test_squid_e2e: Squid started from the shipped template with the
# helper's repos.yaml beside it, dnf clients that must succeed, what the mirrors saw.
from test_squid_e2e import assert_installed, diagnosis, rpm_requests, slave, start_squid

from lab.helper import helper_command
from lab.httpclient import http_get
from lab.mirrors import MirrorServer, dead_url, free_port
from lab.procfs import kill_tree
from lab.rpmrepo import PACKAGES_PATH, REPO, TEMPLATE_PATH, TREE, DnfClient, dnf_output
from lab.squid import ParentSquid, SquidInstance, WorldReadableDir
from lab.tls import LabCA
from lab.wait import wait_for

from conftest import require

RPMS = ("alpha-1.0-1.noarch.rpm", "beta-2.0-1.noarch.rpm", "gamma-1.0-1.noarch.rpm")


@pytest.fixture
def world() -> Iterator[Path]:
    """A directory the proxy user can reach, for Squid, the helper's files and the test CA."""
    require("squid", "squidclient", "dnf", "createrepo_c", "rpmbuild")
    with WorldReadableDir("squid-helper-tls-") as path:
        yield path


@pytest.fixture
def ca(world: Path) -> LabCA:
    return LabCA(world / "tls")


def mirror(servers: List[MirrorServer], root: Optional[Path], tls=None,
           delay: float = 0.0) -> MirrorServer:
    server = MirrorServer(root, tls=tls, delay=delay).start()
    servers.append(server)
    return server


def mirror_fetches(squid: SquidInstance) -> Counter:
    """How often Squid fetched each RPM from a mirror (every access.log line that was no hit)."""
    return Counter(entry.url.rsplit("/", 1)[1] for entry in squid.access_log()
                   if entry.url.endswith(".rpm") and not entry.hit)


def install(world: Path, name: str, squid: SquidInstance, packages: List[str],
            expected: List[str]) -> DnfClient:
    client = DnfClient(world, name)
    result = client.install(f"http://repoproxy/{REPO}/$releasever/$basearch/", packages,
                            proxy=squid.proxy_url)
    if result.returncode != 0 or client.downloaded() != expected:
        pytest.fail(f"{name}: dnf failed or downloaded {client.downloaded()}\n"
                    f"{dnf_output(result)}\n{diagnosis(squid)}", pytrace=False)
    return client


def test_dnf_installs_from_https_only_mirrors_and_a_bad_certificate_is_skipped(
        world, rpm_snapshots, servers, ca):
    """Every mirror is https://. The first one's certificate comes from a CA nobody trusts
    (Squid 5.7 with GnuTLS would fetch from it all the same: the helper is what keeps it out).
    dnf installs; the packages come over TLS from the good mirrors, once; a second client gets
    them from Squid's cache."""
    stranger = LabCA(world / "stranger", "stranger")
    untrusted = mirror(servers, rpm_snapshots["new"], tls=stranger.server_context())
    good = mirror(servers, rpm_snapshots["new"], tls=ca.server_context())
    other = mirror(servers, rpm_snapshots["new"], tls=ca.server_context(), delay=0.05)
    repos = {REPO: {"mirrors": [m.url + TEMPLATE_PATH for m in (untrusted, good, other)]}}
    squid, _ = start_squid(world, repos, squid_params={"ca_file": str(ca.cert_file)},
                           ca_file=str(ca.cert_file))
    assert f"cafile={ca.cert_file} default-ca=off" in squid.conf_text()
    with squid:
        slave(world, "slave1", squid)
        fetched = squid.wait_rpm_entries(3)
        slave(world, "slave2", squid)
        second = squid.wait_rpm_entries(3, start=len(fetched))
    rpm_urls = [e.url for e in fetched if e.url.endswith(".rpm")]
    assert len(rpm_urls) == 3 and all(u.startswith("https://127.0.0.1:") for u in rpm_urls)
    assert rpm_requests(good, other, method="GET") == 3, diagnosis(squid, good, other)
    hits = [e.hit for e in second if e.url.endswith(".rpm")]
    assert hits == [True] * 3, second
    assert mirror_fetches(squid) == Counter(RPMS)
    # The helper tried the untrusted mirror, refused it, and never sent Squid there.
    assert untrusted.accepted > 0 and untrusted.count() == 0, untrusted.paths()
    log = (world / "helper.log").read_text()
    assert (f"certificate verify failed for host 127.0.0.1:{untrusted.port}: unable to get "
            "local issuer certificate") in log, log[-3000:]
    assert f"127.0.0.1:{untrusted.port}" not in "".join(e.url for e in squid.access_log())


def test_failover_between_http_and_https_mirrors_fetches_each_rpm_once(
        world, rpm_snapshots, servers, ca):
    """One mirror over http, one over https, the same repository. The first client installs
    beta; the mirror that served it dies; the second client installs gamma and beta (and
    alpha, which gamma needs). The helper moves to the other mirror, of the other scheme: beta
    is still a hit (one cache key whatever the mirror and its scheme), alpha and gamma come
    from the survivor, and Squid fetched every RPM from a mirror exactly once."""
    secure = mirror(servers, rpm_snapshots["new"], tls=ca.server_context())
    plain = mirror(servers, rpm_snapshots["new"])
    repos = {REPO: {"mirrors": [secure.url + TEMPLATE_PATH, plain.url + TEMPLATE_PATH]}}
    squid, _ = start_squid(world, repos, squid_params={"ca_file": str(ca.cert_file)},
                           ca_file=str(ca.cert_file), unhealthy_ttl=600)
    with squid:
        install(world, "slave1", squid, ["beta"], ["beta-2.0-1.noarch.rpm"])
        # Both are as fast: whichever the helper measured faster served the package.
        first, survivor = (secure, plain) if rpm_requests(secure, method="GET") else (
            plain, secure)
        assert rpm_requests(first, method="GET") == 1 and rpm_requests(survivor) == 0
        first.stop()
        # The helpers' watch finds it dead within a few seconds and moves every answer off it.
        host = first.url.split("/")[2]
        assert wait_for(lambda: f"mirror {host} marked unhealthy" in
                        (world / "helper.log").read_text(), timeout=30), diagnosis(squid)
        install(world, "slave2", squid, ["gamma", "beta"], list(RPMS))
        squid.wait_rpm_entries(4)
        assert mirror_fetches(squid) == Counter(RPMS), squid.access_log()
    assert rpm_requests(survivor, method="GET") == 2, diagnosis(squid, survivor)
    assert survivor.count("GET", "beta-2.0-1.noarch.rpm") == 0
    schemes = {entry.url.split(":")[0] for entry in squid.access_log()
               if entry.url.endswith(".rpm") and not entry.hit}
    assert schemes == {"http", "https"}, squid.access_log()


@pytest.fixture
def parent(world: Path) -> Iterator[ParentSquid]:
    with ParentSquid(world / "parent") as proxy:
        yield proxy


def test_dnf_works_through_an_upstream_parent_proxy(world, rpm_snapshots, servers, ca,
                                                     parent):
    """upstream_proxy: the helper's probes (an https:// mirror's through CONNECT) and Squid's
    fetches, on the forward port and the accel port alike, all go through a parent Squid on
    loopback, although this Squid keeps the guard that refuses clients loopback destinations.
    A dead mirror, as the parent reports it, is skipped like one."""
    tree = world / "origin"
    shutil.copytree(rpm_snapshots["new"], tree)
    (tree / TREE / "extra.txt").write_bytes(b"fetched after a reconfigure\n")
    good = mirror(servers, tree, tls=ca.server_context())
    dead = dead_url("/")
    repos = {REPO: {"mirrors": [dead + TEMPLATE_PATH, good.url + TEMPLATE_PATH]}}
    squid, _ = start_squid(
        world, repos, squid_params={"ca_file": str(ca.cert_file),
                                    "upstream_proxy": ("127.0.0.1", parent.port)},
        ca_file=str(ca.cert_file), upstream_proxy=parent.proxy_url)
    text = squid.conf_text()
    assert f"cache_peer 127.0.0.1 parent {parent.port} 0 no-query" in text
    assert "\nalways_direct" not in text and "\nhttp_access deny !repo_virtual" in text
    with squid:
        # The old-style client first, so that the packages are fetched for the accel port
        # (an always_direct line for it would send them around the parent) ...
        old_style = DnfClient(world, "accel")
        result = old_style.install(f"http://127.0.0.1:{squid.accel_port}/{REPO}/"
                                   "$releasever/$basearch/", ["gamma", "beta", "alpha"])
        assert_installed(old_style, result, squid)
        # ... and the forward port's client is served from the cache.
        slave(world, "forward", squid)
        # After a reconfigure Squid 5.7 garbles the first request on a connection to the
        # parent kept from before it (the template keeps none): a new file still arrives.
        squid.reconfigure()
        status, _, body = squid.get(f"http://repoproxy/{REPO}/9/x86_64/extra.txt")
        assert (status, body) == (200, b"fetched after a reconfigure\n"), diagnosis(squid)
        assert wait_for(lambda: squid.hierarchy("extra.txt"))  # logged once it ended
        fetches = [(e.url, h) for e, h in squid.hierarchy(".rpm") + squid.hierarchy("extra.txt")
                   if not e.hit]
    assert len(fetches) == 4 and all(h.startswith("FIRSTUP_PARENT/") for _, h in fetches), \
        fetches

    seen = parent.requests()
    rpm_gets = [e for e, _ in seen if e.method == "GET" and e.url.endswith(".rpm")]
    # Squid's fetches: each package once (the second client's were hits), as GET https://...
    assert sorted(e.url.rsplit("/", 1)[1] for e in rpm_gets) == sorted(RPMS), seen
    assert all(e.url.startswith(good.url) and e.status == 200 for e in rpm_gets), rpm_gets
    # The helper's probes: CONNECT tunnels to the https mirror (logged once the helpers, gone
    # with Squid, closed them), and its requests for the dead http mirror, which the parent
    # answered itself.
    assert wait_for(lambda: any(e.method == "CONNECT" and e.url == f"127.0.0.1:{good.port}"
                                for e, _ in parent.requests())), parent.requests()
    dead_host = dead.split("/")[2]
    probes = [(e, agent) for e, agent in seen if dead_host in e.url]
    assert probes and all(agent == "squid-helper" and e.status == 503
                          for e, agent in probes), probes
    # Nothing of Squid's reached the mirror around the parent.
    fetched = [h for m, p, h in good.requests if p.startswith(PACKAGES_PATH)
               and not h.get("User-Agent", "").startswith("squid-helper")]
    assert len(fetched) == 3 and all(parent.hostname in h.get("Via", "") for h in fetched), \
        fetched
    log = (world / "helper.log").read_text()
    assert (f"upstream proxy {parent.proxy_url} could not reach {dead_host}: 503 "
            "ERR_CONNECT_FAIL") in log, log[-3000:]


def test_serve_gives_squid_the_ca_file_and_the_parent_of_repos_yaml(world, rpm_snapshots,
                                                                     servers, ca, parent):
    """`squid-helper serve` with a relative ca_file and an upstream_proxy in repos.yaml: the
    Squid it runs fetches an https:// mirror's files through the parent, on both ports."""
    good = mirror(servers, rpm_snapshots["new"], tls=ca.server_context())
    config = world / "tls" / "repos.yaml"  # beside the CA: ca_file is relative to it
    config.write_text(yaml.safe_dump({
        "virtual_hosts": ["repoproxy"], "probe_timeout": 2, "ca_file": ca.cert_file.name,
        "upstream_proxy": parent.proxy_url,
        "repos": {REPO: {"mirrors": [good.url + TEMPLATE_PATH]}}}))
    port, accel = free_port(), free_port()
    lines: queue.Queue = queue.Queue()
    process = subprocess.Popen(
        [*helper_command(), "serve", "--config", str(config), "--port", str(port),
         "--accel-port", str(accel), "--listen", "127.0.0.1", "--dir", str(world / "serve"),
         "--allow", "127.0.0.0/8", "--cache-size", "100"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        threading.Thread(target=lambda: [lines.put(x) for x in process.stdout],
                         daemon=True).start()
        output: List[str] = []

        def serving() -> bool:
            while not lines.empty():
                output.append(lines.get())
            return any("proxy=" in line for line in output) or process.poll() is not None

        assert wait_for(serving, timeout=90) and process.poll() is None, \
            "".join(output) + (process.stderr.read() if process.poll() is not None else "")
        conf = (world / "serve" / "squid.conf").read_text()
        assert f"cache_peer 127.0.0.1 parent {parent.port} 0 no-query" in conf
        assert f"cafile={ca.cert_file} default-ca=off" in conf
        forward = http_get("127.0.0.1", port, f"http://repoproxy/{REPO}/9/x86_64/Packages/"
                           + RPMS[0], {"Host": "repoproxy"})
        old_style = http_get("127.0.0.1", accel, f"/{REPO}/9/x86_64/Packages/{RPMS[1]}",
                             {"Host": f"127.0.0.1:{accel}"})
        assert forward[0] == old_style[0] == 200, (forward[:2], old_style[:2])
        assert forward[2][:4] == old_style[2][:4] == b"\xed\xab\xee\xdb"  # RPM leads
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, process.stderr.read()
    finally:
        kill_tree(process)
    fetched = [e.url for e, _ in parent.requests() if e.method == "GET"]
    assert f"{good.url}pub/9/x86_64/Packages/{RPMS[0]}" in fetched, fetched
    assert f"{good.url}pub/9/x86_64/Packages/{RPMS[1]}" in fetched, fetched
