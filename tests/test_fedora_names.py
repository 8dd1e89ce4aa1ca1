"""Fedora's real file names through the real Squid and the real dnf: caret snapshot versions
(snap-1.0^20230101git1234abc), tildes (tilde-2.0~rc1) and '++' in names (libsq++-devel, like
libstdc++-devel).

dnf 4.14 (librepo 1.14) asks for snap-1.0%5e2023...rpm and libsq%2b%2b-devel...rpm (escaped,
lower-case hex) and tilde-2.0~rc1...rpm (raw); curl would send '^' and '+' raw. The helper
spells each name one way (urls.canonical_path), so the mirror gets a URL its server decodes to
the real file name, and every spelling, on either port and from either mirror, is one object in
Squid's cache (store-id).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from lab.helper import write_config
from lab.mirrors import MirrorServer, free_port
from lab.rpmrepo import (
    REPO,
    TEMPLATE_PATH,
    TREE,
    VIRTUAL_BASE,
    DnfClient,
    build_rpm,
    dnf_output,
    make_rpm_repo,
)
from lab.squid import SquidInstance, WorldReadableDir, chown_proxy
from lab.wait import wait_for

from conftest import require

PACKAGES = {"snap": "snap-1.0^20230101git1234abc-1.noarch.rpm",
            "tilde": "tilde-2.0~rc1-1.noarch.rpm",
            "libsq++-devel": "libsq++-devel-3.0-1.noarch.rpm"}
# The name each file has in the helper's answers, and so at the mirror.
CANONICAL = {"snap": "snap-1.0%5E20230101git1234abc-1.noarch.rpm",
             "tilde": "tilde-2.0~rc1-1.noarch.rpm",
             "libsq++-devel": "libsq%2B%2B-devel-3.0-1.noarch.rpm"}
# Other clients' spellings of the same files.
OTHER_SPELLINGS = ["snap-1.0^20230101git1234abc-1.noarch.rpm",
                   "snap-1.0%5E20230101git1234abc-1.noarch.rpm",
                   "tilde-2.0%7Erc1-1.noarch.rpm",
                   "libsq++-devel-3.0-1.noarch.rpm",
                   "libsq%2B%2b-devel-3.0-1.noarch.rpm"]


@pytest.fixture(scope="module")
def mirror_root(tmp_path_factory) -> Path:
    """A real RPM repository of the three packages, at TREE below the returned root."""
    require("squid", "dnf", "createrepo_c", "rpmbuild")
    base = tmp_path_factory.mktemp("fedora-names")
    rpms = [build_rpm(base / "build", "snap", "1.0^20230101git1234abc"),
            build_rpm(base / "build", "tilde", "2.0~rc1"),
            build_rpm(base / "build", "libsq++-devel", "3.0")]
    assert sorted(rpm.name for rpm in rpms) == sorted(PACKAGES.values())
    make_rpm_repo(base / "mirror" / TREE, rpms, revision=1)
    return base / "mirror"


@pytest.fixture
def mirrors(mirror_root: Path) -> Iterator[List[MirrorServer]]:
    servers = [MirrorServer(mirror_root).start(), MirrorServer(mirror_root).start()]
    yield servers
    for server in servers:
        if not server.stopping.is_set():
            server.stop()


def package_gets(server: MirrorServer) -> Dict[str, int]:
    """Package file name as the mirror was asked for it -> GETs of it (probes are HEADs)."""
    gets = {path.rsplit("/", 1)[1]: server.count("GET", path) for path in set(server.paths())
            if path.endswith(".rpm")}
    return {name: count for name, count in gets.items() if count}


def install(world: Path, name: str, baseurl: str, proxy=None) -> DnfClient:
    client = DnfClient(world, name)
    result = client.install(baseurl, list(PACKAGES), proxy=proxy)
    assert result.returncode == 0, dnf_output(result) + _logs(world)
    assert client.downloaded() == sorted(PACKAGES.values()), dnf_output(result)
    return client


def _logs(world: Path) -> str:
    squid_logs = world / "squid" / "logs"
    return "".join(f"\n{name}:\n{(squid_logs / name).read_text()[-3000:]}"
                   for name in ("access.log", "cache.log") if (squid_logs / name).exists()) + \
        f"\nhelper.log:\n{(world / 'helper.log').read_text()[-4000:]}"


def test_caret_tilde_and_plus_names_through_squid_and_dnf_on_both_ports(mirrors, mirror_root):
    first, second = mirrors
    with WorldReadableDir("squid-helper-names-") as world:
        accel = free_port()
        config = write_config(world, {REPO: {"mirrors": [m.url + TEMPLATE_PATH
                                                         for m in mirrors]}},
                              accel_ports=[accel], unhealthy_ttl=600)
        (world / "helper.log").touch()
        chown_proxy(world / "memo", world / "helper.log")
        with SquidInstance(world / "squid", config, accel_port=accel) as squid:
            # 1. dnf through the forward port: each file once, under its canonical name.
            one = install(world, "slave1", VIRTUAL_BASE, proxy=squid.proxy_url)
            used, spare = (first, second) if package_gets(first) else (second, first)
            assert package_gets(used) == {CANONICAL[p]: 1 for p in PACKAGES}, used.paths()
            assert package_gets(spare) == {}
            for name in PACKAGES.values():  # dnf checked the checksums; the bytes are the files
                assert (one.directory / "downloads" / name).read_bytes() == \
                    (mirror_root / TREE / "Packages" / name).read_bytes()
            log = (world / "helper.log").read_text()
            sent = re.search(r"/Packages/(snap-1\.0\S*?20230101git1234abc-1\.noarch\.rpm) ->", log)
            assert sent, log[-3000:]
            # What librepo sends for '^': escaped (librepo 1.14.5: %5e, lower case).
            assert sent.group(1).lower() == "snap-1.0%5e20230101git1234abc-1.noarch.rpm", sent

            # 2. The mirror that served them dies; once the helpers know (the watch looks at
            # the mirrors in use every few seconds), answers go to the other one ...
            used.stop()
            assert wait_for(lambda: "marked unhealthy" in (world / "helper.log").read_text(),
                            timeout=30, step=0.2), _logs(world)
            # ... and dnf through the accel port, old style, gets every package from Squid's
            # cache: the store-id of each name is the same whichever mirror it names.
            install(world, "slave2", f"http://127.0.0.1:{accel}/{REPO}/$releasever/$basearch/")
            # 3. Other clients' spellings of the names are the same objects too.
            for spelling in OTHER_SPELLINGS:
                status, _headers, body = squid.get(
                    f"http://repoproxy/{REPO}/9/x86_64/Packages/{spelling}")
                assert status == 200, (spelling, status, _logs(world))
                real = next(n for n in PACKAGES.values() if spelling.startswith(n[:4]))
                assert body == (mirror_root / TREE / "Packages" / real).read_bytes(), spelling
            assert package_gets(spare) == {}, spare.paths()
            total = 2 * len(PACKAGES) + len(OTHER_SPELLINGS)
            rpms = [e for e in squid.wait_rpm_entries(total) if e.url.endswith(".rpm")]
            late = rpms[len(PACKAGES):]
            assert len(late) == len(PACKAGES) + len(OTHER_SPELLINGS), rpms
            assert all(e.hit for e in late), late
            # Squid logs the URL the helper answered: the canonical names on the new mirror.
            assert {e.url.rsplit("/", 1)[1] for e in late} == set(CANONICAL.values())
            assert all(e.url.startswith(spare.url) for e in late), late
