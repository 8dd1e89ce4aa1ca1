"""The shared HTTP client against real servers on 127.0.0.1: Squid's counters request goes out
as Squid's cache manager needs it, within one time limit, and every client words its failures
the same way."""

from __future__ import annotations

import socket
import threading
import time
from typing import List

import pytest
import requests

from lab.mirrors import DRIP, HANG, MirrorServer, free_port
from squid_helper.httpclient import USER_AGENT, new_session
from squid_helper.ops.purge import purge_from_squid
from squid_helper.ops.squidstats import SquidUnreachable, fetch_counters

COUNTERS = (b"sample_time = 1764790000.1 (Thu, 03 Dec 2026 20:00:00 GMT)\n"
            b"client_http.requests = 12\nclient_http.hits = 5\nclient_http.errors = 1\n"
            b"client_http.kbytes_out = 40\nclient_http.hit_kbytes_out = 8\n")


class OneAnswer:
    """A server on 127.0.0.1 that reads one request head, answers with given bytes, closes."""

    def __init__(self, answer: bytes):
        self.answer = answer
        self.request: List[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            client, _ = self.sock.accept()
        except OSError:  # closed, or nobody came
            return
        with client:
            client.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head:
                data = client.recv(4096)
                if not data:
                    break
                head += data
            self.request.append(head)
            client.sendall(self.answer)

    def __enter__(self) -> OneAnswer:
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()
        self.thread.join(timeout=15)


def test_the_counters_request_goes_out_as_the_cache_manager_needs_it():
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(COUNTERS), COUNTERS)
    with OneAnswer(answer) as squid:
        counters = fetch_counters(f"127.0.0.1:{squid.port}", timeout=5)
    lines = squid.request[0].decode("latin-1").split("\r\n")
    # requests and urllib3's pools would rewrite this target: it is no http:// URL.
    assert lines[0] == "GET cache_object://127.0.0.1/counters HTTP/1.1", lines
    assert "User-Agent: squid-helper" in lines, lines
    assert (counters.requests, counters.hits, counters.bytes_sent) == (12, 5, 40 * 1024)


def test_a_squid_that_drips_its_counters_is_cut_off_at_the_time_limit():
    with MirrorServer(behaviour=DRIP) as server:
        started = time.monotonic()
        with pytest.raises(SquidUnreachable) as raised:
            fetch_counters(f"127.0.0.1:{server.port}", timeout=1.0)
        took = time.monotonic() - started
    assert str(raised.value).startswith(f"Squid at 127.0.0.1:{server.port}: timeout after 1."), \
        raised.value
    assert took < 1.5, took


def test_what_is_no_http_server_is_named_so():
    with OneAnswer(b"SSH-2.0-OpenSSH_9.2\r\n") as other, pytest.raises(SquidUnreachable) as raised:
        fetch_counters(f"127.0.0.1:{other.port}", timeout=5)
    assert str(raised.value).startswith(f"Squid at 127.0.0.1:{other.port}: no HTTP answer "
                                        "(BadStatusLine)"), raised.value


def test_purge_words_an_unreachable_proxy_as_every_client_does():
    port = free_port()
    result = purge_from_squid("http://repoproxy/t/9/x86_64/repodata/repomd.xml",
                              f"127.0.0.1:{port}", timeout=5)
    assert not result.ok
    assert result.message == f"proxy 127.0.0.1:{port}: connection failed (refused)", result


def test_a_session_never_waits_without_a_limit():
    """requests waits forever for a request that names no timeout; ours do not."""
    with MirrorServer(behaviour=HANG) as server, new_session(0.5) as session:
        started = time.monotonic()
        with pytest.raises(requests.Timeout):
            session.get(server.url + "repodata/repomd.xml")
        took = time.monotonic() - started
        assert [h["User-Agent"] for _, _, h in server.requests] == [USER_AGENT]
    assert took < 1.5, took
