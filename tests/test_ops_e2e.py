"""Operations end to end: `status`, `metrics` and `warm` against the real Squid with the installed
helpers, real RPM repositories on local mirrors, and the real dnf.

Fails (never skips) with CI=true when squid, dnf, createrepo_c or rpmbuild is missing.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from lab.helper import helper_command
from lab.mirrors import MirrorServer, dead_url, free_port
from lab.rpmrepo import (
    NEW_RPMS,
    PACKAGES_PATH,
    REPO,
    TEMPLATE_PATH,
    VIRTUAL_BASE,
    WANTED,
    DnfClient,
    dnf_output,
)
from lab.squid import SquidInstance, WorldReadableDir, chown_proxy, squid_user
from lab.wait import wait_for

from conftest import require

TREE = f"{REPO}/9/x86_64"
SUMMARY = re.compile(r"(\d+) files, (\d+) hits, (\d+) misses, (\d+) failures")


@pytest.fixture
def world() -> Iterator[Path]:
    require("squid", "dnf", "createrepo_c", "rpmbuild")
    with WorldReadableDir("squid-helper-ops-") as path:
        yield path


def squid_for(world: Path, mirrors: List[str]) -> Tuple[SquidInstance, Path]:
    accel = free_port()
    data = {"virtual_hosts": ["repoproxy"], "accel_ports": [accel],
            "cache_dir": str(world / "memo"), "log_file": str(world / "helper.log"),
            "probe_timeout": 2, "repos": {REPO: {"mirrors": mirrors}}}
    config = world / "repos.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    (world / "helper.log").touch()
    chown_proxy(world / "memo", world / "helper.log")
    return SquidInstance(world / "squid", config, accel_port=accel), config


def command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*helper_command(), *args], capture_output=True, text=True,
                          timeout=180)


def install(world: Path, name: str, squid: SquidInstance) -> None:
    client = DnfClient(world, name)
    result = client.install(VIRTUAL_BASE, WANTED, proxy=squid.proxy_url)
    assert result.returncode == 0 and client.downloaded() == NEW_RPMS, \
        f"{dnf_output(result)}\n" + "\n".join(map(str, squid.access_log()[-20:]))


def status(config: Path, squid: SquidInstance) -> Dict:
    result = command("status", "--config", str(config), "--proxy", squid.proxy, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def tree_of(document: Dict) -> Dict:
    (repo,) = [r for r in document["repos"] if r["name"] == REPO]
    (tree,) = repo["trees"]
    return tree


def rpm_gets(mirror: MirrorServer) -> int:
    return mirror.count("GET", ".rpm", PACKAGES_PATH)


def warm(config: Path, squid: SquidInstance, *what: str) -> Tuple[int, Tuple[int, ...], str]:
    """Run warm; (exit status, (files, hits, misses, failures) from its summary, stderr)."""
    result = command("warm", "--config", str(config), "--proxy", squid.proxy, TREE, *what)
    found = SUMMARY.search(result.stdout)
    assert found, f"no summary:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result.returncode, tuple(int(n) for n in found.groups()), result.stderr


def test_status_and_metrics_after_real_traffic(world, rpm_snapshots, servers):
    """A dead mirror listed first, a good one second: after one dnf run, status shows the dead
    one unhealthy and the good one answering, the answers memoised, Squid's counters; a
    second dnf run raises the hits by at least its three RPMs. Reading changes no memo file's
    owner, and the metrics carry the same figures."""
    good = MirrorServer(rpm_snapshots["new"]).start()
    servers.append(good)
    dead = dead_url("/")
    squid, config = squid_for(world, [dead + TEMPLATE_PATH, good.url + TEMPLATE_PATH])
    with squid:
        install(world, "slave1", squid)
        first = status(config, squid)
        tree = tree_of(first)
        mirrors = {m["url"]: m for m in tree["mirrors"]}
        down, up = mirrors[dead + "pub/9/x86_64/"], mirrors[good.url + "pub/9/x86_64/"]
        assert down["health"] == "unhealthy" and down["until"] > first["time"], down
        assert down["last_probe"]["outcome"] == "failed"
        assert up["health"] == "healthy" and up["verdict"] == "fresh", up
        assert up["latency_seconds"] is not None and up["last_probe"]["outcome"] in \
            ("found", "missing", "unchanged")
        assert tree["answers"] >= 4  # repomd.xml, the primary and the RPMs
        assert first["memo"]["state"] == "ok"
        squid_first = first["squid"]
        assert squid_first["reachable"] and squid_first["requests"] >= 5, squid_first

        install(world, "slave2", squid)
        assert wait_for(lambda: status(config, squid)["squid"]["hits"] >=
                        squid_first["hits"] + len(NEW_RPMS), timeout=15, step=0.5), \
            (squid_first, status(config, squid)["squid"], squid.access_log()[-10:])
        second = status(config, squid)["squid"]
        assert second["hit_bytes_sent"] > squid_first["hit_bytes_sent"]
        assert 0 < second["hit_ratio"] <= 1

        proxy_uid = pwd.getpwnam(squid_user()).pw_uid
        owners = {e.name: e.stat().st_uid for e in os.scandir(world / "memo")}
        assert set(owners.values()) == {proxy_uid}, owners

        exposition = command("metrics", "--config", str(config), "--proxy", squid.proxy)
        assert exposition.returncode == 0, exposition.stderr
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(exposition.stdout)
                   for s in f.samples}
        host = down["host"]
        assert samples[("squid_helper_mirror_health",
                        (("host", host), ("state", "unhealthy")))] == 1
        assert samples[("squid_helper_squid_hits_total", (("proxy", squid.proxy),))] >= \
            second["hits"]
        labels = (("arch", "x86_64"), ("releasever", "9"), ("repo", REPO))
        assert samples[("squid_helper_memo_answers", labels)] >= tree["answers"]


def test_metrics_served_for_scrapes(world, rpm_snapshots, servers):
    good = MirrorServer(rpm_snapshots["new"]).start()
    servers.append(good)
    squid, config = squid_for(world, [good.url + TEMPLATE_PATH])
    port = free_port()
    with squid:
        install(world, "slave1", squid)
        server = subprocess.Popen([*helper_command(), "metrics", "--config", str(config),
                                   "--proxy", squid.proxy, "--listen", f"127.0.0.1:{port}"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            def scrape() -> str:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                                timeout=5) as response:
                        return response.read().decode()
                except OSError:
                    return ""

            assert wait_for(lambda: "squid_helper_squid_up" in scrape(), timeout=20,
                            step=0.2), server.stderr.read() if server.poll() is not None else ""
            before = _squid_requests(scrape(), squid.proxy)
            install(world, "slave2", squid)
            # Every scrape reads Squid afresh: the second dnf run shows.
            assert wait_for(lambda: _squid_requests(scrape(), squid.proxy) > before,
                            timeout=15, step=0.5)
        finally:
            server.terminate()
            assert server.wait(timeout=15) == 0


def _squid_requests(text: str, proxy: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "squid_helper_squid_requests_total" and \
                    sample.labels.get("proxy") == proxy:
                return sample.value
    return -1.0


def test_warm_then_dnf_needs_no_mirror(world, rpm_snapshots, servers):
    """warm one package, then --all (which resumes: what is cached is a hit), then a dnf
    client installing packages makes no RPM request at the mirror; a rerun is all hits, and a
    package that does not exist fails the run with a message."""
    good = MirrorServer(rpm_snapshots["new"]).start()
    servers.append(good)
    squid, config = squid_for(world, [good.url + TEMPLATE_PATH])
    with squid:
        code, (files, hits, misses, failures), _ = warm(config, squid, "alpha")
        assert code == 0 and failures == 0 and hits == 0 and misses == files
        assert rpm_gets(good) == 1  # alpha only
        first = files

        code, (files, hits, misses, failures), _ = warm(config, squid, "--all")
        assert code == 0 and failures == 0
        assert hits == first and misses == files - first == len(NEW_RPMS) - 1
        assert rpm_gets(good) == len(NEW_RPMS)

        install(world, "slave1", squid)
        assert rpm_gets(good) == len(NEW_RPMS), good.paths()

        code, (files, hits, misses, failures), _ = warm(config, squid, "--all")
        assert (code, hits, misses, failures) == (0, files, 0, 0)
        assert rpm_gets(good) == len(NEW_RPMS)

        code, (files, hits, misses, failures), stderr = warm(config, squid, "gamma", "nosuch")
        assert code == 1 and failures == 0 and hits == files
        assert f"FAILED package 'nosuch': not in {TREE}" in stderr


def test_warm_reports_each_file_that_fails(world, rpm_snapshots, servers):
    """A mirror that fails one package: that file is reported with Squid's answer, the others
    are warmed, and the run exits non-zero."""
    good = MirrorServer(rpm_snapshots["new"]).start()
    servers.append(good)
    good.fail_paths["beta-2.0"] = (404, {})  # half-synced: repodata lists it, file missing
    squid, config = squid_for(world, [good.url + TEMPLATE_PATH])
    with squid:
        code, (files, hits, misses, failures), stderr = warm(config, squid, "--all")
    assert code == 1 and failures == 1 and misses == files - 1
    assert re.search(r"FAILED Packages/beta-2\.0-1\.noarch\.rpm: HTTP 404 from the proxy",
                     stderr), stderr
