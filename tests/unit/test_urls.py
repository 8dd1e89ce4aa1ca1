"""Unit tests for squid_helper.resolve.urls: client URL -> repo path, and safe mirror URLs."""

from __future__ import annotations

from urllib.parse import quote, unquote, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from squid_helper.config.files import parse_config
from squid_helper.config.settings import Config
from squid_helper.resolve.urls import (
    MAX_URL_LENGTH,
    NOT_OURS,
    REPOMD_PATH,
    NotOurs,
    Refused,
    RepoPath,
    canonical_path,
    expand_template,
    join_under_base,
    map_url,
    relative_path_problem,
    template_pattern,
)

CONFIG_TEXT = """
virtual_hosts: [repoproxy, Repo.Example.org, "proxy.lan:8080"]
accel_ports: [5000]
repos:
  fedora:
    metalink: https://mirrors.fedoraproject.org/metalink?repo=fedora-{releasever}&arch={arch}
  epel:
    mirrorlist: https://mirrors.example.org/mirrorlist?repo=epel-{releasever}&arch={arch}
  local:
    mirrors:
      - http://m1.example.org/pub/{releasever}/{arch}/
      - http://m2.example.org/pub/{releasever}/{arch}
"""


def make_config(text: str = CONFIG_TEXT) -> Config:
    return parse_config(text, "test.yaml")


CONFIG = make_config()
BASE = "http://repoproxy/fedora/40/x86_64/"


def mapped(url: str, **extras: str):
    return map_url(url, extras, CONFIG)


def refused(url: str, **extras: str) -> str:
    result = mapped(url, **extras)
    assert isinstance(result, Refused), f"{url!r} was not refused: {result!r}"
    assert result.reason
    return result.reason


# --- ours: virtual hosts ---------------------------------------------------------------------


def test_maps_a_package_url():
    result = mapped(BASE + "Packages/b/bash-5.2.rpm")
    assert result == RepoPath("fedora", "40", "x86_64", "Packages/b/bash-5.2.rpm")
    assert result.triple == "fedora/40/x86_64"
    assert result.key == "fedora/40/x86_64/Packages/b/bash-5.2.rpm"
    assert not result.is_metadata


def test_repomd_is_metadata():
    result = mapped(BASE + REPOMD_PATH)
    assert result.path == "repodata/repomd.xml"
    assert result.is_metadata
    assert not mapped(BASE + "repodata/abc-primary.xml.gz").is_metadata


@pytest.mark.parametrize("path, in_snapshot", [
    ("Packages/b/bash-5.2.rpm", True),
    ("Packages/b/bash-5.2.src.rpm", True),
    ("drpms/bash-5.1_5.2.drpm", True),
    ("repodata/" + "a" * 64 + "-primary.xml.gz", True),
    ("repodata/" + "0f" * 16 + "-comps.xml", True),
    ("repodata/repomd.xml", False),
    ("repodata/repomd.xml.asc", False),
    ("repodata/primary.xml.gz", False),
    ("repodata/abc-primary.xml.gz", False),
    ("images/pxeboot/vmlinuz", False),
    (".treeinfo", False),
])
def test_snapshot_files_are_packages_and_checksum_named_repodata(path, in_snapshot):
    assert mapped(BASE + path).in_snapshot is in_snapshot


@pytest.mark.parametrize(
    "url",
    [
        "http://REPOPROXY/fedora/40/x86_64/Packages/a.rpm",
        "http://RepoProxy/fedora/40/x86_64/Packages/a.rpm",
        "HTTP://repoproxy/fedora/40/x86_64/Packages/a.rpm",
        "http://repoproxy:80/fedora/40/x86_64/Packages/a.rpm",
        "http://repo.example.org/fedora/40/x86_64/Packages/a.rpm",
        "http://REPO.EXAMPLE.ORG/fedora/40/x86_64/Packages/a.rpm",
        "http://proxy.lan:8080/fedora/40/x86_64/Packages/a.rpm",
        "http://PROXY.LAN:8080/fedora/40/x86_64/Packages/a.rpm",
    ],
)
def test_virtual_host_forms(url):
    assert mapped(url) == RepoPath("fedora", "40", "x86_64", "Packages/a.rpm")


