"""Unit tests for squid_helper.squid.protocol: Squid's helper line protocol (pure logic)."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from squid_helper.squid.protocol import (
    MAX_LINE_BYTES,
    MAX_MESSAGE_CHARS,
    HelperRequest,
    Reply,
    asks_for_fresh,
    bh,
    client_safe,
    err,
    format_reply,
    ok,
    parse_request,
    reuse_key,
    split_channel,
)

URL = "http://repoproxy/fedora/40/x86_64/Packages/b/bash-5.2.rpm"
DEFAULT_EXTRAS = "10.0.0.5/- - GET myip=10.0.0.1 myport=3128"


def unquote_reply_value(quoted: str) -> str:
    """Read back one double-quoted value the way Squid does (backslash escapes)."""
    assert quoted.startswith('"') and quoted.endswith('"'), quoted
    body, out, index = quoted[1:-1], [], 0
    while index < len(body):
        ch = body[index]
        if ch == "\\":
            index += 1
            out.append(body[index])
        else:
            assert ch != '"', f"unescaped quote in {quoted!r}"
            out.append(ch)
        index += 1
    return "".join(out)


# --- split_channel -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, channel, rest",
    [
        ("0 " + URL, "0", URL),
        ("17 " + URL + " a b", "17", URL + " a b"),
        ("4294967295 " + URL, "4294967295", URL),
        (URL, None, URL),
        (URL + " myport=5000", None, URL + " myport=5000"),
        ("  3 " + URL, "3", URL),
        ("   " + URL, None, URL),
        ("5", "5", ""),
        ("", None, ""),
    ],
)
def test_split_channel(line, channel, rest):
    assert split_channel(line) == (channel, rest)


def test_split_channel_refuses_more_than_ten_digits():
    channel, rest = split_channel("12345678901 " + URL)
    assert channel is None
    assert rest == "12345678901 " + URL


@pytest.mark.parametrize("head", ["\u0661\u0662", "\u00b2", "1a", "-1", "+1", "1.0", "0x1"])
def test_split_channel_only_takes_ascii_digits(head):
    assert split_channel(f"{head} {URL}") == (None, f"{head} {URL}")


def test_split_channel_does_not_take_a_url_for_a_channel():
    # A URL never consists of digits alone, so it is never mistaken for a channel-ID.
    assert split_channel("http://1234/x")[0] is None


# --- parse_request -------------------------------------------------------------------------


def test_parse_request_with_channel_and_default_extras():
    channel, request, problem = parse_request(f"7 {URL} {DEFAULT_EXTRAS}")
    assert problem is None
    assert channel == "7"
    assert isinstance(request, HelperRequest)
    assert request.channel == "7"
    assert request.url == URL
    assert request.fields == ("10.0.0.5/-", "-", "GET", "myip=10.0.0.1", "myport=3128")
    assert request.extras == {"myip": "10.0.0.1", "myport": "3128"}


def test_parse_request_without_channel():
    channel, request, problem = parse_request(URL)
    assert (channel, problem) == (None, None)
    assert request.channel is None
    assert request.url == URL
    assert request.fields == ()
    assert request.extras == {}


def test_parse_request_url_decodes_extra_values_only():
    line = f"1 {URL} user=j%20doe note=a%3Db%25 myport=5000"
    _, request, _ = parse_request(line)
    assert request.extras == {"user": "j doe", "note": "a=b%", "myport": "5000"}
    # fields stay raw, exactly as Squid sent them
    assert request.fields == ("user=j%20doe", "note=a%3Db%25", "myport=5000")


def test_parse_request_splits_extras_at_the_first_equals_sign():
    _, request, _ = parse_request(f"{URL} k=v=w")
    assert request.extras == {"k": "v=w"}


def test_parse_request_ignores_tokens_without_a_key():
    _, request, _ = parse_request(f"{URL} =value - plain k=")
    assert request.extras == {"k": ""}
    assert request.fields == ("=value", "-", "plain", "k=")


def test_parse_request_later_duplicate_extra_wins():
    _, request, _ = parse_request(f"{URL} myport=3128 myport=5000")
    assert request.extras["myport"] == "5000"


def test_parse_request_does_not_decode_the_url():
    encoded = "http://repoproxy/fedora/40/x86_64/Packages/a%2Bb.rpm"
    _, request, _ = parse_request(f"2 {encoded}")
    assert request.url == encoded


def test_parse_request_collapses_runs_of_spaces():
    _, request, _ = parse_request(f"3   {URL}    GET   myport=5000  ")
    assert request.url == URL
    assert request.fields == ("GET", "myport=5000")


def test_parse_request_connect_authority_form():
    channel, request, problem = parse_request("9 example.com:443 10.0.0.5/- - CONNECT")
    assert (channel, problem) == ("9", None)
    assert request.url == "example.com:443"
    assert request.fields[-1] == "CONNECT"


@pytest.mark.parametrize("line", ["", "   ", "\t"])
def test_parse_request_empty_line_has_a_problem_and_no_channel(line):
    channel, request, problem = parse_request(line)
    assert channel is None
    assert request is None
    assert problem == "empty request line"


@pytest.mark.parametrize("line", ["42", "42 ", "42    "])
def test_parse_request_channel_without_url_keeps_the_channel(line):
    channel, request, problem = parse_request(line)
    assert channel == "42"
    assert request is None
    assert problem and "empty" in problem


def test_max_line_bytes_is_squids_buffer_size():
    assert MAX_LINE_BYTES == 32 * 1024


# --- replies -------------------------------------------------------------------------------


def test_ok_maps_underscores_to_dashes_in_keys():
    reply = ok(rewrite_url="http://mirror/x")
    assert reply == Reply("OK", (("rewrite-url", "http://mirror/x"),))
    assert ok(store_id="k").pairs == (("store-id", "k"),)


def test_ok_keeps_keyword_order():
    reply = ok(status="302", url="http://m/x")
    assert [k for k, _ in reply.pairs] == ["status", "url"]


def test_ok_without_pairs():
    assert ok() == Reply("OK", ())
    assert ok().format(None) == "OK"


def test_err_with_and_without_message():
    assert err() == Reply("ERR", ())
    assert err("") == Reply("ERR", ())
    assert err("why") == Reply("ERR", (("message", "why"),))


def test_bh_always_carries_a_message():
    assert bh("broken") == Reply("BH", (("message", "broken"),))


def test_format_reply_without_channel():
    assert format_reply(None, "ERR") == "ERR"


def test_format_reply_with_channel():
    assert format_reply("12", "ERR") == "12 ERR"
    assert format_reply("0", "OK") == "0 OK"


def test_format_reply_quotes_values():
    line = format_reply("3", "OK", (("rewrite-url", "http://mirror/a/b.rpm"),))
    assert line == '3 OK rewrite-url="http://mirror/a/b.rpm"'


def test_format_reply_several_pairs_in_order():
    line = format_reply(None, "OK", (("status", "302"), ("url", "http://m/")))
    assert line == 'OK status="302" url="http://m/"'


def test_reply_format_uses_the_channel():
    assert ok(rewrite_url="http://m/x").format("5") == '5 OK rewrite-url="http://m/x"'
    assert err("no").format(None) == 'ERR message="no"'
    assert bh("dead").format("1") == '1 BH message="dead"'


def test_quoting_escapes_quotes_and_backslashes():
    line = format_reply(None, "ERR", (("message", 'say "hi" \\ bye'),))
    assert line == 'ERR message="say \\"hi\\" \\\\ bye"'
    assert unquote_reply_value(line.split("=", 1)[1]) == 'say "hi" \\ bye'


@pytest.mark.parametrize("bad", ["\r", "\n", "\r\n", "\x00", "\t", "\x1b", "\x7f"])
def test_quoting_replaces_control_characters(bad):
    line = format_reply("1", "ERR", (("message", f"a{bad}b"),))
    assert line == '1 ERR message="a' + " " * len(bad) + 'b"'
    assert "\n" not in line and "\r" not in line


def test_quoting_keeps_non_ascii_text():
    line = format_reply(None, "ERR", (("message", "caf\u00e9 \u2192"),))
    assert line == 'ERR message="caf\u00e9 \u2192"'


def test_quoting_empty_value():
    assert format_reply(None, "OK", (("store-id", ""),)) == 'OK store-id=""'


@given(st.text(min_size=1), st.one_of(st.none(), st.integers(0, 10**9).map(str)))
def test_any_message_stays_one_line_and_round_trips(message, channel):
    line = err(message).format(channel)
    assert "\n" not in line and "\r" not in line
    assert line.startswith(f"{channel} ERR " if channel is not None else "ERR ")
    value = line.split("message=", 1)[1]
    assert unquote_reply_value(value) == client_safe(message)


@given(st.text(min_size=1))
def test_messages_for_clients_hold_no_markup_no_line_ends_and_stay_short(message):
    safe = client_safe(message)
    assert not set(safe) & set("<>&\"\\\r\n\x00")
    assert all(" " <= c < "\x7f" for c in safe)
    assert len(safe) <= MAX_MESSAGE_CHARS * 9  # at worst every kept character encoded
    if len(message) <= MAX_MESSAGE_CHARS and "%" not in message:
        assert unquote(safe) == message  # nothing lost, only encoded


def test_a_clients_markup_in_a_message_is_encoded():
    assert client_safe('no mirror has Packages/<b onclick="x">&é') == (
        "no mirror has Packages/%3Cb onclick=%22x%22%3E%26%C3%A9")
    assert client_safe("unknown repo 'x'") == "unknown repo 'x'"
    assert client_safe("x" * 1000).endswith("...")


@given(st.integers(0, 9999999999), st.sampled_from([URL, "example.com:443", "http://x/y?q=1"]))
def test_channel_round_trip(number, url):
    channel, request, problem = parse_request(f"{number} {url} {DEFAULT_EXTRAS}")
    assert problem is None
    assert channel == str(number)
    assert request.url == url
    assert format_reply(channel, "ERR").split(" ")[0] == str(number)


# --- reuse_key: what a reusable answer depends on -----------------------------------------


@pytest.mark.parametrize("rest, key", [
    (b"http://repoproxy/a/1/x/p.rpm myport=3128", b"http://repoproxy/a/1/x/p.rpm myport=3128"),
    (b"http://r/a/1/x/p.rpm 10.1.2.3/- - GET myip=10.0.0.1 myport=3128",
     b"http://r/a/1/x/p.rpm myip=10.0.0.1 myport=3128"),
    (b"http://r/a/1/x/p.rpm myport=3128 cache-control=no-cache pragma=no-cache",
     b"http://r/a/1/x/p.rpm myport=3128 cache-control=no-cache pragma=no-cache"),
    (b"http://r/a/1/x/p.rpm", b"http://r/a/1/x/p.rpm"),
    (b"http://r/a/1/x/p.rpm 10.1.2.3/- user%3Dx GET", b"http://r/a/1/x/p.rpm"),
])
def test_reuse_key_is_the_url_and_the_key_value_extras(rest, key):
    assert reuse_key(rest) == key


def test_reuse_key_is_shared_by_every_client():
    keys = {reuse_key(f"http://r/a/1/x/p.rpm 10.0.{i}.1/- user{i} GET myip=10.9.9.9 "
                      f"myport=3128".encode()) for i in range(50)}
    assert len(keys) == 1
    assert reuse_key(b"http://r/a/1/x/p.rpm 10.0.0.1/- - GET myip=10.9.9.9 myport=5000"
                     ) not in keys


def test_a_request_for_fresh_metadata_never_shares_a_plain_requests_entry():
    plain = reuse_key(b"http://r/a/1/x/repodata/repomd.xml myport=3128 cache-control=- "
                      b"pragma=-")
    fresh = reuse_key(b"http://r/a/1/x/repodata/repomd.xml myport=3128 cache-control=no-cache "
                      b"pragma=no-cache")
    assert plain != fresh


@pytest.mark.parametrize("extras, fresh", [
    ({"cache-control": "no-cache", "pragma": "no-cache"}, True),
    ({"cache-control": "max-age=0"}, True),
    ({"cache-control": "no-store, No-Cache"}, True),
    ({"pragma": "no-cache"}, True),
    ({"cache-control": "-", "pragma": "-"}, False),
    ({"cache-control": "max-age=300"}, False),
    ({}, False),
])
def test_asks_for_fresh(extras, fresh):
    assert asks_for_fresh(extras) is fresh
