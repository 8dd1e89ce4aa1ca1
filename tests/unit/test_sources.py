"""Unit tests for squid_helper.resolve.sources: mirrorlist text, Fedora metalink XML, repomd.xml."""

from __future__ import annotations

import hashlib

import pytest

from squid_helper.config.files import parse_config
from squid_helper.config.settings import Config
from squid_helper.resolve.sources import (
    HASH_TYPES,
    MirrorSet,
    RepomdDigest,
    SourceError,
    parse_metalink,
    parse_mirrorlist,
    repomd_age_key,
)
from squid_helper.resolve.urls import expand_template, join_under_base


def make_config(text: str) -> Config:
    return parse_config(text, "test.yaml")


REPOMD = b"""<?xml version="1.0" encoding="UTF-8"?>
<repomd xmlns="http://linux.duke.edu/metadata/repo" xmlns:rpm="http://linux.duke.edu/metadata/rpm">
  <revision>1713204242</revision>
  <data type="primary">
    <checksum type="sha256">6f0c1b4e0e</checksum>
    <location href="repodata/6f0c1b4e0e-primary.xml.zst"/>
    <timestamp>1713204100</timestamp>
    <size>1234</size>
  </data>
  <data type="filelists">
    <location href="repodata/aa-filelists.xml.zst"/>
    <timestamp>1713204200</timestamp>
  </data>
</repomd>
"""
OLD_REPOMD = REPOMD.replace(b"1713204242", b"1713100000").replace(b"17132042", b"17131000")


def hashes_of(content: bytes) -> dict:
    return {kind: hashlib.new(kind, content).hexdigest() for kind in HASH_TYPES}


def metalink(urls: str, content: bytes = REPOMD, alternates: bytes = b"",
             name: str = "repomd.xml") -> bytes:
    """A metalink as mirrors.fedoraproject.org serves it (metalink 3.0, mm0 namespace)."""
    digests = hashes_of(content)
    verification = "".join(f'\n          <hash type="{kind}">{digests[kind]}</hash>'
                           for kind in ("md5", "sha1", "sha256", "sha512"))
    return f"""<?xml version="1.0" encoding="utf-8"?>
<metalink version="3.0" xmlns="http://www.metalinker.org/" type="dynamic"
    pubdate="Mon, 15 Apr 2024 18:25:42 GMT" generator="mirrormanager"
    xmlns:mm0="http://fedorahosted.org/mirrormanager">
  <files>
    <file name="{name}">
      <mm0:timestamp>1713204242</mm0:timestamp>
      <size>{len(content)}</size>
      <verification>{verification}
      </verification>
      {alternates.decode()}
      <resources maxconnections="1">
{urls}
      </resources>
    </file>
  </files>
</metalink>
""".encode()


def alternate(content: bytes) -> bytes:
    digests = hashes_of(content)
    return f"""<mm0:alternates>
        <mm0:alternate>
          <mm0:timestamp>1713100000</mm0:timestamp>
          <size>{len(content)}</size>
          <verification>
            <hash type="md5">{digests["md5"]}</hash>
            <hash type="sha1">{digests["sha1"]}</hash>
            <hash type="sha256">{digests["sha256"]}</hash>
            <hash type="sha512">{digests["sha512"]}</hash>
          </verification>
        </mm0:alternate>
      </mm0:alternates>""".encode()


def url_line(url: str, preference: int = 100, protocol: str = "https") -> str:
    return (f'        <url protocol="{protocol}" type="{protocol}" location="US" '
            f'preference="{preference}">{url}</url>')


FEDORA_URLS = "\n".join([
    url_line("https://mirror-a.example.edu/fedora/releases/40/Everything/x86_64/os/"
             "repodata/repomd.xml", 100),
    url_line("http://mirror-a.example.edu/fedora/releases/40/Everything/x86_64/os/"
             "repodata/repomd.xml", 100, "http"),
    url_line("rsync://mirror-a.example.edu/fedora/releases/40/Everything/x86_64/os/"
             "repodata/repomd.xml", 100, "rsync"),
    url_line("https://mirror-b.example.de/pub/fedora/linux/releases/40/Everything/x86_64/os/"
             "repodata/repomd.xml", 99),
    url_line("https://mirror-c.example.jp/fedora/releases/40/Everything/x86_64/os/"
             "repodata/repomd.xml", 100),
    url_line("ftp://mirror-d.example.org/fedora/releases/40/Everything/x86_64/os/"
             "repodata/repomd.xml", 100, "ftp"),
    url_line("https://mirror-e.example.org/fedora/releases/40/Everything/x86_64/os/"
             "repodata/repomd.xml", 1),
])


