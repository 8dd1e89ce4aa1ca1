"""The bytes, not only the choice (issue 20, items 2 and 3), end to end: the real Squid with the
installed helpers, real RPM repositories on local mirrors, and the real dnf.

* A mirror that serves corrupted packages (200, the right length, one byte flipped), listed
  first and fastest: once the integrity check has looked at what Squid fetched from it (the
  test calls consider() right after the client's fetch, as the fetch-report daemon will), no
  corrupted copy is left in Squid's cache, a package found corrupt never comes from that
  mirror again, and a later dnf client installs.
* A client asking for another mirror's URL directly never changes what repo clients get.

Like every end-to-end test, these fail in CI rather than skip without Squid or dnf.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

# The end-to-end helpers of test_squid_e2e: Squid started from the shipped template with the
# helpers' repos.yaml beside it, mirrors, dnf clients that must succeed.
from test_squid_e2e import assert_installed, mirror, start_squid

from lab.httpclient import http_get
from lab.mirrors import CORRUPT, MirrorServer, corrupted
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
from lab.squid import SquidInstance, WorldReadableDir
from squid_helper.config.files import load_config
from squid_helper.facts.lifetimes import Lifetimes
from squid_helper.facts.memo import Memo
from squid_helper.ops.status import collect, render_table
from squid_helper.resolve.health import host_of
from squid_helper.resolve.urls import RepoPath
from squid_helper.verify.checker import CORRUPT as CORRUPT_COPY
from squid_helper.verify.checker import NOT_CACHED, IntegrityChecker


@pytest.fixture
def world(rpm_snapshots) -> Iterator[Path]:
    """A directory Squid's user can reach (rpm_snapshots requires Squid, dnf and the rest)."""
    with WorldReadableDir("squid-helper-integrity-") as path:
        yield path


def truth(snapshot: Path) -> Dict[str, str]:
    """Each package's sha256 as the repository holds it."""
    return {rpm: hashlib.sha256((snapshot / TREE / "Packages" / rpm).read_bytes()).hexdigest()
            for rpm in NEW_RPMS}


def cached_sha256(squid: SquidInstance, rpm: str) -> Optional[str]:
    """The sha256 of Squid's copy of a package (its repo URL, only-if-cached: no mirror is
    asked), or None when Squid holds none."""
    status, _, body = http_get("127.0.0.1", squid.port, PACKAGES_URL + rpm,
                               {"Host": "repoproxy", "Cache-Control": "only-if-cached"})
    assert status in (200, 504), status
    return hashlib.sha256(body).hexdigest() if status == 200 else None


def request_for(rpm: str) -> RepoPath:
    return RepoPath(REPO, "9", "x86_64", f"Packages/{rpm}")


def fetched_from(server: MirrorServer) -> List[str]:
    """The packages a mirror served with a GET (Squid's fetches: what the fetch reports name)."""
    return [rpm for rpm in NEW_RPMS if server.count("GET", rpm, PACKAGES_PATH)]


