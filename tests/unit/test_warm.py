"""`squid-helper warm` without Squid: repomd.xml and primary parsing, every compression, rpm's
version order, the choice of packages and what is printed (the installed rpm's agreement and
the command's errors: tests/test_warm_cli.py)."""

from __future__ import annotations

import bz2
import fcntl
import gzip
import io
import lzma
import os
import pty
import struct
import sys
import termios

import pytest
import zstandard

from squid_helper.ops.warm import (
    FAILED,
    HIT,
    MISS,
    BarProgress,
    LineProgress,
    Outcome,
    format_outcome,
    format_summary,
    progress_for,
    summarize,
)
from squid_helper.verify.repodata import (
    Package,
    RepodataError,
    RepoFile,
    choose_packages,
    open_decompressed,
    parse_primary,
    parse_repomd,
    primary_of,
    rpmvercmp,
)

REPOMD = b"""<?xml version="1.0" encoding="UTF-8"?>
<repomd xmlns="http://linux.duke.edu/metadata/repo" xmlns:rpm="http://linux.duke.edu/metadata/rpm">
  <revision>2000</revision>
  <data type="primary">
    <checksum type="sha256">aa11</checksum>
    <open-checksum type="sha256">bb22</open-checksum>
    <location href="repodata/aa11-primary.xml.zst"/>
    <timestamp>2000</timestamp>
    <size>1234</size>
    <open-size>9999</open-size>
  </data>
  <data type="filelists">
    <checksum type="sha">cc33</checksum>
    <location href="repodata/cc33-filelists.xml.gz"/>
    <size>55</size>
  </data>
  <data type="primary_zck">
    <location href="repodata/dd44-primary.xml.zck"/>
  </data>
</repomd>
"""


def package_xml(name: str, arch: str, version: str, release: str = "1", epoch: str = "0",
                href: str = "") -> str:
    href = href or f"Packages/{name[0]}/{name}-{version}-{release}.{arch}.rpm"
    return f"""<package type="rpm">
  <name>{name}</name>
  <arch>{arch}</arch>
  <version epoch="{epoch}" ver="{version}" rel="{release}"/>
  <checksum type="sha256" pkgid="YES">{name}{version}{arch}</checksum>
  <summary>x</summary>
  <size package="{len(name) * 100}" installed="1" archive="1"/>
  <location href="{href}"/>
  <format><rpm:license xmlns:rpm="http://linux.duke.edu/metadata/rpm">MIT</rpm:license></format>
</package>
"""


def primary_xml(*packages: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<metadata xmlns="http://linux.duke.edu/'
            f'metadata/common" xmlns:rpm="http://linux.duke.edu/metadata/rpm" '
            f'packages="{len(packages)}">\n' + "".join(packages) + "</metadata>\n").encode()


PRIMARY = primary_xml(
    package_xml("bash", "x86_64", "5.2.26"),
    package_xml("bash", "x86_64", "5.2.9"),  # older, although "9" > "26" as text
    package_xml("bash", "i686", "5.2.9"),
    package_xml("glibc", "x86_64", "2.39", "22.fc40"),
    package_xml("glibc", "x86_64", "2.39", "3.fc40", epoch="1"),  # the epoch wins
    package_xml("tzdata", "noarch", "2024a", "5.fc40"),
    package_xml("tzdata", "noarch", "2024a~pre1", "5.fc40"),  # a pre-release sorts first
)


# -- repomd.xml and primary ----------------------------------------------------------------------
def test_repomd_lists_every_metadata_file():
    files = parse_repomd(REPOMD)
    assert [(f.type, f.path, f.size, f.checksum) for f in files] == [
        ("primary", "repodata/aa11-primary.xml.zst", 1234, ("sha256", "aa11")),
        ("filelists", "repodata/cc33-filelists.xml.gz", 55, ("sha1", "cc33")),
        ("primary_zck", "repodata/dd44-primary.xml.zck", None, None)]
    assert primary_of(files).path == "repodata/aa11-primary.xml.zst"


