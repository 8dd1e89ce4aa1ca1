"""Hostile input, signals and EOF: the helper answers every line once and never dies."""

from __future__ import annotations

import queue
import random
import signal
import time
from pathlib import Path

import pytest

from lab.helper import HelperProcess, rewritten_url, write_config
from lab.mirrors import MirrorServer

PKG = "http://repoproxy/test/9/x86_64/Packages/"

HOSTILE_URLS = [
    "http://repoproxy/test/9/x86_64/../../../etc/passwd",
    "http://repoproxy/test/9/x86_64/Packages/%2e%2e/%2e%2e/secret",
    "http://repoproxy/test/9/x86_64/Packages/%252e%252e/x",
    "http://repoproxy/test/9/x86_64/Packages/..%5c..%5cx",
    "http://repoproxy/test/9/x86_64/Packages/a%00b.rpm",
    "http://repoproxy/test/9/x86_64/Packages/a%0d%0aSet-Cookie:x",
    "http://repoproxy/test/{releasever}/x86_64/Packages/a.rpm",
    "http://repoproxy/test/9/%7Barch%7D/Packages/a.rpm",
    "http://repoproxy/test/9/x86_64//Packages/a.rpm",
    "http://repoproxy/test/9/x86_64/Packages/./a.rpm",
    "http://repoproxy/test/9/x86_64/Packages/" + "a" * 9000,
    "ftp://repoproxy/test/9/x86_64/Packages/a.rpm",
    "https://repoproxy/test/9/x86_64/Packages/a.rpm",
    "http://user:pw@repoproxy/test/9/x86_64/Packages/a.rpm",
    "http://repoproxy/other/9/x86_64/Packages/a.rpm",
    "http://repoproxy/test/9/x86_64//",
    "http://repoproxy/test/9/x86_64/%2e%2e/",
    "http://repoproxy/test/9/",
    "http://repoproxy/",
    "http://repoproxy:99999/test/9/x86_64/a.rpm",
]


@pytest.fixture
def good(snapshots):
    with MirrorServer(snapshots["new"]) as server:
        yield server


@pytest.fixture
def config(tmp_path: Path, good) -> Path:
    return write_config(tmp_path, {"test": {"mirrors": [good.url]}})


def test_hostile_urls_are_refused_with_a_message_never_rewritten(config, good):
    with HelperProcess(config) as helper:
        replies = helper.ask_many(HOSTILE_URLS)
    for url, reply in zip(HOSTILE_URLS, replies):
        assert reply.startswith(("ERR message=", "BH message=")), (url, reply)
    # Nothing was even probed: refusals happen before any mirror is contacted.
    assert good.count(path_contains="/Packages/") == 0


def test_malformed_lines_each_get_exactly_one_reply(config):
    lines = [
        b"\n",  # empty
        b"   \n",
        b"7\n",  # a channel-ID and nothing else
        b"8 \x00\x01\x02\n",
        b"9 http://repoproxy/test/9/x86_64/Packages/a\rb.rpm - - GET\n",
        b"10 http://repoproxy/test/9/x86_64/Packages/\xff\xfe.rpm\n",
        b"11 " + b"x" * 40000 + b"\n",  # over-long line, longer than the reader's limit
        b"12 not-a-url at all\n",
        b"13 http://example.org/ 127.0.0.1/- - GET myip=127.0.0.1 myport=3128\n",
    ]
    with HelperProcess(config) as helper:
        helper.send_raw(b"".join(lines))
        replies = [helper.reply(10) for _ in lines]
        assert helper.ask(PKG + "common-1.0.rpm").startswith("OK rewrite-url=")
        with pytest.raises(queue.Empty):
            helper.reply(0.5)  # and no extra reply line was produced
    by_channel = {r.split(" ", 1)[0]: r for r in replies}
    assert by_channel["7"].startswith("7 BH message=")
    assert by_channel["11"].startswith("11 BH message=") and "longer" in by_channel["11"]
    assert by_channel["12"] == "12 ERR"
    assert by_channel["13"] == "13 ERR"
    for channel in ("8", "9", "10"):
        assert by_channel[channel].startswith(channel + " ERR message="), by_channel[channel]
    for reply in replies:
        assert "\r" not in reply


def test_without_channel_ids_replies_stay_in_order(tmp_path, snapshots, good):
    # missing.txt is not a package: with two mirrors to choose from it is probed before it is
    # answered (the slow kind).
    urls = [PKG + "common-1.0.rpm", "http://example.org/", PKG + "missing.txt",
            PKG + "new-2.0.rpm", "http://repoproxy/test/9/x86_64/Packages/../x"]
    with MirrorServer(snapshots["new"]) as twin, HelperProcess(write_config(
            tmp_path, {"test": {"mirrors": [good.url, twin.url]}})) as helper:
        replies = [helper.ask(u, channel=False) for u in urls]
    mirrors = (good.url, twin.url)  # the faster of the two serves the packages
    assert rewritten_url(replies[0]) in [m + "Packages/common-1.0.rpm" for m in mirrors]
    assert replies[1] == "ERR"
    assert replies[2].startswith("ERR message=") and "no mirror has" in replies[2]
    assert rewritten_url(replies[3]) in [m + "Packages/new-2.0.rpm" for m in mirrors]
    assert replies[4].startswith("ERR message=")