# --- mirrorlist ---------------------------------------------------------------------------


def test_fedora_style_mirrorlist():
    text = """# repo = fedora-40 arch = x86_64 country = DE country = global
https://mirror-b.example.de/pub/fedora/linux/releases/40/Everything/x86_64/os/
http://mirror-a.example.edu/fedora/releases/40/Everything/x86_64/os/

# a comment in the middle
   https://mirror-c.example.jp/fedora/releases/40/Everything/x86_64/os
"""
    result = parse_mirrorlist(text)
    assert result == MirrorSet((
        "https://mirror-b.example.de/pub/fedora/linux/releases/40/Everything/x86_64/os/",
        "http://mirror-a.example.edu/fedora/releases/40/Everything/x86_64/os/",
        "https://mirror-c.example.jp/fedora/releases/40/Everything/x86_64/os/",
    ))
    assert result.expected is None
    assert result.alternates == ()


def test_mirrorlist_keeps_order_and_drops_duplicates():
    text = "http://b/\nhttp://a/\nhttp://b\nhttp://a/\nhttp://c/\n"
    assert parse_mirrorlist(text).bases == ("http://b/", "http://a/", "http://c/")


def test_mirrorlist_with_crlf_and_blank_lines():
    text = "#c\r\n\r\n  \r\nhttp://a/x\r\n\t\r\nhttp://b/y/\r\n"
    assert parse_mirrorlist(text).bases == ("http://a/x/", "http://b/y/")


def test_mirrorlist_bases_join_under_base():
    base = parse_mirrorlist("http://a.example.org/pub")
    assert join_under_base(base.bases[0], "Packages/x.rpm") == \
        "http://a.example.org/pub/Packages/x.rpm"


@pytest.mark.parametrize(
    "text",
    [
        "<html><body>502 Bad Gateway</body></html>",
        "  \n<!DOCTYPE html>\n<html></html>",
        "<?xml version='1.0'?><metalink/>",
    ],
)
def test_mirrorlist_html_or_xml_is_refused(text):
    with pytest.raises(SourceError, match="HTML/XML"):
        parse_mirrorlist(text)


@pytest.mark.parametrize(
    "line",
    [
        "<p>Service Unavailable</p>",
        "Service Unavailable",
        "ftp://mirror/pub/",
        "rsync://mirror/pub/",
        "http://mirror/{releasever}/",
        "http://mirror/pub/?x=1",
        "http://mirror/pub/#x",
        "http://user:pw@mirror/pub/",
        "http://mirror/a b/",
        "http:///pub/",
    ],
)
def test_mirrorlist_unusable_line_is_skipped_the_rest_used(line):
    # As dnf reads it: librepo's own test mirrorlists mix ftp:// lines with http:// ones.
    result = parse_mirrorlist(f"# header\nhttp://good/\n{line}\nhttps://other/pub\n")
    assert result.bases == ("http://good/", "https://other/pub/")
    assert result.skipped == (line.strip(),)


@pytest.mark.parametrize("text", ["ftp://mirror/pub/\nrsync://mirror/pub/\n",
                                  "Service Unavailable\n"])
def test_mirrorlist_without_one_usable_line_is_refused(text):
    with pytest.raises(SourceError, match="no line is an http"):
        parse_mirrorlist(text)


def test_mirrorlist_garbage_message_is_truncated():
    with pytest.raises(SourceError) as info:
        parse_mirrorlist("x" * 1000)
    assert len(str(info.value)) < 200


@pytest.mark.parametrize("text", ["", "\n\n", "   ", "# nothing here\n# still nothing\n"])
def test_empty_mirrorlist_is_refused(text):
    with pytest.raises(SourceError, match="lists no mirrors"):
        parse_mirrorlist(text)


