"""What Squid tells of its fetches: the log daemon's line protocol, and what a line means (pure).

Squid runs one `logfile_daemon` per `access_log daemon:...` line and writes to its stdin, one
message a line, each starting with a command letter (Squid 5.7, src/log/ModDaemon.cc):

    L<log line>   a log line, in the logformat below
    R             rotate (squid -k rotate)
    T, O          truncate, reopen (log_file_daemon knows them; Squid 5.7 does not send them)
    F             flush (about once a second, and when a line ends with buffered_logs off)
    r<n>, b<0|1>  at start: logfile_rotate and buffered_logs

The daemon keeps no file, so only L lines mean something to it. squid.conf's logformat
(ops/squidconf.py's template) writes FIELDS, in this order, after the tag FORMAT_TAG.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

FORMAT_TAG = "SHF1"
# The logformat codes, in line order (Squid 5.7; checked with the real Squid): the squid.conf
# template's logformat line is FORMAT_TAG and these (tests/test_fetchlog.py compares them).
FIELDS = (
    ("at", "%ts.%03tu"),  # when the transaction ended (Unix seconds)
    ("elapsed_ms", "%tr"),  # the whole transaction
    ("server_ms", "%<tt"),  # time spent with the server (or "-")
    ("squid_status", "%Ss"),  # TCP_MISS, TCP_HIT, TCP_MISS_ABORTED ...
    ("client_status", "%>Hs"),  # the status the client got
    ("server_status", "%<Hs"),  # the status the server sent ("-": none, e.g. refused)
    ("sent_bytes", "%<st"),  # bytes sent to the client, headers included
    ("received_bytes", "%<bs"),  # body bytes received from the server ("-": none)
    ("content_length", "%{Content-Length}<h"),  # the reply's Content-Length ("-": none)
    ("hierarchy", "%Sh"),  # HIER_DIRECT, HIER_NONE (a hit), FIRSTUP_PARENT ...
    ("server_address", "%<a"),
    ("error", "%err_code"),  # ERR_CONNECT_FAIL, ERR_READ_TIMEOUT ... ("-": none)
    ("local_port", "%lp"),  # the port the client came in on (the accel port, or not)
    ("method", "%rm"),
    ("client_url", "%>ru"),  # the URL the client asked for
    ("fetched_url", "%<ru"),  # the URL Squid asked the server for (the mirror URL)
)
LOGFORMAT = " ".join([FORMAT_TAG, *(code for _, code in FIELDS)])

# Errors Squid reports when it could not talk to the server at all: the host is failing, as
# when a probe is refused or times out. ERR_READ_TIMEOUT also ends a transfer that stalled.
UNREACHABLE = frozenset({"ERR_CONNECT_FAIL", "ERR_DNS_FAIL", "ERR_SOCKET_FAILURE",
                         "ERR_SECURE_CONNECT_FAIL", "ERR_READ_TIMEOUT"})
# Errors that end a transfer the server started: the answer was cut short.
CUT_SHORT = frozenset({"ERR_READ_ERROR", "ERR_ZERO_SIZE_OBJECT", "ERR_WRITE_ERROR"})
# %Ss values of answers served from the cache (or revalidated there, with no body fetched).
_FROM_CACHE = ("HIT", "TCP_REFRESH_UNMODIFIED", "TCP_REFRESH_FAIL_OLD")


class BadLine(ValueError):
    """A log line that is not in our logformat."""


@dataclass(frozen=True)
class Fetch:
    """One transaction Squid logged."""

    at: float
    elapsed_ms: int
    server_ms: Optional[int]
    squid_status: str
    client_status: Optional[int]
    server_status: Optional[int]
    sent_bytes: int
    received_bytes: Optional[int]
    content_length: Optional[int]
    hierarchy: str
    server_address: Optional[str]
    error: Optional[str]
    local_port: Optional[int]
    method: str
    client_url: str
    fetched_url: Optional[str]

    @property
    def from_cache(self) -> bool:
        return any(mark in self.squid_status for mark in _FROM_CACHE)

    @property
    def direct(self) -> bool:
        """Squid went to the mirror itself (not to a peer or a parent, whose troubles are
        not the mirror's)."""
        return self.hierarchy.startswith("HIER_DIRECT") and self.fetched_url is not None

    @property
    def client_aborted(self) -> bool:
        return "_ABORTED" in self.squid_status


def _number(text: str, name: str) -> Optional[int]:
    if text == "-":
        return None
    if not text.isdigit():
        raise BadLine(f"{name} is not a number: {text[:40]!r}")
    return int(text)


def _word(text: str) -> Optional[str]:
    return None if text == "-" else text


def parse_line(line: str) -> Fetch:
    """A log line (without the L and the newline) as a Fetch; BadLine if it is not ours."""
    parts = line.split()
    if not parts or parts[0] != FORMAT_TAG:
        raise BadLine(f"not a {FORMAT_TAG} line (check the logformat in squid.conf)")
    if len(parts) != len(FIELDS) + 1:
        raise BadLine(f"{len(parts) - 1} fields, expected {len(FIELDS)}")
    values = dict(zip((name for name, _ in FIELDS), parts[1:]))
    try:
        at = float(values["at"])
    except ValueError:
        raise BadLine(f"time is not a number: {values['at'][:40]!r}") from None
    sent = _number(values["sent_bytes"], "sent_bytes")
    elapsed = _number(values["elapsed_ms"], "elapsed_ms")
    return Fetch(
        at=at, elapsed_ms=elapsed or 0,
        server_ms=_number(values["server_ms"], "server_ms"),
        squid_status=values["squid_status"],
        client_status=_number(values["client_status"], "client_status"),
        server_status=_number(values["server_status"], "server_status"),
        sent_bytes=sent or 0,
        received_bytes=_number(values["received_bytes"], "received_bytes"),
        content_length=_number(values["content_length"], "content_length"),
        hierarchy=values["hierarchy"], server_address=_word(values["server_address"]),
        error=_word(values["error"]), local_port=_number(values["local_port"], "local_port"),
        method=values["method"], client_url=values["client_url"],
        fetched_url=_word(values["fetched_url"]))


# -- what a fetch from a mirror means -----------------------------------------------------------
@dataclass(frozen=True)
class Failed:
    """The mirror failed this fetch. unreachable: Squid could not talk to it at all."""

    reason: str
    unreachable: bool = False


@dataclass(frozen=True)
class Missing:
    """The mirror answered 4xx: a failure only for a path the helpers had verified there."""

    status: int


@dataclass(frozen=True)
class Downloaded:
    """A complete 200 fetched from the mirror (Squid keeps it, if cacheable)."""

    received_bytes: int
    seconds: float  # with the server


@dataclass(frozen=True)
class Other:
    """Nothing to learn about the mirror (a hit, a fetch through a peer, a HEAD, a 304 ...)."""


Verdict = Union[Failed, Missing, Downloaded, Other]
OTHER = Other()


def judge(fetch: Fetch) -> Verdict:
    """What one logged transaction says about the mirror Squid fetched from."""
    if not fetch.direct or fetch.method != "GET" or fetch.from_cache:
        return OTHER
    status = fetch.server_status
    if status is None:
        if fetch.error in UNREACHABLE:
            return Failed(f"Squid's fetch failed: {fetch.error}", unreachable=True)
        if fetch.error in CUT_SHORT:
            return Failed(f"Squid's fetch failed: {fetch.error}")
        return OTHER  # e.g. the client went away before Squid reached the server
    if status >= 500:
        return Failed(f"Squid's GET got {status}")
    if status in (403, 404, 410):
        return Missing(status)
    if status != 200:
        return OTHER
    received = fetch.received_bytes or 0
    if fetch.content_length is not None and received < fetch.content_length:
        if fetch.client_aborted and fetch.error is None:
            # The client gave up and Squid stopped reading (quick_abort): not the mirror's
            # doing, as far as Squid can tell.
            return OTHER
        return Failed(f"Squid's GET was cut short: {received} of {fetch.content_length} "
                      "bytes")
    if fetch.error in CUT_SHORT or fetch.error in UNREACHABLE:
        return Failed(f"Squid's GET was cut short: {fetch.error} after {received} bytes")
    seconds = (fetch.server_ms if fetch.server_ms is not None else fetch.elapsed_ms) / 1000.0
    return Downloaded(received, seconds)


@dataclass(frozen=True)
class Message:
    """One message from Squid: a command letter and what follows it (without the newline)."""

    command: str
    text: str


def split_message(raw: bytes) -> Message:
    """A line from Squid's pipe as a Message (undecodable bytes replaced, never an error)."""
    line = raw.decode("utf-8", "replace").rstrip("\r\n")
    return Message(line[:1], line[1:])