@pytest.mark.parametrize(
    "url",
    [
        "http://repoproxy:8080/fedora/40/x86_64/Packages/a.rpm",  # configured host, other port
        "http://proxy.lan/fedora/40/x86_64/Packages/a.rpm",  # host:port configured, not :80
        "http://proxy.lan:8081/fedora/40/x86_64/Packages/a.rpm",
        "http://repoproxy.evil.com/fedora/40/x86_64/Packages/a.rpm",
        "http://evil-repoproxy/fedora/40/x86_64/Packages/a.rpm",
        "http://example.com/fedora/40/x86_64/Packages/a.rpm",
        "http://repoproxy@example.com/fedora/40/x86_64/Packages/a.rpm",
        "https://example.com/",
        "ftp://example.com/pub/x",
    ],
)
def test_other_hosts_are_not_ours(url):
    assert mapped(url) is NOT_OURS
    assert isinstance(mapped(url), NotOurs)


@pytest.mark.parametrize("target", ["example.com:443", "repoproxy:443", "10.0.0.1:22", "[::1]:443"])
def test_connect_authority_form_is_not_ours(target):
    assert mapped(target) is NOT_OURS


def test_not_ours_even_if_the_path_looks_dangerous():
    # Only our own repo URLs are judged; everything else is Squid's business.
    assert mapped("http://example.com/a/../../etc/passwd") is NOT_OURS
    assert mapped("http://example.com/%2e%2e/%00") is NOT_OURS


def test_default_virtual_host_is_repoproxy():
    config = make_config("repos:\n  f:\n    mirrors: [http://m/]\n")
    assert map_url("http://repoproxy/f/1/x/a.rpm", {}, config) == RepoPath("f", "1", "x", "a.rpm")


# --- ours: accel ports --------------------------------------------------------------------


@pytest.mark.parametrize("host", ["proxyhost:5000", "10.1.2.3:5000", "anything.example.com:5000",
                                  "proxyhost"])
def test_accel_port_from_myport_extra(host):
    url = f"http://{host}/fedora/40/x86_64/Packages/a.rpm"
    assert mapped(url) is NOT_OURS  # without myport= the host is not configured
    assert mapped(url, myport="5000") == RepoPath("fedora", "40", "x86_64", "Packages/a.rpm")


@pytest.mark.parametrize("myport", ["3128", "-", "", "5000x", "50 00", "abc"])
def test_other_myport_values_do_not_make_a_url_ours(myport):
    assert mapped("http://proxyhost:5000/fedora/40/x86_64/a.rpm", myport=myport) is NOT_OURS


def test_myport_does_not_stop_the_virtual_host_matching():
    assert mapped(BASE + "a.rpm", myport="3128") == RepoPath("fedora", "40", "x86_64", "a.rpm")


def test_accel_port_still_applies_the_checks():
    assert "unknown repo" in refused("http://proxyhost:5000/nope/40/x86_64/a.rpm", myport="5000")
    assert "'..'" in refused("http://proxyhost:5000/fedora/40/x86_64/../a.rpm", myport="5000")


def test_accel_port_extras_only_count_when_configured():
    config = make_config("repos:\n  f:\n    mirrors: [http://m/]\n")
    assert map_url("http://proxyhost:5000/f/1/x/a.rpm", {"myport": "5000"}, config) is NOT_OURS


# --- paths and query strings ---------------------------------------------------------------


def test_query_string_and_fragment_are_dropped_from_the_path():
    assert mapped(BASE + "repodata/repomd.xml?countme=1").path == REPOMD_PATH
    assert mapped(BASE + "Packages/a.rpm?x=1&y=2#frag").path == "Packages/a.rpm"
    assert mapped(BASE + "Packages/a.rpm#frag").path == "Packages/a.rpm"


def test_path_keeps_its_percent_encoding():
    result = mapped(BASE + "Packages/g/g%2B%2B-13.rpm")
    assert result.path == "Packages/g/g%2B%2B-13.rpm"