@pytest.mark.parametrize("document, problem", [
    (REPOMD.replace(b"repodata/cc33", b"../../etc/cc33"), "refused"),
    (REPOMD.replace(b'type="primary"', b'type="other"'), "no primary"),
    (b"<html>mirror error page</html>", "not repomd"),
    (b"<?xml version='1.0'?><!DOCTYPE r [<!ENTITY a 'x'>]><repomd>&a;</repomd>", "XML"),
])
def test_repomd_that_cannot_be_used(document, problem):
    with pytest.raises(RepodataError, match=problem):
        primary_of(parse_repomd(document))


@pytest.mark.parametrize("compress", [
    lambda data: data, gzip.compress, lzma.compress, bz2.compress,
    lambda data: zstandard.ZstdCompressor().compress(data),
    # a stream without the content size in its header, as zstd(1) writes from a pipe
    lambda data: zstandard.ZstdCompressor(write_content_size=False).compress(data),
], ids=["plain", "gzip", "xz", "bzip2", "zstd", "zstd-streamed"])
def test_primary_in_every_compression(compress):
    packages = parse_primary(compress(PRIMARY))
    assert [p.nevra for p in packages][:2] == ["bash-5.2.26-1.x86_64", "bash-5.2.9-1.x86_64"]
    assert packages[4].nevra == "glibc-1:2.39-3.fc40.x86_64"
    assert packages[0].file == RepoFile("Packages/b/bash-5.2.26-1.x86_64.rpm", 400,
                                        ("sha256", "bash5.2.26x86_64"), "package",
                                        "bash-5.2.26-1.x86_64")


def test_zstd_without_the_zstandard_module_is_said_clearly(monkeypatch):
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard fails
    with pytest.raises(RepodataError, match="zstd-compressed.*pip install zstandard"):
        parse_primary(zstandard.ZstdCompressor().compress(PRIMARY))


@pytest.mark.parametrize("content, problem", [
    (gzip.compress(PRIMARY)[:-40], "cannot be decompressed|not usable XML"),
    (b"\x00ZCK1" + b"\x00" * 40, "zchunk"),
    (primary_xml(package_xml("evil", "x86_64", "1", href="../../../etc/shadow")), "refused"),
    (PRIMARY.replace(b"<metadata", b"<!DOCTYPE m [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>"
                     b"<metadata"), "XML"),
])
def test_primary_that_cannot_be_used(content, problem):
    with pytest.raises(RepodataError, match=problem):
        parse_primary(content)


def test_large_primary_is_read_as_a_stream():
    many = primary_xml(*(package_xml(f"p{i}", "x86_64", "1.0") for i in range(20000)))
    stream = open_decompressed(gzip.compress(many))
    assert not isinstance(stream, io.BytesIO)  # decompressed as it is parsed, never whole
    assert len(parse_primary(gzip.compress(many))) == 20000


# -- versions and the choice of packages ---------------------------------------------------------
# From rpm's own test suite (tests/rpmvercmp.at).
RPM_CASES = [
    ("1.0", "1.0", 0), ("1.0", "2.0", -1), ("2.0.1", "2.0", 1), ("2.0.1a", "2.0.1", 1),
    ("5.5p1", "5.5p10", -1), ("10xyz", "10.1xyz", -1), ("xyz10", "xyz10.1", -1),
    ("xyz.4", "8", -1), ("8", "xyz.4", 1), ("5.6p1", "6.5p1", -1), ("6.0.rc1", "6.0", 1),
    ("10b2", "10a1", 1), ("1.0a", "1.0aa", -1), ("10.0001", "10.1", 0),
    ("10.0001", "10.0039", -1), ("4.999.9", "5.0", -1), ("20101121", "20101122", -1),
    ("2.0", "2_0", 0), ("a+", "a_", 0), ("_+", "_", 0), ("+", "_", 0),
    ("1.0~rc1", "1.0", -1), ("1.0~rc1", "1.0~rc2", -1), ("1.0~rc1~git123", "1.0~rc1", -1),
    ("1.0^", "1.0", 1), ("1.0^git1", "1.0", 1), ("1.0^git1", "1.0^git2", -1),
    ("1.0^git1", "1.01", -1), ("1.0^20160101", "1.0.1", -1),
    ("1.0^20160102", "1.0^20160101^git1", 1), ("1.0~rc1^git1", "1.0~rc1", 1),
    ("1.0^git1~pre", "1.0^git1", -1),
]


