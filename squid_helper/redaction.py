"""URLs fit to print: what logs, Squid's error pages, `status` and error messages may show of a
URL. Pure text, imported by every layer (nothing of squid-helper's is imported here).

A mirror list's or metalink's URL can carry a secret in two places: the credentials of a
private mirror list (https://user:password@host/...), and its query (a token, a key:
...?repo=epel-9&token=...). A memo URL carries Redis' password. So a URL is printed with its
password, and the values of its query, replaced by ***; the user name, the host, the path and
the names of the query's parameters stay, so that an operator still sees what was asked.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

HIDDEN = "***"
# A URL inside a message: a scheme, '://', then up to the first space or quote; a trailing
# full stop, comma, colon, semicolon or bracket ends the sentence, not the URL.
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*[^\s'\"<>.,;:)\]]")


def _hidden_query(query: str) -> str:
    """Each parameter's value replaced by ***; a parameter without a value (which may be a
    key itself) replaced whole."""
    return "&".join(f"{name}={HIDDEN}" if sep else HIDDEN
                    for name, sep, _ in (part.partition("=") for part in query.split("&")))


def redacted(url: str) -> str:
    """url fit to print: the password (or a lone user name, which is then the secret) replaced
    by ***, the query's values by ***, no fragment."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed [ in the host: nothing can be told apart
        return HIDDEN
    netloc = parts.netloc
    if "@" in netloc:
        credentials, _, place = netloc.rpartition("@")
        user = credentials.partition(":")[0] if ":" in credentials else ""
        netloc = f"{user}:{HIDDEN}@{place}"
    query = _hidden_query(parts.query) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redacted_text(text: str) -> str:
    """text with every URL in it redacted (a log line, a reason, a trace)."""
    if "://" not in text:  # the common case, at the cost of one scan
        return text
    return _URL_IN_TEXT.sub(lambda match: redacted(match.group()), text)


def host_of(url: str) -> str:
    """HOST[:PORT] of url, without credentials: how a host is named and keyed."""
    return urlsplit(url).netloc.rpartition("@")[2]