# --- Fedora's real file names: one spelling whatever the client sends -------------------------
# What dnf 4.14 (librepo 1.14) sent through Squid in tests/test_fedora_names.py: '^' and '+'
# escaped in lower-case hex, '~' raw. curl sends all three raw; others escape '~' as %7E.
@pytest.mark.parametrize("sent, canonical", [
    ("snap-1.0%5e20230101git1234abc-1.noarch.rpm", "snap-1.0%5E20230101git1234abc-1.noarch.rpm"),
    ("snap-1.0%5E20230101git1234abc-1.noarch.rpm", "snap-1.0%5E20230101git1234abc-1.noarch.rpm"),
    ("snap-1.0^20230101git1234abc-1.noarch.rpm", "snap-1.0%5E20230101git1234abc-1.noarch.rpm"),
    ("tilde-2.0~rc1-1.noarch.rpm", "tilde-2.0~rc1-1.noarch.rpm"),
    ("tilde-2.0%7Erc1-1.noarch.rpm", "tilde-2.0~rc1-1.noarch.rpm"),
    ("tilde-2.0%7erc1-1.noarch.rpm", "tilde-2.0~rc1-1.noarch.rpm"),
    ("libsq%2b%2b-devel-3.0-1.noarch.rpm", "libsq%2B%2B-devel-3.0-1.noarch.rpm"),
    ("libsq++-devel-3.0-1.noarch.rpm", "libsq%2B%2B-devel-3.0-1.noarch.rpm"),
    ("libsq%2B+-devel-3.0-1.noarch.rpm", "libsq%2B%2B-devel-3.0-1.noarch.rpm"),
    ("gcc-c++-13.2.1-1.fc40.x86_64.rpm", "gcc-c%2B%2B-13.2.1-1.fc40.x86_64.rpm"),
    ("perl-Text-Tabs+Wrap-2021.0726-1.noarch.rpm", "perl-Text-Tabs%2BWrap-2021.0726-1.noarch.rpm"),
    ("foo-1.0~rc1^git2-1.fc40.x86_64.rpm", "foo-1.0~rc1%5Egit2-1.fc40.x86_64.rpm"),
    ("%61%2D%5f%2e%30.rpm", "a-_.0.rpm"),  # escaped unreserved characters are decoded
])
def test_fedora_file_names_have_one_spelling_whatever_the_client_sends(sent, canonical):
    result = mapped(BASE + "Packages/" + sent)
    assert result.path == "Packages/" + canonical
    assert unquote(result.path) == unquote("Packages/" + sent)  # the name itself intact
    assert canonical_path(result.path) == result.path  # a fixed point
    assert result.in_snapshot
    assert join_under_base("http://m/pub/", result.path) == "http://m/pub/Packages/" + canonical


def test_a_caret_is_the_only_character_outside_rfc3986_that_is_accepted():
    assert mapped(BASE + "a^b.rpm").path == "a%5Eb.rpm"
    assert "illegal character" in refused(BASE + "a^b|c.rpm")
    # the checks still see through the escapes around it
    assert "'..'" in refused(BASE + "Packages/%2e%2e/a^b.rpm")


def test_literal_percent_sign_sent_as_percent_25_is_allowed():
    assert mapped(BASE + "Packages/100%25-done.rpm").path == "Packages/100%25-done.rpm"


def test_trailing_slash_is_kept():
    assert mapped(BASE + "repodata/").path == "repodata/"


@pytest.mark.parametrize("path", ["a-b_c.d~e!$&'()*+,=:@.rpm",
                                  "Packages/x/x-1.0-1.fc40.noarch.rpm",
                                  "images/pxeboot/vmlinuz", ".treeinfo", "...", ".hidden/x"])
def test_legal_paths(path):
    # The same name, escaped where it is not unreserved (canonical_path)
    assert mapped(BASE + path).path == quote(path, safe="/")


@pytest.mark.parametrize("releasever,arch", [("40", "x86_64"), ("9-stream", "aarch64"),
                                             ("rawhide", "noarch"), ("8.10", "ppc64le"),
                                             ("el9_4", "i686"), ("1+x", "s390x")])
def test_releasever_and_arch_forms(releasever, arch):
    result = mapped(f"http://repoproxy/epel/{releasever}/{arch}/a.rpm")
    assert (result.repo, result.releasever, result.arch) == ("epel", releasever, arch)


# --- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "Packages/../../../etc/passwd",
        "..",
        "../a.rpm",
        "Packages/./a.rpm",
        "./a.rpm",
        "Packages/..",
        "Packages/.",
    ],
)
def test_dot_segments_are_refused(path):
    assert "'.' and '..'" in refused(BASE + path)