def test_empty_mirrorlist_passes_on_the_servers_comment():
    text = "# repo = fedora-99 arch = x86_64 error: invalid repo or arch\n"
    with pytest.raises(SourceError) as info:
        parse_mirrorlist(text)
    assert str(info.value) == ("the mirrorlist lists no mirrors (server says: repo = fedora-99 "
                               "arch = x86_64 error: invalid repo or arch)")


def test_source_error_is_a_value_error():
    assert issubclass(SourceError, ValueError)


# --- metalink -----------------------------------------------------------------------------


def test_fedora_metalink_order_and_protocols():
    result = parse_metalink(metalink(FEDORA_URLS))
    assert result.bases == (
        "https://mirror-a.example.edu/fedora/releases/40/Everything/x86_64/os/",
        "http://mirror-a.example.edu/fedora/releases/40/Everything/x86_64/os/",
        "https://mirror-c.example.jp/fedora/releases/40/Everything/x86_64/os/",
        "https://mirror-b.example.de/pub/fedora/linux/releases/40/Everything/x86_64/os/",
        "https://mirror-e.example.org/fedora/releases/40/Everything/x86_64/os/",
    )
    assert not any(b.startswith(("rsync:", "ftp:")) for b in result.bases)


def test_metalink_expected_digest():
    result = parse_metalink(metalink(FEDORA_URLS))
    assert result.expected == RepomdDigest(len(REPOMD), hashes_of(REPOMD))
    assert result.expected.matches(REPOMD)
    assert not result.expected.matches(OLD_REPOMD)
    assert result.alternates == ()


def test_metalink_alternates():
    result = parse_metalink(metalink(FEDORA_URLS, alternates=alternate(OLD_REPOMD)))
    assert len(result.alternates) == 1
    assert result.alternates[0] == RepomdDigest(len(OLD_REPOMD), hashes_of(OLD_REPOMD))
    assert result.alternates[0].matches(OLD_REPOMD)
    assert not result.alternates[0].matches(REPOMD)
    # the alternate's hashes do not leak into the expected digest
    assert result.expected.hashes == hashes_of(REPOMD)


def test_metalink_several_alternates_in_order():
    third = OLD_REPOMD + b"\n"
    both = alternate(OLD_REPOMD).replace(b"</mm0:alternates>", b"") + \
        alternate(third).replace(b"<mm0:alternates>", b"")
    result = parse_metalink(metalink(FEDORA_URLS, alternates=both))
    assert [a.size for a in result.alternates] == [len(OLD_REPOMD), len(third)]


def test_metalink_preference_ties_keep_document_order():
    urls = "\n".join(url_line(f"http://m{i}/os/repodata/repomd.xml", 50) for i in range(5))
    assert parse_metalink(metalink(urls)).bases == tuple(f"http://m{i}/os/" for i in range(5))


def test_metalink_missing_or_bad_preference_counts_as_zero():
    urls = "\n".join([
        '<url protocol="http">http://none/repodata/repomd.xml</url>',
        '<url preference="high">http://bad/repodata/repomd.xml</url>',
        '<url preference="-5">http://negative/repodata/repomd.xml</url>',
        '<url preference="1">http://one/repodata/repomd.xml</url>',
    ])
    assert parse_metalink(metalink(urls)).bases == (
        "http://one/", "http://none/", "http://bad/", "http://negative/")


def test_metalink_duplicate_bases_keep_the_best_place():
    urls = "\n".join([
        url_line("http://a/repodata/repomd.xml", 10),
        url_line("http://b/repodata/repomd.xml", 50),
        url_line("http://a/repodata/repomd.xml", 90),
    ])
    assert parse_metalink(metalink(urls)).bases == ("http://a/", "http://b/")


def test_metalink_skips_urls_that_are_not_repomd():
    urls = "\n".join([
        url_line("http://a/repodata/primary.xml.gz"),
        url_line("http://b/os/"),
        url_line("  http://c/os/repodata/repomd.xml  "),
    ])
    assert parse_metalink(metalink(urls)).bases == ("http://c/os/",)