def test_stress_thousands_of_random_hostile_lines_then_a_normal_request(config, good):
    rng = random.Random(20261125)
    alphabet = (b"abcdefghijklmnopqrstuvwxyz0123456789/%.:{}?#@\\ \t\x00\x7f\xff=-_"
                b"\r")
    prefixes = [b"http://repoproxy/test/9/x86_64/", b"http://repoproxy/", b"http://",
                b"", b"http://example.org/", b"ftp://repoproxy/"]
    lines = []
    for index in range(3000):
        body = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        body = body.replace(b"\n", b"")
        lines.append(b"%d " % index + rng.choice(prefixes) + body + b"\n")
    with HelperProcess(config) as helper:
        for start in range(0, len(lines), 500):
            helper.send_raw(b"".join(lines[start:start + 500]))
        seen = set()
        for _ in lines:
            reply = helper.reply(30)
            channel, _, rest = reply.partition(" ")
            assert rest.split(" ", 1)[0] in ("OK", "ERR", "BH"), reply
            if rest.startswith("OK"):
                # Anything rewritten must lie under the one configured mirror.
                assert rewritten_url(rest).startswith(good.url), reply
            seen.add(channel)
        assert seen == {str(i) for i in range(3000)}
        assert rewritten_url(helper.ask(PKG + "common-1.0.rpm")) == (
            good.url + "Packages/common-1.0.rpm")
        assert helper.process.poll() is None


def test_eof_answers_what_is_in_flight_then_exits_cleanly(tmp_path, snapshots):
    with MirrorServer(snapshots["new"]) as good:
        config = write_config(tmp_path, {"test": {"mirrors": [good.url]}})
        with HelperProcess(config) as helper:
            names = [f"bulk-{i}.rpm" for i in range(10)]
            helper.send_raw("".join(f"{i} {PKG}{n}\n" for i, n in enumerate(names)).encode())
            code = helper.close()
            replies = []
            while True:
                try:
                    replies.append(helper.reply(5))
                except EOFError:
                    break
    assert code == 0
    assert sorted(int(r.split(" ", 1)[0]) for r in replies) == list(range(10))
    assert all(" OK rewrite-url=" in r for r in replies)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signals_end_the_helper_cleanly(config, signum):
    with HelperProcess(config) as helper:
        assert helper.ask(PKG + "common-1.0.rpm").startswith("OK")
        helper.process.send_signal(signum)
        assert helper.process.wait(timeout=10) == 0


def test_sighup_reloads_the_config_and_keeps_it_when_the_new_one_is_bad(tmp_path, snapshots):
    with MirrorServer(snapshots["new"]) as one, MirrorServer(snapshots["new"]) as two:
        config = write_config(tmp_path, {"test": {"mirrors": [one.url]}})
        with HelperProcess(config) as helper:
            assert rewritten_url(helper.ask(PKG + "common-1.0.rpm")).startswith(one.url)
            # A new repo appears on reload.
            write_config(tmp_path, {"test": {"mirrors": [one.url]},
                                    "extra": {"mirrors": [two.url]}})
            helper.process.send_signal(signal.SIGHUP)
            time.sleep(0.3)
            extra = "http://repoproxy/extra/9/x86_64/Packages/common-1.0.rpm"
            assert rewritten_url(helper.ask(extra)).startswith(two.url)
            # A broken config is refused; the running one stays.
            config.write_text("repos: [this is not a mapping\n")
            helper.process.send_signal(signal.SIGHUP)
            time.sleep(0.3)
            assert rewritten_url(helper.ask(extra)).startswith(two.url)
            assert helper.process.poll() is None
    log = (tmp_path / "helper.log").read_text()
    assert "reloaded" in log and "keeping the running config" in log


def test_invalid_config_at_start_keeps_squid_working_as_a_plain_proxy(tmp_path):
    config = tmp_path / "repos.yaml"
    config.write_text("repos:\n  fedora:\n    mirrorlist: ftp://example.org/{foo}\n")
    with HelperProcess(config) as helper:
        reply = helper.ask("http://example.org/")
        assert reply.startswith("ERR message=") and "repos.yaml:3" in reply
        assert helper.close() == 0
        assert "repos.fedora.mirrorlist" in helper.stderr_text()


def test_a_reload_with_requests_in_flight_costs_no_answer(tmp_path, snapshots):
    """SIGHUP (squid -k reconfigure) while requests are being worked out, then the next line:
    every request in flight still gets its answer, from the old configuration or the new one.
    Six in flight with four workers: some are still queued when the reload happens."""
    with MirrorServer(snapshots["new"], delay=0.4) as one, \
            MirrorServer(snapshots["new"], delay=0.4) as two:
        config = write_config(tmp_path, {"test": {"mirrors": [one.url, two.url]}},
                              workers=4)
        with HelperProcess(config) as helper:
            # The helper answers, so its SIGHUP handler is in place (on a loaded machine the
            # interpreter may still be starting 0.2 s after the launch).
            assert helper.ask("http://example.org/", channel=False) == "ERR"
            # Not packages: each is probed before it is answered, so all are slow.
            names = [f"extra/file-{i}.txt" for i in range(6)]
            helper.send_raw("".join(f"{i} {PKG}{name} myport=3128\n"
                                    for i, name in enumerate(names, 1)).encode())
            time.sleep(0.2)
            helper.process.send_signal(signal.SIGHUP)
            time.sleep(0.2)
            helper.send_raw(b"7 http://example.org/ myport=3128\n")  # the reload happens now
            replies = {}
            for _ in range(7):
                channel, _, reply = helper.reply(30).partition(" ")
                replies[channel] = reply
    assert sorted(replies, key=int) == [str(i) for i in range(1, 8)]
    for channel, reply in replies.items():
        assert not reply.startswith("BH"), (channel, reply)
    assert replies["7"] == "ERR"
    for channel in map(str, range(1, 7)):
        assert "no mirror has" in replies[channel], replies[channel]
    assert "reloaded" in (tmp_path / "helper.log").read_text()