@pytest.mark.parametrize(
    "path",
    [
        "%2e%2e/etc/passwd",
        "%2E%2E/etc/passwd",
        ".%2e/x",
        "%2e./x",
        "Packages/%2e/x",
        "%252e%252e/x",
        "%252E%252E/x",
        "%25252e%25252e/x",
        ".%252e/x",
    ],
)
def test_percent_encoded_dot_segments_are_refused(path):
    assert "'.' and '..'" in refused(BASE + path)


def test_encoding_nested_too_deep_is_refused():
    assert "too deep" in refused(BASE + "%2525252e%2525252e/x")


@pytest.mark.parametrize(
    "path",
    [
        "Packages%2f..%2f..%2fetc/passwd",
        "a%2Fb.rpm",
        "a%5cb.rpm",
        "..%5C..%5Cwin.ini",
        "a%252fb.rpm",
        "a%255cb.rpm",
        "a%00.rpm",
        "a%2500.rpm",
        "a%0d%0aSet-Cookie:x.rpm",
        "a%0A.rpm",
        "a%0D.rpm",
    ],
)
def test_encoded_slash_backslash_nul_cr_lf_are_refused(path):
    assert "encoded '/'" in refused(BASE + path)


@pytest.mark.parametrize(
    "url",
    [
        BASE + "a\x00.rpm",
        BASE + "a\r.rpm",
        BASE + "a\n.rpm",
        BASE + "a b.rpm",
        BASE + "a\t.rpm",
        BASE + "a\x7f.rpm",
        BASE + "caf\u00e9.rpm",
        "http://repoproxy/fedora/40/x86_64/a.rpm\r\nX-Injected: 1",
    ],
)
def test_raw_control_characters_spaces_and_non_ascii_are_refused(url):
    assert "control characters" in refused(url)


# '^' is outside pchar too, but accepted: Fedora's snapshot versions hold it (see below).
@pytest.mark.parametrize("path", ["a\\b.rpm", "..\\..\\x", "a\"b", "a<b", "a>b", "a|b", "a`b",
                                  "a{b", "a}b", "a%zzb", "a%2", "a%"])
def test_characters_outside_rfc3986_pchar_are_refused(path):
    assert "illegal character" in refused(BASE + path)


def test_non_utf8_percent_bytes_are_refused():
    assert "not UTF-8" in refused(BASE + "a%ff.rpm")


@pytest.mark.parametrize(
    "url",
    [
        "http://repoproxy/{repo}/40/x86_64/a.rpm",
        "http://repoproxy/fedora/{releasever}/x86_64/a.rpm",
        "http://repoproxy/fedora/40/{arch}/a.rpm",
        "http://repoproxy/fedora/4}0/x86_64/a.rpm",
    ],
)
def test_braces_in_repo_releasever_arch_are_refused(url):
    assert "illegal character" in refused(url)


@pytest.mark.parametrize(
    "url, label",
    [
        ("http://repoproxy/fedora/%7Breleasever%7D/x86_64/a.rpm", "releasever"),
        ("http://repoproxy/fedora/40/%7barch%7d/a.rpm", "arch"),
        ("http://repoproxy/%7Bfedora%7D/40/x86_64/a.rpm", "repo"),
        ("http://repoproxy/fedora/4%30/x86_64/a.rpm", "releasever"),
        ("http://repoproxy/fedora/-40/x86_64/a.rpm", "releasever"),
        ("http://repoproxy/fedora/40/_x/a.rpm", "arch"),
        ("http://repoproxy/fedora/40/x86~64/a.rpm", "arch"),
        ("http://repoproxy/fedora/40:1/x86_64/a.rpm", "releasever"),
        ("http://repoproxy/fedora/4@0/x86_64/a.rpm", "releasever"),
        ("http://repoproxy/fedora/" + "9" * 65 + "/x86_64/a.rpm", "releasever"),
    ],
)
def test_releasever_arch_repo_outside_the_name_set_are_refused(url, label):
    reason = refused(url)
    assert reason.startswith(label + " ")
    assert "must be letters, digits" in reason