def test_metalink_skips_unsafe_urls():
    urls = "\n".join([
        url_line("http://user:pw@a/repodata/repomd.xml"),
        url_line("http://b/{arch}/repodata/repomd.xml"),
        url_line("http://c/?x=1/repodata/repomd.xml"),
        url_line("http://ok/repodata/repomd.xml", 1),
    ])
    assert parse_metalink(metalink(urls)).bases == ("http://ok/",)


def test_metalink_without_namespaces():
    content = f"""<metalink><files><file name="repomd.xml">
      <size>{len(REPOMD)}</size>
      <verification><hash type="sha256">{hashes_of(REPOMD)["sha256"].upper()}</hash></verification>
      <resources><url preference="1">http://m/repodata/repomd.xml</url></resources>
    </file></files></metalink>""".encode()
    result = parse_metalink(content)
    assert result.bases == ("http://m/",)
    assert result.expected.size == len(REPOMD)
    assert result.expected.matches(REPOMD)  # upper-case hex still matches


def test_metalink_ignores_unknown_hash_types():
    content = b"""<metalink><files><file name="repomd.xml">
      <verification><hash type="sha384">abc</hash><hash type="crc32">1</hash></verification>
      <resources><url>http://m/repodata/repomd.xml</url></resources>
    </file></files></metalink>"""
    result = parse_metalink(content)
    assert result.expected is None
    assert result.bases == ("http://m/",)


def test_metalink_size_only():
    content = f"""<metalink><files><file name="repomd.xml"><size>{len(REPOMD)}</size>
      <resources><url>http://m/repodata/repomd.xml</url></resources>
    </file></files></metalink>""".encode()
    result = parse_metalink(content)
    assert result.expected == RepomdDigest(len(REPOMD), {})
    assert result.expected.matches(REPOMD)
    assert not result.expected.matches(REPOMD + b" ")


def test_metalink_picks_the_repomd_file_entry():
    content = b"""<metalink><files>
      <file name="other.xml"><resources>
        <url>http://wrong/repodata/repomd.xml</url></resources></file>
      <file name="repomd.xml"><resources>
        <url>http://right/repodata/repomd.xml</url></resources></file>
    </files></metalink>"""
    assert parse_metalink(content).bases == ("http://right/",)


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"", "not a metalink XML document"),
        (b"<html><body>Error 503</body>", "not a metalink XML document"),
        (b"# mirrorlist\nhttp://m/\n", "not a metalink XML document"),
        (b"<html><body>Error 503</body></html>", "root element <html>"),
        (REPOMD, "root element <repomd>"),
        (b"<metalink xmlns='http://www.metalinker.org/'><files/></metalink>",
         "no <file name=\"repomd.xml\">"),
    ],
)
def test_metalink_garbage_is_refused(content, fragment):
    with pytest.raises(SourceError) as info:
        parse_metalink(content)
    assert fragment in str(info.value)


def test_metalink_with_only_rsync_is_refused():
    urls = url_line("rsync://m/os/repodata/repomd.xml", 100, "rsync")
    with pytest.raises(SourceError, match="no http\\(s\\) mirrors"):
        parse_metalink(metalink(urls))


def test_metalink_with_no_urls_is_refused():
    with pytest.raises(SourceError, match="no http\\(s\\) mirrors"):
        parse_metalink(metalink(""))


