"""https:// mirrors and the upstream proxy, against real servers on 127.0.0.1: a mirror's
certificate is checked against ca_file, a bad one fails like a dead mirror and the log says why,
and only upstream_proxy (never the environment) routes the helper's requests through a proxy."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Iterator

import pytest

from lab.helper import HelperProcess, rewritten_url, write_config
from lab.mirrors import MirrorServer, dead_url, make_snapshot
from lab.tls import LabCA
from squid_helper.httpclient import MAX_TLS_VERSION, system_ca_file
from squid_helper.resolve.probe import ERROR, FAILED, FOUND, MISSING, Prober

PACKAGE = "Packages/a-1.0.rpm"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_snapshot(tmp_path / "snapshot", 1000, ["a-1.0.rpm"])


@pytest.fixture
def stranger(tmp_path: Path) -> LabCA:
    """A CA that nobody trusts."""
    return LabCA(tmp_path / "stranger", "stranger")


@pytest.fixture
def prober(ca: LabCA) -> Iterator[Prober]:
    with Prober(timeout=2.0, ca_file=str(ca.cert_file)) as prober:
        yield prober


def serve(root: Path, context: ssl.SSLContext) -> MirrorServer:
    return MirrorServer(root, tls=context)


def test_an_https_mirror_is_verified_against_ca_file(root, ca, prober):
    with serve(root, ca.server_context()) as mirror:
        assert mirror.url.startswith("https://127.0.0.1:")
        result = prober.probe(mirror.url + PACKAGE)
        fetched = prober.fetch(mirror.url + "repodata/repomd.xml")
    assert result.outcome == FOUND and result.detail == "HEAD 200", result
    assert fetched.outcome == FOUND and b"<revision>1000</revision>" in fetched.content


def test_without_ca_file_the_system_store_is_used_and_knows_no_lab_ca(root, ca):
    """Unset ca_file means the system's bundle (not certifi's): a lab CA is unknown there."""
    with Prober(timeout=2.0) as prober:
        assert prober.verify == system_ca_file() == "/etc/ssl/certs/ca-certificates.crt"
        with serve(root, ca.server_context()) as mirror:
            result = prober.probe(mirror.url + PACKAGE)
    assert result.outcome == FAILED, result
    assert result.detail == (f"certificate verify failed for host 127.0.0.1:{mirror.port}: "
                             "unable to get local issuer certificate"), result


def test_requests_ca_bundle_in_the_environment_changes_nothing(root, ca, monkeypatch):
    """Only ca_file decides: a REQUESTS_CA_BUNDLE meant for something else does not add the
    lab CA behind the config's back (nor take it away)."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca.cert_file))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(ca.cert_file))
    with Prober(timeout=2.0) as prober, serve(root, ca.server_context()) as mirror:
        result = prober.probe(mirror.url + PACKAGE)
    assert result.outcome == FAILED and "certificate verify failed" in result.detail, result


@pytest.mark.parametrize("case, why", [
    ("unknown CA", "unable to get local issuer certificate"),
    ("wrong name", "IP address mismatch, certificate is not valid for '127.0.0.1'"),
])
def test_a_bad_certificate_fails_like_a_dead_mirror_and_says_why(root, ca, stranger, prober,
                                                                 case, why):
    context = (stranger.server_context() if case == "unknown CA"
               else ca.server_context("mirror.example.org"))
    with serve(root, context) as mirror:
        result = prober.probe(mirror.url + PACKAGE)
        fetched = prober.fetch(mirror.url + "repodata/repomd.xml")
    expected = f"certificate verify failed for host 127.0.0.1:{mirror.port}: {why}"
    assert (result.outcome, result.detail) == (FAILED, expected)
    assert (fetched.outcome, fetched.detail) == (FAILED, expected)
    assert mirror.count() == 0  # no HTTP request was sent over the untrusted connection


