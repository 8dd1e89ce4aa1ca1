"""The integrity check's decisions (verify/checker.py) with a fake Squid at its edge: what it
purges and what it never purges, the facts it leaves, and its bounded queue. The real Squid,
mirrors and dnf: test_integrity.py."""

from __future__ import annotations

import gzip
import hashlib
import logging
import threading
from typing import Dict, List, Optional, Tuple

import pytest

from lab.mirrors import corrupted
from squid_helper.config.files import parse_config
from squid_helper.facts.lifetimes import Lifetimes
from squid_helper.facts.memo import Memo
from squid_helper.resolve.health import MirrorHealth
from squid_helper.resolve.urls import RepoPath
from squid_helper.verify.checker import (
    CORRUPT,
    GOOD,
    NOT_CACHED,
    NOT_JUDGED,
    UNVERIFIABLE,
    Copy,
    IntegrityChecker,
)

BASE = "http://repoproxy/r/9/x86_64/"
MIRROR = "http://m1.example/pub/9/x86_64/"
RPM = "Packages/a/alpha-1.0-1.noarch.rpm"
BODY = b"the package's bytes " * 50


def repo(packages: Dict[str, bytes]) -> Dict[str, bytes]:
    """A repo's repomd.xml and primary (gzip) naming packages: URL -> bytes."""
    entries = "".join(
        f'<package type="rpm"><name>p{i}</name><arch>noarch</arch>'
        f'<version epoch="0" ver="1.0" rel="1"/>'
        f'<checksum type="sha256" pkgid="YES">{hashlib.sha256(body).hexdigest()}</checksum>'
        f'<size package="{len(body)}" installed="1" archive="1"/><location href="{path}"/>'
        f'</package>' for i, (path, body) in enumerate(packages.items()))
    primary = gzip.compress((f'<?xml version="1.0"?><metadata xmlns="http://linux.duke.edu/'
                             f'metadata/common">{entries}</metadata>').encode())
    digest = hashlib.sha256(primary).hexdigest()
    repomd = (f'<?xml version="1.0"?><repomd xmlns="http://linux.duke.edu/metadata/repo">'
              f'<data type="primary"><checksum type="sha256">{digest}</checksum>'
              f'<location href="repodata/{digest}-primary.xml.gz"/><size>{len(primary)}</size>'
              f'</data></repomd>').encode()
    return {BASE + "repodata/repomd.xml": repomd,
            BASE + f"repodata/{digest}-primary.xml.gz": primary}


class FakeSquid:
    """Squid at the checker's edge: what a client's GET gets (`served`), what Squid holds
    (`cache`, answered to only-if-cached), and the PURGEs it was sent."""

    proxy = "127.0.0.1:3128"

    def __init__(self, served: Dict[str, bytes], cache: Dict[str, bytes]):
        self.served = served
        self.cache = cache
        self.purged: List[str] = []
        self.hold = threading.Event()
        self.hold.set()

    def read(self, url: str, algorithm: str = "sha256", cache_only: bool = False,
             keep: bool = False) -> Copy:
        self.hold.wait(30)
        body: Optional[bytes] = (self.cache if cache_only else self.served).get(url)
        if body is None:
            return Copy(504 if cache_only else 404)
        return Copy(200, len(body), hashlib.new(algorithm, body).hexdigest(),
                    body if keep else None)

    def purge(self, url: str) -> Tuple[bool, str]:
        self.purged.append(url)
        self.cache.pop(url, None)
        return True, "purged from Squid"

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def config(tmp_path):
    template = MIRROR.replace("/9/x86_64/", "/{releasever}/{arch}/")
    return parse_config(f"cache_dir: {tmp_path}\nrepos:\n  r:\n    mirrors: [\"{template}\"]\n")


def checker_for(config, squid: FakeSquid, **kwargs) -> IntegrityChecker:
    return IntegrityChecker(config, Memo(config.cache_dir), squid.proxy, reader=squid,
                            **kwargs)


def request(path: str = RPM) -> RepoPath:
    return RepoPath("r", "9", "x86_64", path)


def run(checker: IntegrityChecker, *paths: str) -> None:
    for path in paths:
        checker.consider(request(path), MIRROR + path)
    assert checker.wait_idle(30), checker.counts