@pytest.mark.parametrize("one, two, expected", RPM_CASES)
def test_rpmvercmp_as_rpm(one, two, expected):
    assert rpmvercmp(one, two) == expected
    assert rpmvercmp(two, one) == -expected


def test_the_newest_of_each_name_in_each_arch():
    packages = parse_primary(PRIMARY)
    chosen, missing = choose_packages(packages, ["bash", "glibc", "tzdata", "nosuch"])
    assert [p.nevra for p in chosen] == ["bash-5.2.9-1.i686", "bash-5.2.26-1.x86_64",
                                         "glibc-1:2.39-3.fc40.x86_64",
                                         "tzdata-2024a-5.fc40.noarch"]
    assert missing == ["nosuch"]


def test_a_package_named_twice_is_fetched_once():
    chosen, _ = choose_packages(parse_primary(PRIMARY), ["tzdata", "tzdata"])
    assert len(chosen) == 1 and isinstance(chosen[0], Package)


# -- what is printed -----------------------------------------------------------------------------
def outcomes():
    rpm = RepoFile("Packages/b/bash.rpm", 2048, None, "package")
    return [Outcome(RepoFile("repodata/repomd.xml"), HIT, 3000, 0.01),
            Outcome(rpm, MISS, 2048, 0.5),
            Outcome(RepoFile("Packages/g/glibc.rpm", 4096, None, "package"), HIT, 0, 0.0),
            Outcome(RepoFile("Packages/z.rpm", 10, None, "package"), FAILED, 0, 0.1,
                    "HTTP 503 from the proxy (ERR_CANNOT_FORWARD 0)")]


def test_summary_counts_and_words():
    summary = summarize(outcomes(), "fedora/40/x86_64", "127.0.0.1:3128", 2.0)
    assert (summary.files, summary.hits, summary.misses, summary.failures, summary.fetched) \
        == (4, 2, 1, 1, 5048)
    assert format_summary(summary) == (
        "warm fedora/40/x86_64 through 127.0.0.1:3128: 4 files, 2 hits, 1 misses, 1 failures; "
        "4.9 KiB fetched in 2.0s (2.5 KiB/s)")


def test_one_line_a_file_when_not_on_a_terminal():
    stream = io.StringIO()
    progress = LineProgress(stream)
    progress.start(1, 0)
    progress.start(3, 6154)
    for outcome in outcomes():
        progress.finished(outcome)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "checking 3 more files (6.0 KiB)"
    assert lines[1:] == [format_outcome(o, i + 1, 4) for i, o in enumerate(outcomes())]
    assert lines[3] == "[3/4] HIT       4.0 KiB  Packages/g/glibc.rpm (0.00s)"
    assert lines[4].endswith("Packages/z.rpm: HTTP 503 from the proxy (ERR_CANNOT_FORWARD 0)")


def test_progress_bar_shows_bytes_files_and_hits():
    stream = io.StringIO()
    progress = BarProgress(stream, "fedora/40/x86_64")
    progress.start(4, 2048 + 4096 + 10)
    progress.transferred(3000)
    progress.transferred(2048)
    for outcome in outcomes():
        progress.finished(outcome)
    progress.close()
    screen = stream.getvalue()
    assert "fedora/40/x86_64" in screen and "files 4/4, 2 hits, 1 failed" in screen
    assert "4.93k/4.93k" in screen  # the hit left the total: bytes done of bytes to fetch


@pytest.mark.parametrize("columns, kind", [(0, LineProgress), (20, LineProgress),
                                           (80, BarProgress)])
def test_a_bar_only_on_a_terminal_wide_enough(columns, kind):
    """A terminal whose size was never set says 0 columns: tqdm would draw nothing there, and
    warm showed only its summary; one line a file is shown instead."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    with os.fdopen(terminal, "w") as stream, os.fdopen(controller, "rb", buffering=0):
        assert stream.isatty()
        progress = progress_for(stream, "fedora/40/x86_64")
        try:
            assert isinstance(progress, kind)
        finally:
            progress.close()


def test_one_line_a_file_on_a_pipe():
    with open(os.devnull, "w") as stream:
        assert isinstance(progress_for(stream, "fedora/40/x86_64"), LineProgress)

