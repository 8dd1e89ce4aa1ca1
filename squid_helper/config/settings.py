"""Load and validate repos.yaml.

Every problem is reported as a ConfigError naming the file, the line and the key, and saying what
would be accepted, because the people who edit this file read Squid's cache.log, not tracebacks.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import ssl
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Optional, Tuple
from urllib.parse import SplitResult, urlsplit

import yaml

from ..redaction import redacted

SOURCE_KINDS = ("mirrorlist", "metalink", "mirrors")
# The original repoproxy's names: its documentation spelled the mirrorlist key 'mirrorurl', and
# its repos.yaml took 'baseurl: URL' for a repo without a mirrorlist. Old configs keep working.
SOURCE_ALIASES = {"mirrorurl": "mirrorlist", "baseurl": "mirrors"}
PLACEHOLDERS = ("{releasever}", "{arch}")
DEFAULT_LOG_FILE = "/var/log/repoproxy.log"
# A fleet (peers:): the HTTP port a peer is assumed to take when its entry names none, and the
# HTCP port every proxy of the fleet listens on (Squid's registered default).
DEFAULT_PEER_PORT = 3128
DEFAULT_HTCP_PORT = 4827
MEMO_SCHEMES = ("redis", "rediss")

_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(:[0-9]{1,5})?$")
_REPO_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# A releasever or arch as it may appear in a client's URL (and so in a mirror URL and a memo
# key): letters, digits and a few separators, nothing that could act as a placeholder or path.
URL_VALUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
# A repo's keys besides its source: the only releasevers / arches it serves.
RESTRICTION_KEYS = {"releasevers": "{releasever}", "arches": "{arch}"}


class ConfigError(Exception):
    """A problem in repos.yaml, worded for the person who edits it."""


@dataclass(frozen=True)
class Repo:
    name: str
    kind: str  # one of SOURCE_KINDS
    templates: Tuple[str, ...]  # one URL for mirrorlist/metalink, base URLs for mirrors
    # The only releasevers / arches the repo serves (releasevers:, arches: in repos.yaml);
    # empty: any the client names.
    releasevers: Tuple[str, ...] = ()
    arches: Tuple[str, ...] = ()


# Numeric settings: key -> (default, minimum, what it means). One table drives parsing, the
# `check` output and the README, so they cannot drift apart.
NUMERIC_SETTINGS: Dict[str, Tuple[float, float, str]] = {
    "probe_timeout": (5.0, 0.1, "seconds to wait for one mirror probe or mirrorlist fetch"),
    "path_ttl": (3600.0, 1.0, "seconds a verified path -> mirror answer is reused"),
    "metadata_ttl": (300.0, 1.0, "seconds a repodata/repomd.xml answer and the freshness "
                     "survey of the mirrors are reused"),
    "mirrorlist_ttl": (21600.0, 1.0, "seconds a fetched mirrorlist/metalink is reused"),
    "refresh_interval": (30.0, 1.0, "seconds between two freshness checks of one repo forced "
                         "by clients asking for repomd.xml with no-cache (dnf always does)"),
    "negative_ttl": (60.0, 0.0, "seconds a 'no mirror has this path' answer is reused"),
    "unhealthy_ttl": (120.0, 1.0, "seconds a mirror that timed out, refused or sent 5xx is "
                      "skipped"),
    "last_known_ttl": (2592000.0, 60.0, "seconds a last-known answer is kept for when no mirror "
                       "can be verified"),
    "hedge_delay": (0.5, 0.0, "seconds before the next mirror is probed in parallel with a "
                    "slow one"),
    "survey_window": (0.1, 0.0, "seconds a freshness survey without a metalink hash waits "
                      "for more mirrors after the first answer"),
    "survey_limit": (8, 1, "how many mirrors (in preference order) are checked for fresh "
                     "repodata"),
    "max_probes_per_second": (50, 1, "probes one mirror host may receive per second from all "
                              "helper processes together; past that, paths are answered "
                              "unprobed"),
    "memo_size_mb": (1024, 1, "megabytes the memo may take on disk; the least recently "
                     "stored entries go first"),
    "workers": (4, 1, "threads answering new paths in one helper process (those that wait "
                "for a survey or a probe)"),
}


@dataclass(frozen=True)
class Config:
    path: str
    virtual_hosts: FrozenSet[str]
    accel_ports: FrozenSet[int]
    cache_dir: str
    log_file: Optional[str]
    repos: Dict[str, Repo]
    settings: Dict[str, float] = field(default_factory=dict)
    # The PEM bundle of the CAs trusted for https:// mirrors and sources (an absolute path),
    # instead of the system's; None: the system's store (see probe.system_ca_file).
    ca_file: Optional[str] = None
    # "http://host:port": the proxy every probe, source fetch and Squid fetch goes through.
    upstream_proxy: Optional[str] = None
    # A fleet: the other proxies as (host, HTTP port), Squid's HTCP siblings (serve renders
    # them into squid.conf); the HTCP port every proxy of the fleet listens on; the shared
    # memo's Redis URL (None: the memo lives in cache_dir alone).
    peers: Tuple[Tuple[str, int], ...] = ()
    htcp_port: int = DEFAULT_HTCP_PORT
    memo: Optional[str] = None
    # Squid's collapsed_forwarding: "auto" (on where Squid is 6.0.1 or later, see
    # serve.collapsed_forwarding_for), "on" or "off".
    collapsed_forwarding: str = "auto"
    # Squid's forward proxy as the helpers reach it (host, port): the integrity checker reads
    # Squid's copies through it (serve sets its own; a hand-written squid.conf: 3128 here).
    squid_proxy: Tuple[str, int] = ("127.0.0.1", DEFAULT_PEER_PORT)

    def __getattr__(self, name: str) -> float:
        # Numeric settings read as attributes (config.probe_timeout) without a field each.
        settings = self.__dict__.get("settings", {})
        if name in settings:
            return settings[name]
        raise AttributeError(name)


def _line_index(text: str, duplicates: Optional[list] = None) -> Dict[Tuple[str, ...], int]:
    """Map each key path (('repos', 'fedora', 'mirrorlist')) to its 1-based line in the file.

    A key repeated in one mapping is appended to `duplicates` as (key path, line of the repeat).
    """
    lines: Dict[Tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines

    def walk(node: Any, prefix: Tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, value_node in node.value:
                key = (*prefix, str(key_node.value))
                if key in seen and duplicates is not None:
                    duplicates.append((key, key_node.start_mark.line + 1))
                seen.add(key)
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                key = (*prefix, str(index))
                lines[key] = item.start_mark.line + 1
                walk(item, key)

    if root is not None:
        walk(root, ())
    return lines


class _Reporter:
    def __init__(self, path: str, lines: Dict[Tuple[str, ...], int]):
        self.path = path
        self.lines = lines

    def where(self, keys: Tuple[str, ...]) -> str:
        """file:line of the deepest of keys the file names (the file alone if none)."""
        for depth in range(len(keys), 0, -1):
            line = self.lines.get(keys[:depth])
            if line is not None:
                return f"{self.path}:{line}"
        return self.path

    def error(self, keys: Tuple[str, ...], message: str) -> ConfigError:
        dotted = ".".join(keys) if keys else "(top level)"
        return ConfigError(f"{self.where(keys)}: {dotted}: {message}")


def validate_template(url: str, credentials: bool = False) -> Optional[str]:
    """Return why a mirror/mirrorlist URL template is unusable, or None when it is fine.
    credentials: whether user:password@ may be in it (a mirror list's or metalink's, which only
    the helpers fetch; never a mirror's, which Squid would be sent to and log)."""
    if not isinstance(url, str) or not url:
        return "must be a non-empty URL string such as 'https://mirrors.example.org/pub/'"
    if any(ch in url for ch in "\r\n\t \x00\\"):
        return "must not contain whitespace, backslashes or control characters"
    dollar = re.search(r"\$\{?(releasever|basearch|arch)\b", url)
    if dollar:
        # A URL copied from a yum .repo file: its variables are not substituted here.
        return (f"uses yum's ${dollar.group(1)}; write {{releasever}} for $releasever and "
                "{arch} for $basearch/$arch (the values come from the client's URL)")
    leftover = url
    for placeholder in PLACEHOLDERS:
        leftover = leftover.replace(placeholder, "")
    if "{" in leftover or "}" in leftover:
        return ("uses an unknown placeholder; only {releasever} and {arch} are substituted "
                "(write a literal brace as %7B / %7D)")
    parts = urlsplit(url.replace("{releasever}", "1").replace("{arch}", "x"))
    if parts.scheme not in ("http", "https"):
        return f"must start with http:// or https:// (got scheme {parts.scheme!r})"
    if not parts.hostname:
        return "has no host name"
    if (parts.username or parts.password) and not credentials:
        return "must not carry a user name or password"
    if "{" in urlsplit(url).netloc:
        return "must not put placeholders in the host part"
    return None


def ca_file_problem(path: str) -> Optional[str]:
    """Why the CA bundle at path cannot be used, or None when it is a readable PEM file with at
    least one certificate. Squid and the helper read the same file: Squid (built with GnuTLS)
    takes a file only, never a directory, and says no more than a warning about a bad one."""
    if os.path.isdir(path):
        return ("is a directory; give one PEM file with the CA certificates (Squid built "
                "with GnuTLS cannot read a CA directory)")
    try:
        with open(path, "rb") as handle:
            data = handle.read(16 * 1024 * 1024 + 1)
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return (f"cannot be read: {exc.strerror or exc} (Squid's helpers read it as the "
                "proxy user)")
    if len(data) > 16 * 1024 * 1024:
        return "is larger than 16 MB; is it really a CA bundle?"
    if b"-----BEGIN CERTIFICATE-----" not in data:
        return ("is not a PEM CA bundle: it has no '-----BEGIN CERTIFICATE-----' block (a DER "
                "file converts with: openssl x509 -inform der -in CA.der -out CA.pem)")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
            cadata=data.decode("ascii", errors="replace"))
    except (ssl.SSLError, ValueError) as exc:
        return f"is not a usable PEM CA bundle: {getattr(exc, 'reason', None) or exc}"
    return None