def test_a_mirror_that_speaks_only_tls_1_3_fails(root, ca, prober):
    """Squid 5.7 built with GnuTLS cannot read answers over TLS 1.3 (see squid.conf): the
    helper must not vouch for a mirror that Squid cannot fetch from."""
    assert ssl.TLSVersion.TLSv1_2 == MAX_TLS_VERSION
    with serve(root, ca.server_context(minimum=ssl.TLSVersion.TLSv1_3)) as mirror:
        result = prober.probe(mirror.url + PACKAGE)
    assert result.outcome == FAILED, result
    assert result.detail.startswith(f"TLS handshake with host 127.0.0.1:{mirror.port} failed:")
    assert "PROTOCOL_VERSION" in result.detail, result


# -- the upstream proxy -------------------------------------------------------------------------
# A MirrorServer receives a proxy request's absolute URL as its path: serving documents keyed by
# absolute URLs (or failing every path) makes it a stand-in for a proxy, without root or Squid.
def test_probes_and_fetches_go_through_upstream_proxy_only(root, monkeypatch):
    url = "http://mirror.invalid/pub/repodata/repomd.xml"
    with MirrorServer(None, documents={url: b"<repomd/>"}) as proxy, \
            MirrorServer(root) as elsewhere:
        # The environment names another proxy: it is ignored (it usually names Squid).
        monkeypatch.setenv("http_proxy", elsewhere.url)
        monkeypatch.setenv("HTTP_PROXY", elsewhere.url)
        with Prober(timeout=2.0, proxy=proxy.url.rstrip("/")) as prober:
            fetched = prober.fetch(url)
            probed = prober.probe(url)
        with Prober(timeout=2.0) as direct:
            # Without upstream_proxy: straight to the mirror (which does not resolve).
            unproxied = direct.probe(url)
    assert fetched.outcome == FOUND and fetched.content == b"<repomd/>", fetched
    assert probed.outcome == FOUND, probed
    assert [(m, p) for m, p, _ in proxy.requests] == [("GET", url), ("HEAD", url)]
    assert elsewhere.count() == 0
    assert (unproxied.outcome, unproxied.detail) == (FAILED, "connection failed (name not known)")


@pytest.mark.parametrize("status, squid_error", [
    (503, "ERR_CONNECT_FAIL 111"),  # the mirror refused the proxy's connection
    (504, "ERR_READ_TIMEOUT 0"),  # the mirror hung
    (403, "ERR_ACCESS_DENIED 0"),  # the proxy will not go there: no 404, no HEAD fallback
])
def test_an_error_the_upstream_proxy_made_itself_fails_like_a_dead_mirror(status, squid_error):
    with MirrorServer(None) as proxy:
        proxy.fail_paths[""] = (status, {"X-Squid-Error": squid_error})
        with Prober(timeout=2.0, proxy=proxy.url.rstrip("/")) as prober:
            probed = prober.probe("http://mirror.invalid/pub/Packages/a.rpm")
            fetched = prober.fetch("http://mirror.invalid/pub/repodata/repomd.xml")
    expected = (f"upstream proxy {proxy.url.rstrip('/')} could not reach mirror.invalid: "
                f"{status} {squid_error}")
    assert (probed.outcome, probed.detail) == (FAILED, expected)
    assert (fetched.outcome, fetched.detail) == (FAILED, expected)
    assert [m for m, _, _ in proxy.requests] == ["HEAD", "GET"]


def test_a_tunnel_the_upstream_proxy_refuses_fails_like_a_dead_mirror():
    """An https:// mirror goes through CONNECT; a proxy that answers it with an error (here
    501: the stand-in knows no CONNECT) could not reach the mirror."""
    with MirrorServer(None) as proxy, \
            Prober(timeout=2.0, proxy=proxy.url.rstrip("/")) as prober:
        result = prober.probe("https://mirror.invalid/pub/Packages/a.rpm")
    assert result.outcome == FAILED, result
    assert result.detail == (f"upstream proxy {proxy.url.rstrip('/')} could not connect to "
                             "mirror.invalid: 501 Unsupported method ('CONNECT')"), result