def test_64_character_releasever_is_still_accepted():
    assert mapped("http://repoproxy/fedora/" + "9" * 64 + "/x86_64/a.rpm").releasever == "9" * 64


@pytest.mark.parametrize(
    "url",
    [
        "http://repoproxy/",
        "http://repoproxy",
        "http://repoproxy/fedora",
        "http://repoproxy/fedora/",
        "http://repoproxy/fedora/40",
        "http://repoproxy/fedora/40/",
        "http://repoproxy/fedora/40?x=/x86_64/a.rpm",
    ],
)
def test_short_paths_are_refused(url):
    assert "expected /<repo>/<releasever>/<arch>/<path>" in refused(url)


# --- the repo root (the original repoproxy's example URL) -------------------------------------
@pytest.mark.parametrize("url, extras", [
    ("http://repoproxy/fedora/40/x86_64", {}),
    ("http://repoproxy/fedora/40/x86_64/", {}),
    ("http://repoproxy/fedora/40/x86_64?x=/a.rpm", {}),  # the query never reaches a mirror
    ("http://REPOPROXY:80/fedora/40/x86_64/", {}),
    ("http://proxy.lan:8080/fedora/40/x86_64", {}),
    ("http://myproxy:5000/fedora/40/x86_64", {"myport": "5000"}),
    ("http://myproxy:5000/fedora/40/x86_64/", {"myport": "5000"}),
])
def test_the_repo_root_with_or_without_slash_is_the_empty_path(url, extras):
    result = mapped(url, **extras)
    assert result == RepoPath("fedora", "40", "x86_64", "")
    assert result.is_root and result.follows_repodata
    assert not result.is_metadata and not result.in_snapshot
    assert result.key == "fedora/40/x86_64/"


def test_only_the_repo_root_is_the_empty_path():
    assert not mapped(BASE + "Packages/a.rpm").is_root
    assert not mapped(BASE + "Packages/").is_root  # a subdirectory is an ordinary path
    assert mapped(BASE + REPOMD_PATH).follows_repodata
    assert not mapped(BASE + "Packages/a.rpm").follows_repodata


@pytest.mark.parametrize("url", [
    "http://repoproxy/fedora/40/x86_64//",
    "http://repoproxy/fedora/40/x86_64/./",
    "http://repoproxy/fedora/40/x86_64/.",
    "http://repoproxy/fedora/40/x86_64/..",
    "http://repoproxy/fedora/40/x86_64/%2e%2e",
    "http://repoproxy/fedora/40/x86_64/%2e%2e/",
    "http://repoproxy/fedora/40/%2e%2e",
    "http://repoproxy/fedora/40/%2e%2e/",
    "http://repoproxy/fedora/40/..",
    "http://repoproxy/fedora/../x86_64",
    "http://repoproxy/fedora/40/x86_64%2f",
    "http://repoproxy/fedora/40/x86_64%2F..",
    "http://repoproxy/fedora/40/{arch}/",
    "http://repoproxy/fedora/40/x86_64;/",
    "http://repoproxy//40/x86_64/",
    "http://repoproxy/fedora//x86_64",
    "https://repoproxy/fedora/40/x86_64/",
    "http://user@repoproxy/fedora/40/x86_64/",
    "http://repoproxy/nosuchrepo/40/x86_64/",
])
def test_repo_root_look_alikes_are_refused(url):
    refused(url)


def test_the_repo_root_joins_to_the_mirror_base():
    assert join_under_base("http://m/pub/40/x86_64/", "") == "http://m/pub/40/x86_64/"
    assert join_under_base("http://m/pub/40/x86_64", "") == "http://m/pub/40/x86_64/"


@pytest.mark.parametrize(
    "url",
    [
        "http://repoproxy//fedora/40/x86_64/a.rpm",
        "http://repoproxy/fedora//40/x86_64/a.rpm",
        "http://repoproxy/fedora/40//x86_64/a.rpm",
        "http://repoproxy/fedora/40/x86_64/Packages//a.rpm",
        "http://repoproxy/fedora/40/x86_64/Packages///",
    ],
)
def test_empty_segments_are_refused(url):
    reason = refused(url)
    assert "empty path segment" in reason or "expected /<repo>" in reason


def test_empty_inner_segment_reason():
    assert "empty path segment" in refused(BASE + "Packages//a.rpm")