def test_a_copy_that_disagrees_is_purged_and_its_mirror_taken_out(config):
    flipped = BODY[:10] + b"X" + BODY[11:]
    squid = FakeSquid(repo({RPM: BODY}), {BASE + RPM: flipped})
    checker = checker_for(config, squid)
    memo, lifetimes = Memo(config.cache_dir), Lifetimes(config)
    memo.put(lifetimes.answer(request()), {"url": MIRROR + RPM, "base": MIRROR})
    generation = memo.generation()  # what every helper sees now
    try:
        run(checker, RPM)
        assert checker.counts == {CORRUPT: 1}
        assert squid.purged == [BASE + RPM]
        shunned = memo.get(lifetimes.shunned(request()).key).value
        assert list(shunned) == [MIRROR] and "disagreed" in shunned[MIRROR]
        assert memo.get(lifetimes.integrity_failures("m1.example").key).value["count"] == 1
        assert memo.get(lifetimes.answer(request()).key) is None
        later = Memo(config.cache_dir)  # a helper that looks now: it drops what it copied
        assert later.generation() != generation
        later.close()
        assert not MirrorHealth(memo, lifetimes).is_healthy(MIRROR)
    finally:
        checker.close()
        memo.close()


def test_a_good_copy_a_missing_one_and_unjudged_files_are_left_alone(config):
    squid = FakeSquid(repo({RPM: BODY, "Packages/b.rpm": b"b"}), {BASE + RPM: BODY})
    checker = checker_for(config, squid)
    try:
        run(checker, RPM, "Packages/b.rpm", "repodata/repomd.xml", "extra/notes.txt")
        assert checker.counts == {GOOD: 1, NOT_CACHED: 1, NOT_JUDGED: 2}
        assert squid.purged == []
    finally:
        checker.close()


def test_a_push_since_the_metadata_was_read_is_no_corruption(config):
    """The package was rebuilt under its name: Squid's copy is the new one. The check reads
    the metadata again before it purges anything."""
    rebuilt = b"rebuilt " * 30
    squid = FakeSquid(repo({RPM: BODY}), {})
    checker = checker_for(config, squid)
    try:
        run(checker, "Packages/other.rpm")  # the old metadata is read and kept
        squid.served = repo({RPM: rebuilt})
        squid.cache[BASE + RPM] = rebuilt
        run(checker, RPM)
        assert checker.counts[GOOD] == 1 and squid.purged == []
    finally:
        checker.close()


def test_metadata_that_cannot_be_used_means_no_verification_never_a_purge(config, caplog):
    squid = FakeSquid({BASE + "repodata/repomd.xml": b"<html>a captive portal</html>"},
                      {BASE + RPM: b"anything"})
    checker = checker_for(config, squid)
    try:
        with caplog.at_level(logging.WARNING, logger="squid_helper.integrity"):
            run(checker, RPM, "Packages/b.rpm", RPM)
        assert checker.counts == {UNVERIFIABLE: 3} and squid.purged == []
        said = [r.getMessage() for r in caplog.records if "no verification" in r.getMessage()]
        assert len(said) == 1 and "r/9/x86_64" in said[0], said  # once per repo
    finally:
        checker.close()


def test_a_corrupt_primary_is_purged_though_no_package_can_be_judged(config):
    served = repo({RPM: BODY})
    primary_url = next(url for url in served if "primary" in url)
    primary_path = primary_url[len(BASE):]
    served[primary_url] = corrupted(served[primary_url])  # what Squid holds and serves
    squid = FakeSquid(served, {BASE + RPM: BODY, primary_url: served[primary_url]})
    checker = checker_for(config, squid)
    try:
        run(checker, RPM, primary_path)
        assert checker.counts == {UNVERIFIABLE: 1, CORRUPT: 1}
        assert squid.purged == [primary_url]
    finally:
        checker.close()


def test_files_beyond_the_queue_are_dropped_counted_and_logged_once(config, caplog):
    squid = FakeSquid(repo({RPM: BODY}), {BASE + RPM: BODY})
    squid.hold.clear()  # the worker is busy with the first file
    checker = checker_for(config, squid, queue_size=2)
    try:
        with caplog.at_level(logging.WARNING, logger="squid_helper.integrity"):
            for _ in range(10):
                checker.consider(request(), MIRROR + RPM)  # never blocks
        dropped = checker.counts["dropped"]
        assert 7 <= dropped <= 8, checker.counts  # 2 wait, and 1 may be in the worker's hands
        said = [r for r in caplog.records if "not checked" in r.getMessage()]
        assert len(said) == 1
        squid.hold.set()
        assert checker.wait_idle(30)
        assert checker.counts[GOOD] == 10 - dropped
    finally:
        squid.hold.set()
        checker.close()
