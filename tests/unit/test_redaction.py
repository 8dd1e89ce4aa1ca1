"""What a printed URL keeps and loses (pure: no server, no process)."""

from __future__ import annotations

import logging

import pytest

from squid_helper.logsetup import RedactingFormatter
from squid_helper.redaction import host_of, redacted, redacted_text
from squid_helper.squid.protocol import err

LIST = "https://user:pass@lists.example/metalink?repo=epel-9&arch=x86_64&token=S3CRET-TOKEN-123"


@pytest.mark.parametrize("url, printed", [
    (LIST, "https://user:***@lists.example/metalink?repo=***&arch=***&token=***"),
    ("redis://:pw@redis.lab:6380/2", "redis://:***@redis.lab:6380/2"),
    # A lone user name is the secret (a token used as the user).
    ("https://TOKEN@lists.example/list", "https://:***@lists.example/list"),
    # A parameter without '=' may be a key itself.
    ("http://lists.example/list?S3CRET&a=1#frag", "http://lists.example/list?***&a=***"),
    ("http://mirror.example/pub/9/x86_64/", "http://mirror.example/pub/9/x86_64/"),
    ("http://[::1/broken", "***"),
])
def test_a_printed_url_keeps_what_tells_it_apart_and_no_secret(url, printed):
    assert redacted(url) == printed


def test_every_url_in_a_message_is_redacted_and_the_sentence_kept():
    text = (f"no mirror list is available for epel/9/x86_64 (metalink {LIST}: GET 500); "
            "see http://repoproxy/epel/9/x86_64/repodata/repomd.xml.")
    assert redacted_text(text) == (
        "no mirror list is available for epel/9/x86_64 (metalink https://user:***@lists.example"
        "/metalink?repo=***&arch=***&token=***: GET 500); see "
        "http://repoproxy/epel/9/x86_64/repodata/repomd.xml.")
    assert redacted_text("connection failed (refused)") == "connection failed (refused)"


def test_hosts_are_named_without_credentials():
    assert host_of(LIST) == "lists.example"
    assert host_of("http://u:p@[::1]:8080/x") == "[::1]:8080"


def test_the_reason_squid_shows_and_log_lines_carry_no_secret():
    reply = err(f"metalink {LIST}: GET 500").format("7")
    assert "S3CRET" not in reply and "pass" not in reply and "epel-9" not in reply
    assert "lists.example/metalink?repo=***" in reply, reply
    record = logging.LogRecord("squid_helper.mirrorlists", logging.WARNING, __file__, 1,
                               "%s %s unusable: %s", ("metalink", LIST, "GET 500"), None)
    line = RedactingFormatter("%(message)s").format(record)
    assert line == ("metalink https://user:***@lists.example/metalink?repo=***&arch=***"
                    "&token=*** unusable: GET 500")