def parse_upstream_proxy(value: Any) -> Tuple[str, int]:
    """The (host, port) of an upstream_proxy value such as 'http://proxy.example:3128'.
    Raises ValueError saying what is wrong and what would be accepted. An IPv6 host comes
    back without its brackets."""
    example = "e.g. http://proxy.example.org:3128"
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a proxy URL, {example}")
    if any(ch.isspace() or ord(ch) < 32 or ch in "\\\"'#" for ch in value):
        raise ValueError(f"{value!r} must not contain spaces, quotes, '#', backslashes or "
                         "control characters")
    parts: SplitResult = urlsplit(value)
    if parts.scheme != "http":
        raise ValueError(f"{value!r}: only http:// proxies are supported (Squid and the helper "
                         f"talk plain HTTP to the proxy, and tunnel TLS through it), {example}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{redacted(value)!r}: a user name or password in the proxy URL is not "
                         "supported")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{value!r}: a proxy URL has a host and a port only, {example}")
    host = parts.hostname or ""
    bracketed = parts.netloc.startswith("[")
    if not host or (not bracketed and not _HOST_RE.match(host)) or (
            bracketed and not re.fullmatch(r"[0-9A-Fa-f:.]+", host)):
        raise ValueError(f"{value!r}: no valid host name, {example}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is None:
        raise ValueError(f"{value!r}: give the port explicitly, {example}")
    if not 0 < port < 65536:
        raise ValueError(f"{value!r}: the port must be a number 1-65535, {example}")
    return host, port


def _number(value: Any, keys: Tuple[str, ...], minimum: float, report: _Reporter) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise report.error(keys, f"must be a number (got {value!r})")
    if not math.isfinite(value):
        raise report.error(keys, f"must be a finite number (got {value!r})")
    if value < minimum:
        raise report.error(keys, f"must be at least {minimum:g} (got {value!r})")
    return value


def _string_list(value: Any, keys: Tuple[str, ...], report: _Reporter) -> list:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise report.error(keys, "must be a non-empty list of strings")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise report.error((*keys, str(index)), f"must be a non-empty string (got {item!r})")
    return value


def did_you_mean(key: Any, known: Tuple[str, ...]) -> str:
    """The hint " (did you mean 'metalink'?)" for a misspelt key; "" when nothing is close."""
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _restriction(value: Any, keys: Tuple[str, ...], report: _Reporter) -> Tuple[str, ...]:
    """releasevers: [9] / arches: [x86_64, aarch64]: the values as the client's URL has them."""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise report.error(keys, "must be a list of the values the repo serves, e.g. "
                           "releasevers: [9] or arches: [x86_64]")
    found = []
    for index, item in enumerate(value):
        if isinstance(item, float):
            raise report.error((*keys, str(index)), f"YAML reads {item!r} as a number, which "
                               "may not be what the URL says (8.10 becomes 8.1): quote it, "
                               "e.g. '8.10'")
        text = str(item) if isinstance(item, (str, int)) and not isinstance(item, bool) else ""
        if not URL_VALUE_RE.match(text):
            raise report.error((*keys, str(index)), f"{item!r} must be letters, digits, '.', "
                               "'_', '+' or '-', as in a client's URL")
        found.append(text)
    return tuple(found)


def _check_placeholders(name: str, source_key: str, templates: Tuple[str, ...],
                        restrictions: Dict[str, Tuple[str, ...]], report: _Reporter) -> None:
    """A URL without {releasever} (or {arch}) answers for every releasever (arch) a client
    names. Beside URLs that have it, that is a mistake unless the repo says it serves one
    release (architecture) only; without any, the repo serves one tree, and a restriction,
    if given, can name only one value."""
    keys = ("repos", name)
    unsaid = []  # (restriction key, placeholder, first URL without it) the repo must settle
    for restriction_key, placeholder in RESTRICTION_KEYS.items():
        without = [index for index, template in enumerate(templates)
                   if placeholder not in template]
        allowed = restrictions.get(restriction_key, ())
        if not without or len(allowed) == 1:
            continue
        if allowed:
            raise report.error((*keys, restriction_key),
                               f"names {len(allowed)} values, but "
                               f"{templates[without[0]]!r} has no {placeholder}, so it would "
                               f"serve all of them the same tree: keep one value, or write "
                               f"{placeholder} into every URL of the repo")
        if len(without) < len(templates):  # without any, one tree for all: the original's way
            unsaid.append((restriction_key, placeholder, without[0]))
    if not unsaid:
        return
    index = unsaid[0][2]
    missing = [(key, placeholder) for key, placeholder, at in unsaid if at == index]
    placeholders = " and ".join(placeholder for _, placeholder in missing)
    what = " and ".join(placeholder[1:-1] for _, placeholder in missing)
    say = ", ".join(f"'{key}: [{'9' if key == 'releasevers' else 'x86_64'}]'"
                    for key, _ in missing)
    # Only a list of mirrors has several URLs to disagree.
    raise report.error((*keys, source_key, str(index)),
                       f"{templates[index]!r} has no {placeholders} while the repo's other "
                       f"URLs have {'them' if len(missing) > 1 else 'it'}, so it would be used "
                       f"for every {what} a client asks for. "
                       f"Write {placeholders} into it, or, if the repo serves one {what} "
                       f"only, say which under repos.{name}: {say}")


def _parse_repo(name: Any, body: Any, report: _Reporter) -> Repo:
    keys = ("repos", str(name))
    if not isinstance(name, str):
        raise report.error(keys, f"YAML reads this repo name as a {type(name).__name__}; "
                           f"quote it: \"{name}\":")
    if not _REPO_NAME_RE.match(name):
        raise report.error(keys, "repo names may use letters, digits, '.', '_' and '-' only, "
                           "start with a letter or digit, and be at most 64 characters")
    if name in TOP_LEVEL_KEYS and not _looks_like_a_repo(body):
        raise report.error(keys, f"'{name}' is a top-level setting, not a repo: it belongs "
                           "at the top level of the file (unindent it so that it starts in "
                           "the first column, outside 'repos:')")
    if not isinstance(body, dict):
        raise report.error(keys, "must be a mapping with one of: " + ", ".join(SOURCE_KINDS))
    sources = []
    restrictions: Dict[str, Tuple[str, ...]] = {}
    for key in body:
        if key in RESTRICTION_KEYS:
            restrictions[key] = _restriction(body[key], (*keys, key), report)
            continue
        canonical = SOURCE_ALIASES.get(key, key)
        if canonical not in SOURCE_KINDS:
            if key in TOP_LEVEL_KEYS:
                raise report.error((*keys, str(key)), f"'{key}' is a top-level setting: it "
                                   "belongs at the top level of the file, not under a repo "
                                   "(unindent it to the first column)")
            raise report.error((*keys, str(key)), "unknown key"
                               + did_you_mean(key, (*SOURCE_KINDS, *RESTRICTION_KEYS))
                               + "; a repo takes exactly one of " + ", ".join(SOURCE_KINDS)
                               + " (or the original repoproxy's names 'mirrorurl' for "
                               "mirrorlist, 'baseurl' for mirrors), and optionally "
                               "releasevers: and arches:")
        sources.append((key, canonical))
    if len(sources) != 1:
        found = ", ".join(k for k, _ in sources) or "none"
        raise report.error(keys, "needs exactly one of " + ", ".join(SOURCE_KINDS)
                           + f" (found {len(sources)}: {found})")
    key, kind = sources[0]
    value = body[key]
    if kind == "mirrors":
        templates = _string_list(value, (*keys, key), report)
        cleaned = []
        for index, template in enumerate(templates):
            problem = validate_template(template)
            if problem:
                raise report.error((*keys, key, str(index)), f"{redacted(template)!r} {problem}")
            parts = urlsplit(template)
            if parts.query or parts.fragment:
                raise report.error((*keys, key, str(index)),
                                   f"{redacted(template)!r}: a mirror base URL cannot have "
                                   "'?' or '#'")
            cleaned.append(template if template.endswith("/") else template + "/")
    else:
        if not isinstance(value, str):
            raise report.error((*keys, key), f"must be one URL template string (got {value!r})")
        problem = validate_template(value, credentials=True)
        if problem:
            raise report.error((*keys, key), f"{redacted(value)!r} {problem}")
        cleaned = [value]
    _check_placeholders(name, key, tuple(cleaned), restrictions, report)
    return Repo(name, kind, tuple(cleaned), restrictions.get("releasevers", ()),
                restrictions.get("arches", ()))


def _looks_like_a_repo(body: Any) -> bool:
    return isinstance(body, dict) and any(k in body for k in (*SOURCE_KINDS, *SOURCE_ALIASES))


TOP_LEVEL_KEYS = ("virtual_hosts", "accel_ports", "cache_dir", "log_file", "ca_file",
                  "upstream_proxy", "repos", *NUMERIC_SETTINGS, "peers", "htcp_port", "memo",
                  "collapsed_forwarding", "squid_proxy")
COLLAPSED_FORWARDING = ("auto", "on", "off")


def _collapsed_forwarding(value: Any, report: _Reporter) -> str:
    if value is True or value is False:  # YAML reads a bare on/off as a boolean
        return "on" if value else "off"
    if value not in COLLAPSED_FORWARDING:
        raise report.error(("collapsed_forwarding",), "must be auto (on with Squid 6.0.1 or "
                           "later: older ones crash on crafted requests, CVE-2023-49288), on "
                           f"or off (got {value!r})")
    return value


def _port(value: Any, keys: Tuple[str, ...], report: _Reporter) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise report.error(keys, f"must be a port number 1-65535 (got {value!r})")
    return value


def _parse_peers(value: Any, report: _Reporter) -> Tuple[Tuple[str, int], ...]:
    """peers: ["proxy-b.lab:3128", "proxy-c.lab"]: the other proxies of the fleet."""
    if not isinstance(value, list):
        raise report.error(("peers",), "must be a list of the fleet's other proxies as "
                           f"'host:port' (port {DEFAULT_PEER_PORT} when left out), e.g. "
                           "['proxy-b.lab:3128', 'proxy-c.lab:3128']")
    peers = []
    for index, entry in enumerate(value):
        keys = ("peers", str(index))
        peer = _proxy_address(entry, keys, report)
        if peer in peers:
            raise report.error(keys, f"{entry!r} is listed twice")
        peers.append(peer)
    return tuple(peers)


def _proxy_address(entry: Any, keys: Tuple[str, ...], report: _Reporter) -> Tuple[str, int]:
    """A proxy's 'host:port' (port DEFAULT_PEER_PORT when left out) as (host, port)."""
    if not isinstance(entry, str) or not _HOST_RE.match(entry):
        raise report.error(keys, f"{entry!r} is not 'host:port' (a host name or IPv4 "
                           "address of letters, digits, '.', '-', then optionally ':' "
                           "and the proxy's HTTP port)")
    host, _, port_text = entry.partition(":")
    return host.lower(), _port(int(port_text) if port_text else DEFAULT_PEER_PORT, keys, report)


def _parse_memo(value: Any, report: _Reporter) -> Optional[str]:
    """memo: redis://host:port/db, the memo the fleet's helpers share."""
    if value is None:
        return None
    example = ("a Redis URL such as redis://redis-host:6379/0 (rediss:// for TLS, "
               "redis://:PASSWORD@host:6379/0 with a password); leave memo out to keep "
               "the memo in cache_dir")
    if not isinstance(value, str) or any(ch in value for ch in " \t\r\n\\"):
        raise report.error(("memo",), f"must be {example} (got {redacted(str(value))!r})")
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        port = -1
    db = parts.path.lstrip("/")
    problem = None
    if parts.scheme not in MEMO_SCHEMES:
        problem = f"has scheme {parts.scheme!r}"
    elif not parts.hostname:
        problem = "names no host"
    elif port is not None and not 0 < port < 65536:
        problem = "has a bad port"
    elif db and not db.isdigit():
        problem = f"names database {db!r}, not a number"
    elif parts.query or parts.fragment:
        problem = "has a query or fragment"
    if problem:
        raise report.error(("memo",), f"{redacted(value)!r} {problem}; it must be {example}")
    return value


def parse_yaml_config(text: str, path: str = "<config>") -> Config:
    """Validate the YAML text of a repos.yaml and return the Config it describes."""
    duplicates: list = []
    report = _Reporter(path, _line_index(text, duplicates))
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML: {problem}{_ini_hint(text)}") from None
    if duplicates:
        keys, line = duplicates[0]
        raise ConfigError(f"{path}:{line}: {'.'.join(keys)}: appears twice in the same mapping; "
                          "YAML would silently keep only the last one, so remove or rename one")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a YAML mapping with at least a 'repos:' key"
                          + _ini_hint(text))
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            looks_like_a_repo = _looks_like_a_repo(data[key])
            raise report.error((str(key),), "unknown key"
                               + ("" if looks_like_a_repo else did_you_mean(key, TOP_LEVEL_KEYS))
                               + "; known keys are " + ", ".join(TOP_LEVEL_KEYS) + (
                                   "; this looks like a repo, and repos go under 'repos:' (the "
                                   "original repoproxy's repos.yaml had them at the top level: "
                                   "indent them below a 'repos:' line)"
                                   if looks_like_a_repo else ""))

    hosts = _string_list(data.get("virtual_hosts", ["repoproxy"]), ("virtual_hosts",), report)
    for index, host in enumerate(hosts):
        if not _HOST_RE.match(host) or not 0 < int(host.partition(":")[2] or 80) < 65536:
            raise report.error(("virtual_hosts", str(index)),
                               f"{host!r} is not a host name (letters, digits, '.', '-', "
                               "optionally ':port' with a port 1-65535)")

    ports_value = data.get("accel_ports", [])
    if not isinstance(ports_value, list):
        raise report.error(("accel_ports",), "must be a list of port numbers, e.g. [5000]")
    ports = set()
    for index, port in enumerate(ports_value):
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise report.error(("accel_ports", str(index)),
                               f"must be a port number 1-65535 (got {port!r})")
        ports.add(port)

    cache_dir = data.get("cache_dir", "/var/cache/squid-helper")
    if not isinstance(cache_dir, str) or not cache_dir:
        raise report.error(("cache_dir",), "must be a directory path string")

    log_file = data.get("log_file", DEFAULT_LOG_FILE)
    if log_file is not None and (not isinstance(log_file, str) or not log_file):
        raise report.error(("log_file",), "must be a file path, or null to log to stderr")

    ca_file = data.get("ca_file")
    if ca_file is not None:
        if not isinstance(ca_file, str) or not ca_file.strip():
            raise report.error(("ca_file",), "must be the path of a PEM file with CA "
                               "certificates, or null for the system's CA store")
        if not os.path.isabs(ca_file) and not path.startswith("<"):
            # Relative to repos.yaml, not to wherever Squid happens to start the helper.
            ca_file = os.path.join(os.path.dirname(os.path.abspath(path)), ca_file)
        ca_file = os.path.abspath(ca_file)
        problem = ca_file_problem(ca_file)
        if problem:
            raise report.error(("ca_file",), f"{ca_file}: {problem}")

    upstream_proxy = data.get("upstream_proxy")
    if upstream_proxy is not None:
        try:
            host, port = parse_upstream_proxy(upstream_proxy)
        except ValueError as exc:
            raise report.error(("upstream_proxy",), str(exc)) from None
        upstream_proxy = f"http://{f'[{host}]' if ':' in host else host}:{port}"

    settings = {}
    for key, (default, minimum, _meaning) in NUMERIC_SETTINGS.items():
        value = _number(data.get(key, default), (key,), minimum, report)
        if isinstance(default, int) and value != int(value):
            raise report.error((key,), f"must be a whole number (got {value!r})")
        settings[key] = int(value) if isinstance(default, int) else float(value)

    peers = _parse_peers(data.get("peers", []), report)
    htcp_port = _port(data.get("htcp_port", DEFAULT_HTCP_PORT), ("htcp_port",), report)
    memo = _parse_memo(data.get("memo"), report)
    squid_proxy = _proxy_address(data.get("squid_proxy", f"127.0.0.1:{DEFAULT_PEER_PORT}"),
                                 ("squid_proxy",), report)
    collapsed_forwarding = _collapsed_forwarding(data.get("collapsed_forwarding", "auto"),
                                                 report)

    repos_value = data.get("repos")
    if not isinstance(repos_value, dict) or not repos_value:
        raise report.error(("repos",), "must be a mapping of repo name -> {mirrorlist: URL} "
                           "(or metalink: URL, or mirrors: [URL, ...]) with at least one repo")
    repos = {}
    for name, body in repos_value.items():
        repo = _parse_repo(name, body, report)
        repos[repo.name] = repo

    return Config(
        path=path,
        virtual_hosts=frozenset(h.lower() for h in hosts),
        accel_ports=frozenset(ports),
        cache_dir=cache_dir,
        log_file=log_file,
        repos=repos,
        settings=settings,
        ca_file=ca_file,
        upstream_proxy=upstream_proxy,
        peers=peers,
        htcp_port=htcp_port,
        memo=memo,
        collapsed_forwarding=collapsed_forwarding,
        squid_proxy=squid_proxy,
    )


def _ini_hint(text: str) -> str:
    """For a YAML error in what may be an INI file that does not start with its section."""
    if re.search(r"^\[[^\[\]]+\]\s*$", text, re.MULTILINE):
        return ("; if this is the original repoproxy's INI form ([repo] sections with "
                "mirrorurl=...), its first line, comments aside, must be a [repo] line")
    return ""
