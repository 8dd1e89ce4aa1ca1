"""What a repo file must be, by the repo's metadata (verify/checksums.py, and the mirror base
that the integrity check shuns): pure, from documents in memory."""

from __future__ import annotations

import gzip
import hashlib

import pytest

from squid_helper.resolve.urls import RepoPath
from squid_helper.verify.checker import mirror_base
from squid_helper.verify.checksums import Expected, catalogue, disagreement
from squid_helper.verify.repodata import parse_primary, parse_repomd

PRIMARY_SHA = "ab" * 32
REPOMD = f"""<?xml version="1.0" encoding="UTF-8"?>
<repomd xmlns="http://linux.duke.edu/metadata/repo">
  <revision>7</revision>
  <data type="primary">
    <checksum type="sha256">{PRIMARY_SHA}</checksum>
    <location href="repodata/{PRIMARY_SHA}-primary.xml.gz"/>
    <size>321</size>
  </data>
  <data type="filelists">
    <checksum type="sha">{"cd" * 20}</checksum>
    <location href="repodata/{"cd" * 20}-filelists.xml.gz"/>
  </data>
  <data type="other">
    <checksum type="crc-unknown">0011</checksum>
    <location href="repodata/0011-other.xml.gz"/>
  </data>
</repomd>
""".encode()


def package(name: str, href: str, checksum: str, size: int, kind: str = "sha256") -> str:
    return f"""<package type="rpm">
  <name>{name}</name><arch>noarch</arch><version epoch="0" ver="1.0" rel="1"/>
  <checksum type="{kind}" pkgid="YES">{checksum}</checksum>
  <size package="{size}" installed="1" archive="1"/>
  <location href="{href}"/>
</package>
"""


PRIMARY = gzip.compress((
    '<?xml version="1.0" encoding="UTF-8"?>\n<metadata xmlns="http://linux.duke.edu/metadata/'
    'common" packages="3">\n'
    + package("alpha", "Packages/a/alpha-1.0-1.noarch.rpm", "ef" * 32, 2000)
    + package("libsq++", "Packages/l/libsq++-1.0-1.noarch.rpm", "12" * 32, 3000)
    + package("snap", "Packages/s/snap-1.0^20230101-1.noarch.rpm", "34" * 64, 40, "sha512")
    + "</metadata>\n").encode())


@pytest.fixture(scope="module")
def known():
    return catalogue("rev-1", parse_repomd(REPOMD), parse_primary(PRIMARY))


@pytest.mark.parametrize("path, expected", [
    ("Packages/a/alpha-1.0-1.noarch.rpm", Expected(2000, "sha256", "ef" * 32)),
    # the spellings the helpers use (urls.canonical_path) find the primary's raw names
    ("Packages/l/libsq%2B%2B-1.0-1.noarch.rpm", Expected(3000, "sha256", "12" * 32)),
    ("Packages/s/snap-1.0%5E20230101-1.noarch.rpm", Expected(40, "sha512", "34" * 64)),
    # checksum-named repodata, from repomd.xml; "sha" is sha1
    (f"repodata/{PRIMARY_SHA}-primary.xml.gz", Expected(321, "sha256", PRIMARY_SHA)),
    (f"repodata/{'cd' * 20}-filelists.xml.gz", Expected(None, "sha1", "cd" * 20)),
])
def test_the_metadata_says_what_each_file_must_be(known, path, expected):
    assert known.expected(path) == expected
    assert known.revision == "rev-1" and known.packages_known


@pytest.mark.parametrize("path", [
    "Packages/a/alpha-2.0-1.noarch.rpm",  # in no metadata
    "Packages/l/libsq++-1.0-1.noarch.rpm",  # not the canonical spelling: never asked so
    "repodata/0011-other.xml.gz",  # a checksum this Python cannot compute: not judged
    "repodata/repomd.xml",  # nothing in the repo vouches for repomd.xml
])
def test_files_the_metadata_does_not_vouch_for_are_not_judged(known, path):
    assert known.expected(path) is None


def test_without_the_primary_the_metadata_files_are_still_known():
    partial = catalogue("rev-1", parse_repomd(REPOMD), None)
    assert not partial.packages_known
    assert partial.expected(f"repodata/{PRIMARY_SHA}-primary.xml.gz") is not None
    assert partial.expected("Packages/a/alpha-1.0-1.noarch.rpm") is None


def test_a_copy_agrees_only_with_the_right_size_and_digest():
    body = b"x" * 100
    right = Expected(100, "sha256", hashlib.sha256(body).hexdigest())
    assert disagreement(right, 100, hashlib.sha256(body).hexdigest().upper()) is None
    flipped = hashlib.sha256(b"y" + body[1:]).hexdigest()
    why = disagreement(right, 100, flipped)
    assert why is not None and flipped in why and right.digest in why
    assert disagreement(right, 99, right.digest) == "99 bytes where the metadata says 100"
    assert disagreement(Expected(None, "sha256", right.digest), 5, right.digest) is None


@pytest.mark.parametrize("fetched, base", [
    ("http://m.example/pub/9/x86_64/Packages/a/alpha-1.0-1.noarch.rpm",
     "http://m.example/pub/9/x86_64/"),
    # Squid fetched it in another spelling of the same name
    ("https://m.example/os/Packages/l/libsq++-1.0-1.noarch.rpm", "https://m.example/os/"),
    # not that path at all: no base to shun
    ("http://m.example/pub/9/x86_64/Packages/a/beta-1.0-1.noarch.rpm", None),
    ("alpha-1.0-1.noarch.rpm", None),
])
def test_the_mirror_base_comes_from_the_url_squid_fetched(fetched, base):
    name = fetched.rsplit("/", 1)[-1]
    path = "Packages/l/libsq%2B%2B-1.0-1.noarch.rpm" if "libsq" in name else \
        "Packages/a/alpha-1.0-1.noarch.rpm"
    assert mirror_base(fetched, RepoPath("r", "9", "x86_64", path)) == base