def test_a_mirrors_own_errors_through_the_proxy_stay_the_mirrors():
    """A 404 or 500 that the mirror sent (no X-Squid-Error) means what it means directly."""
    with MirrorServer(None) as proxy:
        proxy.fail_paths["broken"] = (500, {})
        with Prober(timeout=2.0, proxy=proxy.url.rstrip("/")) as prober:
            missing = prober.probe("http://mirror.invalid/pub/Packages/none.rpm")
            broken = prober.probe("http://mirror.invalid/pub/Packages/broken.rpm")
    assert (missing.outcome, missing.detail) == (MISSING, "HEAD 404")
    assert (broken.outcome, broken.detail) == (ERROR, "HEAD 500")


def test_an_unreachable_upstream_proxy_is_named(root, ca):
    proxy = dead_url("").rstrip("/")
    with Prober(timeout=2.0, ca_file=str(ca.cert_file), proxy=proxy) as prober:
        plain = prober.probe("http://mirror.invalid/pub/Packages/a.rpm")
        secure = prober.probe("https://mirror.invalid/pub/Packages/a.rpm")
    for result in (plain, secure):
        assert result.outcome == FAILED, result
        assert result.detail == f"upstream proxy {proxy}: connection failed (refused)", result


# -- the rewrite helper ------------------------------------------------------------------------
def test_the_helper_skips_mirrors_with_bad_certificates_like_dead_ones(tmp_path, root, ca,
                                                                       stranger):
    """Unknown CA, wrong name, TLS 1.3 only, dead: each is skipped, marked unhealthy like a
    dead mirror (so later paths do not try it again), and the log says what was wrong."""
    mirrors = {
        "unknown CA": MirrorServer(root, tls=stranger.server_context()),
        "wrong name": MirrorServer(root, tls=ca.server_context("mirror.example.org")),
        "TLS 1.3": MirrorServer(root, tls=ca.server_context(minimum=ssl.TLSVersion.TLSv1_3)),
        "good": MirrorServer(root, tls=ca.server_context()),
    }
    for server in mirrors.values():
        server.start()
    try:
        bad = [mirrors[name] for name in ("unknown CA", "wrong name", "TLS 1.3")]
        good = mirrors["good"]
        dead = dead_url("/").replace("http://", "https://")
        config = write_config(tmp_path, {"test": {"mirrors": [
            dead, *(m.url for m in bad), good.url]}}, ca_file=str(ca.cert_file))
        with HelperProcess(config) as helper:
            treeinfo = helper.ask("http://repoproxy/test/9/x86_64/.treeinfo-none")
            repomd = helper.ask("http://repoproxy/test/9/x86_64/repodata/repomd.xml")
            package = helper.ask_settled("http://repoproxy/test/9/x86_64/" + PACKAGE)
            tried = [m.accepted for m in bad]
            # A later new path does not go near them again: they are marked, like a dead one.
            again = helper.ask_settled("http://repoproxy/test/9/x86_64/" + PACKAGE + "x")
        log = (tmp_path / "helper.log").read_text()
    finally:
        for server in mirrors.values():
            server.stop()
    assert treeinfo.startswith("ERR") and "not-found" in treeinfo, treeinfo
    assert rewritten_url(repomd) == good.url + "repodata/repomd.xml", repomd
    assert rewritten_url(package) == good.url + PACKAGE, package
    assert "not-found" in again, again
    assert all(tried) and [m.accepted for m in bad] == tried, tried
    assert all(m.count() == 0 for m in bad), [m.paths() for m in bad]  # no HTTP spoken
    unknown, wrong, old = (m.port for m in bad)
    for line in (
            f"mirror 127.0.0.1:{unknown} marked unhealthy for 120s: certificate verify failed "
            f"for host 127.0.0.1:{unknown}: unable to get local issuer certificate",
            f"mirror 127.0.0.1:{wrong} marked unhealthy for 120s: certificate verify failed "
            f"for host 127.0.0.1:{wrong}: IP address mismatch, certificate is not valid for "
            "'127.0.0.1'",
            f"mirror 127.0.0.1:{old} marked unhealthy for 120s: TLS handshake with host "
            f"127.0.0.1:{old} failed: TLSV1_ALERT_PROTOCOL_VERSION",
            f"mirror {dead.split('/')[2]} marked unhealthy for 120s: connection failed"):
        assert line in log, log
