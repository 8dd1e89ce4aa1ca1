"""Retry-After, read by urllib3's own parser (pure: no server)."""

from __future__ import annotations

import email.utils
import time

import pytest

from squid_helper.httpclient import retry_after


@pytest.mark.parametrize("value, seconds", [
    ("120", 120.0), (" 7 ", 7.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date gone by
    ("soon", None), ("", None), (None, None), ("-5", None),
])
def test_retry_after(value, seconds):
    assert retry_after(value) == seconds


def test_retry_after_a_date_to_come():
    wait = retry_after(email.utils.formatdate(time.time() + 90, usegmt=True))
    assert wait is not None and 85 <= wait <= 90, wait