def test_a_corrupting_mirror_listed_first_leaves_no_corrupt_copy_and_a_later_client_installs(
        world, rpm_snapshots, servers):
    expected = truth(rpm_snapshots["new"])
    bad = mirror(servers, rpm_snapshots["new"], CORRUPT)
    # The good mirror is farther: the corrupting one is first in the list and the fastest.
    good = mirror(servers, rpm_snapshots["new"], delay=0.2)
    repos = {REPO: {"mirrors": [bad.url + TEMPLATE_PATH, good.url + TEMPLATE_PATH]}}
    squid, config_path = start_squid(world, repos)
    config = load_config(str(config_path))
    with squid:
        checker = IntegrityChecker(config, Memo.of(config), squid.proxy)
        try:
            # The first client gets the corrupted bytes (nothing checks them before Squid
            # delivers them): dnf refuses them.
            first = DnfClient(world, "slave1")
            result = first.install(VIRTUAL_BASE, WANTED, proxy=squid.proxy_url)
            assert result.returncode != 0, dnf_output(result)
            served = fetched_from(bad)
            assert served and not fetched_from(good), (served, good.paths())
            held = {rpm: cached_sha256(squid, rpm) for rpm in NEW_RPMS}
            corrupt_held = [rpm for rpm, digest in held.items()
                            if digest is not None and digest != expected[rpm]]
            assert corrupt_held, f"Squid kept no corrupted copy to check: {held}"
            # What the fetch reports will say: each package Squid fetched from that mirror.
            for rpm in served:
                checker.consider(request_for(rpm), f"{bad.url}{TREE}/Packages/{rpm}")
            assert checker.wait_idle(120), checker.counts
            assert checker.counts[CORRUPT_COPY] == len(corrupt_held), checker.counts
            assert checker.counts[CORRUPT_COPY] + checker.counts[NOT_CACHED] == len(served)
            # Not one corrupted package left in Squid's cache.
            for rpm in NEW_RPMS:
                assert cached_sha256(squid, rpm) in (None, expected[rpm]), rpm
            # The facts: the mirror shunned for each such path, its failures counted.
            memo = Memo.of(config)
            lifetimes = Lifetimes(config)
            for rpm in corrupt_held:
                shunned = memo.get(lifetimes.shunned(request_for(rpm)).key)
                assert bad.url + TREE + "/" in shunned.value, shunned
                # Its answer was dropped: worked out again since (the reads above), it names
                # another mirror.
                answer = memo.get(lifetimes.answer(request_for(rpm)).key)
                assert answer is None or answer.value["base"] != bad.url + TREE + "/", answer
            failures = memo.get(lifetimes.integrity_failures(host_of(bad.url)).key)
            assert failures.value["count"] == len(corrupt_held), failures
            memo.close()
            status = render_table(collect(config, None))
            assert f"{host_of(bad.url)}: {len(corrupt_held)} integrity failure" in status, status

            # Later clients, each followed by what the fetch reports would give the check:
            # every package fetched from that mirror since. A package of which Squid kept
            # nothing (dnf gave up on it mid-way) may still come from that mirror once, to be
            # found out then; a package found corrupt never comes from it again (shunned).
            condemned = {rpm: bad.count("GET", rpm, PACKAGES_PATH) for rpm in corrupt_held}
            considered = {rpm: bad.count("GET", rpm, PACKAGES_PATH) for rpm in NEW_RPMS}
            for number in range(2, 3 + len(NEW_RPMS) - len(corrupt_held)):
                client = DnfClient(world, f"slave{number}")
                result = client.install(VIRTUAL_BASE, WANTED, proxy=squid.proxy_url)
                for rpm in NEW_RPMS:
                    if bad.count("GET", rpm, PACKAGES_PATH) > considered[rpm]:
                        considered[rpm] = bad.count("GET", rpm, PACKAGES_PATH)
                        checker.consider(request_for(rpm), f"{bad.url}{TREE}/Packages/{rpm}")
                assert checker.wait_idle(120), checker.counts
                for rpm in NEW_RPMS:
                    assert cached_sha256(squid, rpm) in (None, expected[rpm]), rpm
                if result.returncode == 0:
                    break
            assert_installed(client, result, squid)
            assert {rpm: bad.count("GET", rpm, PACKAGES_PATH) for rpm in condemned} == condemned
            for rpm in NEW_RPMS:
                assert cached_sha256(squid, rpm) == expected[rpm], rpm
        finally:
            checker.close(finish=False)


def test_a_clients_direct_fetch_of_another_mirror_never_changes_what_repo_clients_get(
        world, rpm_snapshots, servers, tmp_path):
    """A mirror that holds other bytes under a package's name (a stale copy, a broken sync),
    asked for by its own URL before any repo client asked for the package: before, the
    store-id gave that URL the shared key, and every later repo client got those bytes."""
    expected = truth(rpm_snapshots["new"])
    other_root = tmp_path / "other"
    for rpm in NEW_RPMS:
        target = other_root / TREE / "Packages" / rpm
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(corrupted((rpm_snapshots["new"] / TREE / "Packages" / rpm)
                                     .read_bytes()))
    good = mirror(servers, rpm_snapshots["new"])
    other = mirror(servers, other_root, delay=0.5)  # listed, and slower: never chosen
    repos = {REPO: {"mirrors": [good.url + TEMPLATE_PATH, other.url + TEMPLATE_PATH]}}
    # The mirrors live on loopback here, so this Squid lets clients reach them directly.
    squid, _ = start_squid(world, repos, squid_params={"guard_local_destinations": False})
    with squid:
        rpm = NEW_RPMS[0]
        direct = f"{other.url}{TREE}/Packages/{rpm}"
        status, _, body = http_get("127.0.0.1", squid.port, direct,
                                   {"Host": direct.split("/")[2]})
        assert status == 200 and hashlib.sha256(body).hexdigest() != expected[rpm]
        assert other.count("GET", rpm, PACKAGES_PATH) == 1
        # Nothing went under the shared key: a repo client's only-if-cached finds nothing ...
        assert cached_sha256(squid, rpm) is None
        # ... and every repo client, dnf included, gets the repository's bytes.
        status, _, body = squid.get(PACKAGES_URL + rpm)
        assert status == 200 and hashlib.sha256(body).hexdigest() == expected[rpm]
        client = DnfClient(world, "slave1")
        result = client.install(VIRTUAL_BASE, WANTED, proxy=squid.proxy_url)
        assert_installed(client, result, squid)
        assert cached_sha256(squid, rpm) == expected[rpm]
        # The direct URL is its own object: asked again, it is a hit on its own copy.
        status, _, body = http_get("127.0.0.1", squid.port, direct,
                                   {"Host": direct.split("/")[2]})
        assert status == 200 and other.count("GET", rpm, PACKAGES_PATH) == 1
        # A sibling's fetch (only-if-cached) by that mirror's URL still gets the shared copy.
        status, _, body = http_get("127.0.0.1", squid.port,
                                   f"{other.url}{TREE}/Packages/{NEW_RPMS[1]}",
                                   {"Host": direct.split("/")[2],
                                    "Cache-Control": "only-if-cached"})
        assert status == 200 and hashlib.sha256(body).hexdigest() == expected[NEW_RPMS[1]]
        assert other.count("GET", NEW_RPMS[1], PACKAGES_PATH) == 0