def test_metalink_does_not_expand_external_entities(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("http://leak/")
    content = f"""<?xml version="1.0"?>
<!DOCTYPE metalink [<!ENTITY x SYSTEM "file://{secret}">]>
<metalink><files><file name="repomd.xml"><resources>
  <url>&x;repodata/repomd.xml</url>
  <url>http://m/repodata/repomd.xml</url>
</resources></file></files></metalink>""".encode()
    try:
        result = parse_metalink(content)
    except SourceError:
        return  # refusing the document outright is also safe
    assert "http://leak/" not in result.bases


def test_metalink_from_an_expanded_config_template():
    config = make_config("repos:\n  fedora:\n    metalink: "
                         "https://mirrors.fedoraproject.org/metalink?repo=fedora-{releasever}"
                         "&arch={arch}\n")
    url = expand_template(config.repos["fedora"].templates[0], "40", "x86_64")
    assert url == "https://mirrors.fedoraproject.org/metalink?repo=fedora-40&arch=x86_64"
    assert parse_metalink(metalink(FEDORA_URLS)).bases[0].startswith("https://mirror-a.")


# --- RepomdDigest -------------------------------------------------------------------------


def test_digest_prefers_the_strongest_hash():
    good = hashes_of(REPOMD)
    # a wrong md5 does not matter when sha512 is there and right
    assert RepomdDigest(None, {**good, "md5": "0" * 32}).matches(REPOMD)
    # a wrong sha512 is a mismatch even if the weaker hashes agree
    assert not RepomdDigest(None, {**good, "sha512": "0" * 128}).matches(REPOMD)


@pytest.mark.parametrize("kind", HASH_TYPES)
def test_digest_single_hash(kind):
    digest = RepomdDigest(None, {kind: hashlib.new(kind, REPOMD).hexdigest()})
    assert digest.matches(REPOMD)
    assert not digest.matches(OLD_REPOMD)


def test_digest_hash_case_is_ignored():
    assert RepomdDigest(None, {"sha256": hashes_of(REPOMD)["sha256"].upper()}).matches(REPOMD)


def test_digest_size_is_checked_first():
    digest = RepomdDigest(len(REPOMD) + 1, hashes_of(REPOMD))
    assert not digest.matches(REPOMD)


def test_digest_size_only_and_empty():
    assert RepomdDigest(len(REPOMD), {}).matches(REPOMD)
    assert not RepomdDigest(len(REPOMD) - 1, {}).matches(REPOMD)
    assert not RepomdDigest(None, {}).matches(REPOMD)
    assert not RepomdDigest(None, {}).matches(b"")


def test_hash_types_strongest_first():
    assert HASH_TYPES == ("sha512", "sha256", "sha1", "md5")


# --- repomd_age_key -----------------------------------------------------------------------


def test_repomd_age_key():
    assert repomd_age_key(REPOMD) == (1713204242, 1713204200)
    assert repomd_age_key(OLD_REPOMD) < repomd_age_key(REPOMD)


def test_repomd_age_key_revision_wins_over_timestamp():
    newer_revision = b"<repomd><revision>2</revision><data><timestamp>5</timestamp></data></repomd>"
    older_revision = b"<repomd><revision>1</revision><data><timestamp>9</timestamp></data></repomd>"
    assert repomd_age_key(newer_revision) > repomd_age_key(older_revision)


def test_repomd_age_key_same_revision_newer_timestamp():
    a = b"<repomd><revision>7</revision><timestamp>10</timestamp><timestamp>30</timestamp></repomd>"
    b = b"<repomd><revision>7</revision><timestamp>20</timestamp></repomd>"
    assert repomd_age_key(a) == (7, 30)
    assert repomd_age_key(a) > repomd_age_key(b)


def test_repomd_age_key_tolerates_whitespace_and_missing_fields():
    assert repomd_age_key(b"<repomd>\n<revision> 12 </revision>\n</repomd>") == (12, 0)
    assert repomd_age_key(b"<repomd/>") == (0, 0)
    assert repomd_age_key(b"<repomd><revision>abc</revision><timestamp>5</timestamp></repomd>") \
        == (0, 5)


@pytest.mark.parametrize("content", [b"", b"<html>404 Not Found</html>", b"<metalink/>",
                                     b"\x00\x01binary"])
def test_repomd_age_key_refuses_other_documents(content):
    with pytest.raises(SourceError, match="not a repomd.xml"):
        repomd_age_key(content)


def test_metalink_names_what_it_skipped():
    urls = [url_line("rsync://r.example/os/repodata/repomd.xml", 100, "rsync"),
            url_line("http://ok/repodata/repomd.xml", 90)]
    result = parse_metalink(metalink(urls))
    assert result.bases == ("http://ok/",)
    assert result.skipped == ("rsync://r.example/os/repodata/repomd.xml",)


@pytest.mark.parametrize("attack", [
    # billion laughs: entity expansion
    b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
    b'<metalink><files><file name="repomd.xml">&b;</file></files></metalink>',
    # external entity: a file of the proxy host
    b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    b'<metalink><files><file name="repomd.xml">&x;</file></files></metalink>',
])
def test_metalink_with_entities_is_refused(attack):
    with pytest.raises(SourceError, match="metalink refused"):
        parse_metalink(attack)
