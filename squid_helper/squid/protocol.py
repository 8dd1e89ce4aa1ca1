"""Squid's helper line protocol: parse one request line, format one reply line.

Pure functions only. Squid sends `[channel-ID SP] URL [SP extras...]`; with `concurrency=N>0`
every line starts with a numeric channel-ID that the reply must echo. A URL never consists of
digits alone, so a leading all-digit token is taken as the channel-ID.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple
from urllib.parse import unquote

from ..redaction import redacted_text

# Squid's own request line buffer is 32 KiB; a longer line is not from Squid.
MAX_LINE_BYTES = 32 * 1024
MAX_CHANNEL_DIGITS = 10


@dataclass(frozen=True)
class HelperRequest:
    channel: Optional[str]
    url: str
    extras: Dict[str, str] = field(default_factory=dict)  # key=value extras, URL-decoded
    fields: Tuple[str, ...] = ()  # every token after the URL, raw


@dataclass(frozen=True)
class Reply:
    result: str  # "OK", "ERR" or "BH"
    pairs: Tuple[Tuple[str, str], ...] = ()
    # For how many seconds may the helper loop give this reply again to a request for the same
    # URL (and myport) without asking the handler (while the handler's reuse_token() stays the
    # same)? Zero: never. Only for answers that depend on nothing but the URL and myport.
    reuse_for: float = 0.0

    def reusable_for(self, seconds: float) -> Reply:
        return Reply(self.result, self.pairs, max(0.0, seconds))

    def format(self, channel: Optional[str]) -> str:
        return format_reply(channel, self.result, self.pairs)


def _squid_keys(pairs: Dict[str, str]) -> Tuple[Tuple[str, str], ...]:
    # Keyword names use '_' where Squid's keys use '-' (rewrite_url= for rewrite-url=).
    return tuple((k.replace("_", "-"), v) for k, v in pairs.items())


def ok(**pairs: str) -> Reply:
    """OK with kv-pairs, e.g. ok(rewrite_url=...)."""
    return Reply("OK", _squid_keys(pairs))


def err(message: Optional[str] = None, **pairs: str) -> Reply:
    """ERR (leave the URL alone), with an optional message= and other kv-pairs (notes).
    squid.conf shows the message to the client (a response header and the error page), so it
    is made client-safe here: see client_safe()."""
    head = (("message", client_safe(message)),) if message else ()
    return Reply("ERR", head + _squid_keys(pairs))


# What a message shown to clients may contain as it is: it goes raw into an HTTP header and
# into the text of an HTML error page (Squid has no HTML quoting for notes; the page never puts
# it in an attribute, so an apostrophe is harmless), and it can quote a client's own URL.
_UNSAFE_FOR_CLIENTS = re.compile(r"[^A-Za-z0-9 !#$%'()*+,\-./:;=?@\[\]^_`{|}~]")
MAX_MESSAGE_CHARS = 400


def client_safe(message: str) -> str:
    """message with its URLs redacted (no mirror list's password or query: redaction.py), and
    every character that HTML text or a header could read as markup or a line end (< > & "
    \\, controls, non-ASCII) percent-encoded, cut to MAX_MESSAGE_CHARS."""
    message = redacted_text(message)
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS - 3] + "..."
    return _UNSAFE_FOR_CLIENTS.sub(
        lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8")), message)


def bh(message: str) -> Reply:
    return Reply("BH", (("message", redacted_text(message)),))


def split_channel(line: str) -> Tuple[Optional[str], str]:
    """Split a leading channel-ID from the rest of the line (no ID: None)."""
    stripped = line.lstrip(" ")
    head, _, rest = stripped.partition(" ")
    if head.isdigit() and head.isascii() and len(head) <= MAX_CHANNEL_DIGITS:
        return head, rest
    return None, stripped


def parse_request(line: str) -> Tuple[Optional[str], Optional[HelperRequest], Optional[str]]:
    """Parse one line (without its newline).

    Returns (channel, request, problem): request is None when the line is unusable, and problem
    then says why. The channel is returned either way so that the reply can carry it.
    """
    channel, rest = split_channel(line)
    # Squid separates fields with spaces; any other whitespace (a bare CR, a tab) stays inside
    # its field, where the URL checks refuse it, instead of silently cutting the URL short.
    tokens = [token for token in rest.split(" ") if token.strip()]
    if not tokens:
        return channel, None, "empty request line"
    url, fields = tokens[0], tuple(tokens[1:])
    extras: Dict[str, str] = {}
    for token in fields:
        key, sep, value = token.partition("=")
        if sep and key:
            extras[key] = unquote(value)
    return channel, HelperRequest(channel, url, extras, fields), None


# url_rewrite_extras fields (squid.conf) that carry the client's cache directives.
CACHE_CONTROL_EXTRA, PRAGMA_EXTRA = "cache-control", "pragma"


def asks_for_fresh(extras: Mapping[str, str]) -> bool:
    """Whether the client forbids a cached answer (Cache-Control: no-cache or max-age=0,
    Pragma: no-cache), as dnf does for every repomd.xml it fetches. Squid sends '-' for a
    header the request lacks."""
    directives = {d.strip().lower() for d in extras.get(CACHE_CONTROL_EXTRA, "").split(",")}
    pragma = {d.strip().lower() for d in extras.get(PRAGMA_EXTRA, "").split(",")}
    return bool({"no-cache", "max-age=0"} & directives) or "no-cache" in pragma


def cache_only(extras: Mapping[str, str]) -> bool:
    """Whether the client forbids a fetch (Cache-Control: only-if-cached), as a sibling proxy
    does: Squid answers it from its cache or with a 504, never from the origin."""
    directives = {d.strip().lower() for d in extras.get(CACHE_CONTROL_EXTRA, "").split(",")}
    return "only-if-cached" in directives


def reuse_key(rest: bytes) -> bytes:
    """What a reusable answer depends on, taken from a request line after its channel-ID: the
    URL and the key=value extras (myport=, the client's cache-control= ...). The positional
    extras before them (client address, user name and method, in Squid's default format) vary
    from client to client but change no answer, so every client asking for one URL the same
    way shares one reply cache entry."""
    url, _, extras = rest.partition(b" ")
    equals = extras.find(b"=")
    if equals < 0:
        return url
    return url + b" " + extras[extras.rfind(b" ", 0, equals) + 1:]


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def _quote_value(value: str) -> str:
    # Squid accepts a double-quoted value with backslash escapes; CR/LF must never reach the
    # stream, since they would end the reply line early and desynchronise every later reply.
    cleaned = _CONTROL_CHARS.sub(" ", value)
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_reply(channel: Optional[str], result: str,
                 pairs: Tuple[Tuple[str, str], ...] = ()) -> str:
    """One reply line, without the trailing newline."""
    parts = [channel] if channel is not None else []
    parts.append(result)
    parts.extend(f"{key}={_quote_value(value)}" for key, value in pairs)
    return " ".join(parts)
