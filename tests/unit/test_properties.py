"""Property-based tests: for any input line, one well-formed reply; a rewrite never leaves the
configured mirrors' trees."""

from __future__ import annotations

import io
import posixpath
import re
from urllib.parse import unquote, urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from squid_helper.config.files import parse_config
from squid_helper.resolve.urls import (
    NotOurs,
    Refused,
    RepoPath,
    canonical_path,
    expand_template,
    join_under_base,
    map_url,
)
from squid_helper.squid.helperloop import HelperLoop
from squid_helper.squid.protocol import err, ok, parse_request

MIRROR = "http://127.0.0.1:8080/pub/{releasever}/{arch}/os/"
CONFIG = parse_config(f"""
virtual_hosts: [repoproxy, "repoproxy:8080"]
accel_ports: [5000]
repos:
  test: {{mirrors: ["{MIRROR}"]}}
  other: {{mirrors: ["http://127.0.0.2/x/"]}}
""", "props.yaml")

REPLY_RE = re.compile(r'^(?:(?P<channel>\d+) )?(?P<result>OK|ERR|BH)'
                      r'(?: [a-z-]+="(?:[^"\\\r\n]|\\.)*")*$')

# Pieces that hostile URLs are made of, so that generated URLs often reach deep checks.
PIECES = st.sampled_from([
    "http://", "https://", "ftp://", "repoproxy", "REPOPROXY", "repoproxy:8080", "proxy:5000",
    "user@", "/", "//", "test", "other", "9", "x86_64", "..", ".", "%2e", "%2E%2e", "%252e",
    "%2f", "%5c", "\\", "%00", "%0d%0a", "{releasever}", "{arch}", "%7b", "?", "#", "a.rpm",
    "Packages", "repodata", "repomd.xml", " ", "\t", "\x00", "é", "%", "%zz", ":", "@", "~",
    "^", "%5e", "+", "%2b", "%7E", "%7e",
])
URLS = st.lists(PIECES, min_size=0, max_size=14).map("".join) | st.text(max_size=300)
EXTRAS = st.sampled_from(["", " 127.0.0.1/- - GET myip=127.0.0.1 myport=3128",
                          " 127.0.0.1/- - GET myip=127.0.0.1 myport=5000", " - - -"])


def _inside(url: str, base: str, root: bool = False) -> bool:
    """url lies below base; root: url may be the base itself (the repo root's answer)."""
    parts, base_parts = urlsplit(url), urlsplit(base)
    if (parts.scheme, parts.netloc) != (base_parts.scheme, base_parts.netloc):
        return False
    path = posixpath.normpath(unquote(unquote(unquote(parts.path))))
    base_path = posixpath.normpath(base_parts.path)
    return (root and path == base_path) or path.startswith(base_path + "/")


@settings(max_examples=1500, deadline=None)
@given(URLS, EXTRAS)
def test_mapping_never_leaves_the_mirror_tree(url, extras):
    parsed = parse_request("1 " + url + extras)[1]
    if parsed is None:
        return
    mapped = map_url(parsed.url, parsed.extras, CONFIG)
    assert isinstance(mapped, (RepoPath, Refused, NotOurs))
    if not isinstance(mapped, RepoPath):
        return
    # One spelling per path: canonical, and the name the client asked for.
    assert canonical_path(mapped.path) == mapped.path
    client_path = urlsplit(parsed.url).path.split("/", 4)[4:]
    assert unquote(mapped.path) == unquote(client_path[0] if client_path else "")
    for template in CONFIG.repos[mapped.repo].templates:
        base = expand_template(template, mapped.releasever, mapped.arch)
        rewritten = join_under_base(base, mapped.path)
        # Only the repo root (/<repo>/<releasever>/<arch>[/]) is answered with the base itself.
        assert _inside(rewritten, base, root=mapped.is_root), (url, rewritten)
        if mapped.is_root:
            assert rewritten == base if base.endswith("/") else base + "/"
        assert "{" not in rewritten and "}" not in rewritten
        assert not any(ch in rewritten for ch in "\r\n\x00 \\")


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(["9", "40", "9-stream", "rawhide"]),
       st.sampled_from(["x86_64", "aarch64", "noarch"]))
def test_template_substitution_is_literal(releasever, arch):
    expanded = expand_template(MIRROR, releasever, arch)
    assert expanded == f"http://127.0.0.1:8080/pub/{releasever}/{arch}/os/"


class _MappingHandler:
    """The real URL mapping, with a resolution that takes the first mirror at once."""

    def answer(self, request):
        mapped = map_url(request.url, request.extras, CONFIG)
        if isinstance(mapped, NotOurs):
            return err()
        if isinstance(mapped, Refused):
            return err(mapped.reason)
        base = expand_template(CONFIG.repos[mapped.repo].templates[0], mapped.releasever,
                               mapped.arch)
        return lambda: ok(rewrite_url=join_under_base(base, mapped.path))

    def reuse_token(self):
        return None

    def close(self):
        pass


LINE_BYTES = st.binary(max_size=400).map(lambda b: b.replace(b"\n", b""))
LINES = st.one_of(
    LINE_BYTES,
    st.tuples(st.integers(0, 10**9), URLS, EXTRAS).map(
        lambda t: f"{t[0]} {t[1]}{t[2]}".encode("utf-8", "surrogatepass").replace(b"\n", b"")),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(LINES, min_size=1, max_size=40))
def test_every_line_gets_exactly_one_well_formed_reply(lines):
    stdin = io.BytesIO(b"".join(line + b"\n" for line in lines))
    stdout = io.BytesIO()
    HelperLoop(_MappingHandler(), stdout, workers=4).run(stdin)
    replies = stdout.getvalue().decode("latin-1").split("\n")
    assert replies[-1] == ""
    replies = replies[:-1]
    assert len(replies) == len(lines)
    expected_channels = sorted(
        (parse_request(line.rstrip(b"\r").decode("latin-1"))[0] or "") for line in lines)
    got_channels = []
    for reply in replies:
        match = REPLY_RE.match(reply)
        assert match, reply
        got_channels.append(match["channel"] or "")
        if match["result"] == "OK":
            url = reply.split('rewrite-url="', 1)[1][:-1]
            assert _inside(url, "http://127.0.0.1:8080/pub/") or _inside(
                url, "http://127.0.0.2/x/", root=True), reply
    assert sorted(got_channels) == expected_channels
