"""The fetch log's line parser and what a line means (pure); lines as Squid 5.7 wrote them."""

from __future__ import annotations

import re

import pytest

from squid_helper.ops.squidconf import template_text
from squid_helper.squid.fetchlog import (
    LOGFORMAT,
    OTHER,
    BadLine,
    Downloaded,
    Failed,
    Missing,
    judge,
    parse_line,
    split_message,
)

MIRROR = "http://127.0.0.1:39134/pub/9/x86_64/Packages/a.rpm"
CLIENT = "http://repoproxy/testrepo/9/x86_64/Packages/a.rpm"


def line(status="TCP_MISS", client=200, server="200", sent=5222, body="5000", length="5000",
         hierarchy="HIER_DIRECT", error="-", method="GET", server_ms="4") -> str:
    return (f"SHF1 1796328242.674 4 {server_ms} {status} {client} {server} {sent} {body} "
            f"{length} {hierarchy} 127.0.0.1 {error} 3128 {method} {CLIENT} {MIRROR}")


def test_the_template_logs_what_the_parser_reads():
    formats = re.findall(r"^logformat squid_helper_fetches (.*)$", template_text(), re.M)
    assert formats == [LOGFORMAT]


def test_a_complete_download():
    fetch = parse_line(line())
    assert (fetch.squid_status, fetch.server_status, fetch.received_bytes) == (
        "TCP_MISS", 200, 5000)
    assert fetch.fetched_url == MIRROR and fetch.client_url == CLIENT
    assert judge(fetch) == Downloaded(5000, 0.004)


@pytest.mark.parametrize("text, reason", [
    (line(client=500, server="500", body="3", length="3"), "Squid's GET got 500"),
    (line(client=503, server="-", body="-", length="3086", error="ERR_CONNECT_FAIL"),
     "Squid's fetch failed: ERR_CONNECT_FAIL"),
    (line(body="1000", length="100000"), "Squid's GET was cut short: 1000 of 100000 bytes"),
    (line(status="TCP_MISS_ABORTED", body="1000", length="100000", error="ERR_READ_ERROR"),
     "Squid's GET was cut short: 1000 of 100000 bytes"),
])
def test_failed_fetches(text, reason):
    verdict = judge(parse_line(text))
    assert isinstance(verdict, Failed) and verdict.reason == reason
    assert verdict.unreachable == ("CONNECT" in text)


def test_what_says_nothing_about_the_mirror():
    assert judge(parse_line(line(client=404, server="404"))) == Missing(404)
    assert judge(parse_line(line(status="TCP_HIT", server="-", body="-",
                                 hierarchy="HIER_NONE"))) is OTHER
    # A client that gave up: Squid stopped reading, the mirror did nothing wrong.
    assert judge(parse_line(line(status="TCP_MISS_ABORTED", body="1000",
                                 length="100000"))) is OTHER
    # Through a peer of the fleet, or a HEAD: not Squid's own fetch of the file.
    assert judge(parse_line(line(hierarchy="SIBLING_HIT"))) is OTHER
    assert judge(parse_line(line(method="HEAD", body="-"))) is OTHER
    assert judge(parse_line(line(client=304, server="304", body="-"))) is OTHER


@pytest.mark.parametrize("text", [
    "",
    "garbage",
    "SHF1",
    "SHF1 1 2 3",  # too few fields
    line() + " extra",  # too many
    line().replace("1796328242.674", "yesterday"),
    line(sent="many"),
    line(server="5xx"),
    line().replace("SHF1", "SHF0"),  # another format version
    "1796328242.674      4 127.0.0.1 TCP_MISS/200 5222 GET " + CLIENT,  # Squid's own format
    "SHF1 " + "\x00\x01 " * 16,
])
def test_lines_that_are_not_ours_are_refused_with_a_reason(text):
    with pytest.raises(BadLine) as refused:
        parse_line(text)
    assert str(refused.value)


def test_messages_from_squid():
    assert split_message(b"L" + line().encode() + b"\n").text == line()
    assert split_message(b"R\n").command == "R"
    assert split_message(b"r0\n") == split_message(b"r0")
    # Bytes that are not UTF-8 (a URL Squid did not escape) are no reason to fail.
    assert split_message(b"L\xff\xfe\n").command == "L"