def test_over_long_urls_are_refused():
    prefix = BASE + "Packages/"
    fits = prefix + "a" * (MAX_URL_LENGTH - len(prefix))
    assert len(fits) == MAX_URL_LENGTH == 8192
    assert isinstance(mapped(fits), RepoPath)
    assert str(MAX_URL_LENGTH) in refused(fits + "a")


@pytest.mark.parametrize("scheme", ["https", "ftp", "gopher", "HTTPS", "file"])
def test_non_http_schemes_on_our_host_are_refused(scheme):
    reason = refused(f"{scheme}://repoproxy/fedora/40/x86_64/a.rpm")
    assert "scheme" in reason and "http://" in reason


def test_non_http_scheme_on_an_accel_port_is_refused():
    assert "scheme" in refused("https://proxyhost:5000/fedora/40/x86_64/a.rpm", myport="5000")


@pytest.mark.parametrize(
    "url",
    [
        "http://user@repoproxy/fedora/40/x86_64/a.rpm",
        "http://user:pw@repoproxy/fedora/40/x86_64/a.rpm",
        "http://:pw@repoproxy/fedora/40/x86_64/a.rpm",
        "http://@repoproxy/fedora/40/x86_64/a.rpm",
        "http://evil.com@proxy.lan:8080/fedora/40/x86_64/a.rpm",
    ],
)
def test_userinfo_is_refused(url):
    assert "user information" in refused(url)


def test_malformed_port_is_refused():
    assert "malformed URL authority" in refused("http://repoproxy:99999/fedora/40/x86_64/a.rpm")
    assert "malformed URL authority" in refused("http://repoproxy:port/fedora/40/x86_64/a.rpm")


def test_unknown_repo_is_refused_and_lists_the_known_ones():
    reason = refused("http://repoproxy/centos/9/x86_64/a.rpm")
    assert "unknown repo 'centos'" in reason
    assert "epel, fedora, local" in reason


def test_repo_names_are_case_sensitive():
    assert "unknown repo 'Fedora'" in refused("http://repoproxy/Fedora/40/x86_64/a.rpm")


@given(st.text(alphabet=st.characters(codec="ascii"), max_size=60))
def test_any_mapped_path_is_safe(tail):
    result = map_url(BASE + tail, {}, CONFIG)
    if isinstance(result, RepoPath) and result.is_root:  # BASE itself, or BASE?query
        assert join_under_base("http://m.example.org/pub/", result.path) == \
            "http://m.example.org/pub/"
    elif isinstance(result, RepoPath):
        assert relative_path_problem(result.path) is None
        for segment in result.path.split("/"):
            assert segment not in (".", "..")
            assert "\\" not in segment and "\x00" not in segment
        assert join_under_base("http://m.example.org/pub/", result.path).startswith(
            "http://m.example.org/pub/")
    else:
        assert isinstance(result, Refused)


# --- expand_template ----------------------------------------------------------------------


def test_expand_template_substitutes_every_occurrence():
    template = "http://m/{releasever}/{arch}/os/{arch}-{releasever}/"
    assert expand_template(template, "40", "x86_64") == "http://m/40/x86_64/os/x86_64-40/"


def test_expand_template_without_placeholders():
    assert expand_template("http://m/pub/", "40", "x86_64") == "http://m/pub/"


def test_expand_template_is_not_str_format():
    # Other braces are left alone; values are never re-expanded.
    assert expand_template("http://m/?a={arch}&b={x}", "9", "x86_64") == "http://m/?a=x86_64&b={x}"


@pytest.mark.parametrize("releasever,arch", [("{arch}", "x86_64"), ("40", "{releasever}"),
                                             ("../..", "x"), ("40/..", "x"), ("40", ""),
                                             ("", "x"), ("4 0", "x"), ("40", "x%2F"),
                                             ("9" * 65, "x")])
def test_expand_template_refuses_unvalidated_values(releasever, arch):
    with pytest.raises(ValueError):
        expand_template("http://m/{releasever}/{arch}/", releasever, arch)


