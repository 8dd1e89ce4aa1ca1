"""The repo root, /<repo>/<releasever>/<arch> with or without the slash (the original repoproxy's
example URL http://myproxy:5000/myrepo/21/x86_64), is answered with a mirror's base URL.

Which mirror (verify.Verifier._root_holder): among the mirrors holding the current repodata, the
first that answers for its base URL (a listing); when none lists its directories, the first
that holds the repo all the same. MirrorServer without `listings` 404s every directory, as a
mirror with indexes off does.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

from lab.helper import HelperProcess, rewritten_url, write_config
from lab.httpclient import http_get
from lab.mirrors import MirrorServer, free_port
from lab.squid import SquidInstance, WorldReadableDir, chown_proxy
from lab.wait import wait_for

from conftest import require

ROOTS = ["http://repoproxy/test/9/x86_64", "http://repoproxy/test/9/x86_64/"]
ACCEL = "127.0.0.1/- - GET myip=127.0.0.1 myport=5000"
ACCEL_ROOTS = ["http://myproxy:5000/test/9/x86_64", "http://myproxy:5000/test/9/x86_64/"]


def serve(servers: List[MirrorServer], root, **options) -> MirrorServer:
    server = MirrorServer(root, **options).start()
    servers.append(server)
    return server


def root_probes(server: MirrorServer) -> int:
    return server.count(path_suffix="/")


def test_the_root_goes_to_the_first_current_mirror_that_lists_it(tmp_path, snapshots, servers):
    # A is faster, so it is tried first: it holds the repo but 404s its directory listing.
    unlisted = serve(servers, snapshots["new"])
    listed = serve(servers, snapshots["new"], listings=True, delay=0.05)
    config = write_config(tmp_path, {"test": {"mirrors": [unlisted.url, listed.url]}})
    with HelperProcess(config) as helper:
        replies = [helper.ask(url) for url in ROOTS] + [helper.ask(url, ACCEL)
                                                        for url in ACCEL_ROOTS]
    assert [rewritten_url(r) for r in replies] == [listed.url] * 4, replies
    assert root_probes(unlisted) == 1 and root_probes(listed) == 1  # probed once, memoised
    log = (tmp_path / "helper.log").read_text()
    assert f"{unlisted.url}: HEAD 404" in log and f"{listed.url}: HEAD 200" in log, log


def test_a_stale_mirrors_listing_is_never_the_answer(tmp_path, snapshots, servers):
    """The current mirror lists no directory, the stale one does: the root goes to the current
    one anyway (the client gets its 404 page), and the stale one is not even asked."""
    current = serve(servers, snapshots["new"])
    stale = serve(servers, snapshots["old"], listings=True)
    config = write_config(tmp_path, {"test": {"mirrors": [stale.url, current.url]}})
    with HelperProcess(config) as helper:
        assert [rewritten_url(helper.ask(url)) for url in ROOTS] == [current.url] * 2
    assert root_probes(stale) == 0
    log = (tmp_path / "helper.log").read_text()
    assert "holds the repo, and lists no directory" in log, log


def test_a_single_mirror_without_listings_is_answered_and_checked_for_the_repo(
        tmp_path, snapshots, servers):
    only = serve(servers, snapshots["new"])
    config = write_config(tmp_path, {"test": {"mirrors": [only.url]}})
    with HelperProcess(config) as helper:
        assert rewritten_url(helper.ask(ROOTS[0])) == only.url  # the only mirror: at once
        assert rewritten_url(helper.ask_settled(ROOTS[1])) == only.url  # and verified so
        # Its root 404s, so the background verification asked for its repomd.xml instead.
        assert wait_for(lambda: only.count("HEAD", "/repodata/repomd.xml") == 1)
    log = (tmp_path / "helper.log").read_text()
    assert "corrected" not in log, log


def test_a_mirror_without_the_repo_is_no_answer_for_its_root(tmp_path, servers):
    empty = serve(servers, None, listings=True)
    config = write_config(tmp_path, {"test": {"mirrors": [empty.url + "pub/"]}})
    with HelperProcess(config) as helper:
        reply = helper.ask_settled(ROOTS[1])
    assert reply.startswith('ERR message="no mirror has the repo root'), reply
    assert 'repo-error="not-found"' in reply


# -- through a real Squid -----------------------------------------------------------------------
def test_repo_root_urls_through_squid_on_both_ports(snapshots, servers):
    """Both forms of the root, through the forward port and the accel port, get the listing
    of the current mirror that has one; a repo whose only mirror lists nothing gets that
    mirror's own 404, not an error of Squid's or the helper's."""
    require("squid")
    unlisted = serve(servers, snapshots["new"])
    listed = serve(servers, snapshots["new"], listings=True, delay=0.05)
    bare = serve(servers, snapshots["new"])
    with WorldReadableDir("squid-helper-root-") as world:
        accel_port = free_port()
        config = write_config(world, {"test": {"mirrors": [unlisted.url, listed.url]},
                                      "bare": {"mirrors": [bare.url]}},
                              accel_ports=[accel_port])
        (world / "helper.log").touch()
        chown_proxy(world / "memo", world / "helper.log")
        with SquidInstance(world / "squid", config, accel_port=accel_port) as squid:
            answers = [squid.get(url) for url in ROOTS]
            host = {"Host": f"127.0.0.1:{accel_port}"}
            answers += [http_get("127.0.0.1", accel_port, path, host)
                        for path in ("/test/9/x86_64", "/test/9/x86_64/")]
            for status, _headers, body in answers:
                assert status == 200, (status, body[:300], _log(world, squid))
                assert b"Index of /" in body and b'href="repodata/"' in body, body[:300]
            status, _headers, body = squid.get("http://repoproxy/bare/9/x86_64/")
            assert (status, body) == (404, b"not found\n"), _log(world, squid)
            fetched = [entry.url for entry in squid.wait_access_lines(5)]
    assert listed.count("GET", "/") >= 1 and unlisted.count("GET", "/") == 0
    assert bare.count("GET", "/") == 1
    assert fetched.count(listed.url) == 4, fetched  # Squid logs the mirror URL it fetched


def _log(world: Path, squid: SquidInstance) -> str:
    return (f"access.log: {squid.access_log()[-10:]}\nhelper.log:\n"
            f"{(world / 'helper.log').read_text()[-3000:]}\ncache.log:\n"
            f"{squid.cache_log()[-2000:]}")