# --- join_under_base ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "base, path, expected",
    [
        ("http://m/pub/", "Packages/a.rpm", "http://m/pub/Packages/a.rpm"),
        ("http://m/pub", "Packages/a.rpm", "http://m/pub/Packages/a.rpm"),
        ("http://m", "a.rpm", "http://m/a.rpm"),
        ("https://m:8443/x/y/", REPOMD_PATH, "https://m:8443/x/y/repodata/repomd.xml"),
        ("http://m/pub/", "", "http://m/pub/"),
        ("http://m/pub/", "a/./b", "http://m/pub/a/./b"),
        ("http://m/pub/", "a/../b", "http://m/pub/a/../b"),
        ("http://m/pub/", "g%2B%2B.rpm", "http://m/pub/g%2B%2B.rpm"),
        ("http://m/pub/", "%252e%252e/x", "http://m/pub/%252e%252e/x"),
    ],
)
def test_join_under_base(base, path, expected):
    assert join_under_base(base, path) == expected


@pytest.mark.parametrize(
    "path",
    [
        "..",
        "../x",
        "../pubx/a.rpm",
        "a/../../x",
        "%2e%2e/x",
        "%2E%2E/%2e%2e/x",
        "a/%2e%2e/%2e%2e/x",
        "?q=1",
        "a.rpm?q=1",
        "a.rpm#frag",
    ],
)
def test_join_under_base_refuses_escapes(path):
    with pytest.raises(ValueError):
        join_under_base("http://m/pub/", path)


@pytest.mark.parametrize("path", ["@evil.com/x", ".evil.com/x", ":8080/x", "//evil.com/x"])
def test_join_under_base_cannot_change_the_host(path):
    # The base always gets its '/', so a path can never extend the authority.
    joined = join_under_base("http://m", path)
    assert urlsplit(joined).netloc == "m"
    assert joined == "http://m/" + path


def test_join_under_base_at_the_root_stays_on_the_host():
    # '/..' at the root is the root again on every server.
    assert join_under_base("http://m/", "../x") == "http://m/../x"


# --- relative_path_problem and template_pattern ----------------------------------------------


@pytest.mark.parametrize("path", ["a.rpm", "repodata/repomd.xml", "repodata/", "a/b/c%2B.rpm"])
def test_relative_path_problem_accepts(path):
    assert relative_path_problem(path) is None


@pytest.mark.parametrize("path", ["", "a//b", "/a", "../a", "a/%2e%2e/b", "a%2fb", "a b", "a\\b"])
def test_relative_path_problem_refuses(path):
    assert relative_path_problem(path)


def test_template_pattern_captures_releasever_arch_path():
    pattern = template_pattern("http://m1.example.org/pub/{releasever}/{arch}/")
    match = pattern.fullmatch("http://m1.example.org/pub/40/x86_64/Packages/a.rpm")
    assert match is not None
    assert (match["releasever"], match["arch"], match["path"]) == ("40", "x86_64", "Packages/a.rpm")
    assert pattern.fullmatch("http://m2.example.org/pub/40/x86_64/a.rpm") is None


def test_template_pattern_repeated_placeholder_must_repeat_the_value():
    pattern = template_pattern("http://m/{arch}/{releasever}/{arch}/")
    assert pattern.fullmatch("http://m/x86_64/40/x86_64/a.rpm")["path"] == "a.rpm"
    assert pattern.fullmatch("http://m/x86_64/40/aarch64/a.rpm") is None


def test_template_pattern_escapes_regex_characters():
    pattern = template_pattern("http://m.example.org/a+b/{arch}/")
    assert pattern.fullmatch("http://mXexample.org/a+b/x/a.rpm") is None
    assert pattern.fullmatch("http://m.example.org/aab/x/a.rpm") is None
    assert pattern.fullmatch("http://m.example.org/a+b/x/a.rpm")["path"] == "a.rpm"


def test_template_pattern_path_stops_at_query():
    pattern = template_pattern("http://m/{releasever}/")
    assert pattern.match("http://m/40/a.rpm?x=1")["path"] == "a.rpm"


@pytest.mark.parametrize("path", ["Packages/..;/..;/secret", "Packages/a;b.rpm",
                                  "Packages/a%3Bb.rpm", "Packages/a%253bb.rpm"])
def test_semicolons_are_refused(path):
    # Tomcat-based mirrors (Artifactory, Nexus) read '..;' as '..': a way out of the tree.
    assert "';' in a path segment" in refused(BASE + path)
