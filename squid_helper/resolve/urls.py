"""Map a client URL to (repo, releasever, arch, path), and build mirror URLs safely.

Pure logic: nothing here touches the network or the disk. Everything a client controls is
checked against a conservative character set before it can reach a mirror URL, and every mirror
URL built here is checked to stay inside its mirror's tree.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Mapping, Optional, Union
from urllib.parse import quote, unquote, urlsplit

from ..config.settings import URL_VALUE_RE, Config

MAX_URL_LENGTH = 8192
# releasever, arch and repo end up inside mirror URLs and memo keys: letters, digits and a few
# separators only, so no placeholder ({...}), percent-escape or slash can ride along.
_NAME_RE = URL_VALUE_RE
# RFC 3986 pchar: unreserved / pct-encoded / sub-delims / ':' / '@'; and '^', which RFC 3986
# wants escaped but curl sends as it is: Fedora's snapshot versions hold it
# (foo-1.0^20230101git1234abc). It means nothing to a server, and is escaped on its way on.
_PCHAR_RE = re.compile(r"^(?:[A-Za-z0-9._~!$&'()*+,;=:@^-]|%[0-9A-Fa-f]{2})*$")
_FORBIDDEN_DECODED = ("\x00", "\r", "\n", "\\", "/")
_DECODE_ROUNDS = 3
REPOMD_PATH = "repodata/repomd.xml"
# Metadata files named by their checksum (createrepo --unique-md-filenames, as every distribution
# publishes them): never changed in place, listed by the repomd.xml they belong to.
_CHECKSUM_NAMED_RE = re.compile(r"^repodata/[0-9a-f]{32,128}-[^/]+$")


@dataclass(frozen=True)
class RepoPath:
    """A request for one file of one repo, as the client named it."""

    repo: str
    releasever: str
    arch: str
    path: str  # below the repo's base, percent-encoded in one spelling (canonical_path);
    # "" is the repo root

    @property
    def triple(self) -> str:
        return f"{self.repo}/{self.releasever}/{self.arch}"

    @property
    def key(self) -> str:
        return f"{self.triple}/{self.path}"

    @property
    def is_metadata(self) -> bool:
        return self.path == REPOMD_PATH

    @property
    def is_root(self) -> bool:
        """The repo root itself (/<repo>/<releasever>/<arch>[/]): answered with a mirror's
        base URL, chosen as the resolver explains."""
        return self.path == ""

    @property
    def follows_repodata(self) -> bool:
        """Whether the file changes with every push (repomd.xml, and the root's listing), so
        that an answer for it holds no longer than a repomd.xml answer."""
        return self.is_metadata or self.is_root

    @property
    def in_snapshot(self) -> bool:
        """A file that a mirror serving the repo's current repomd.xml can be expected to hold:
        a package, or checksum-named repodata (what dnf fetches after repomd.xml)."""
        return self.path.endswith((".rpm", ".drpm")) or bool(
            _CHECKSUM_NAMED_RE.match(self.path))

    def on(self, base: str) -> str:
        """This file's URL on the mirror whose repo base URL is base."""
        return join_under_base(base, self.path)


@dataclass(frozen=True)
class NotOurs:
    """Not a repo URL: Squid handles it as any other proxied request."""


@dataclass(frozen=True)
class Refused:
    """A repo URL that will not be served, and why (sent to Squid as ERR message=...)."""

    reason: str


Mapping_ = Union[RepoPath, NotOurs, Refused]
NOT_OURS = NotOurs()


def _is_ours(host: str, port: Optional[int], extras: Mapping[str, str], config: Config) -> bool:
    if extras.get("myport", "").isdigit() and int(extras["myport"]) in config.accel_ports:
        # On an accel port Squid builds the URL from the client's Host header, whatever it is.
        return True
    if port in (None, 80) and host in config.virtual_hosts:
        return True
    return port is not None and f"{host}:{port}" in config.virtual_hosts


def _segment_problem(segment: str) -> Optional[str]:
    if not _PCHAR_RE.match(segment):
        return f"illegal character in path segment {segment[:80]!r}"
    decoded = segment
    # Decode a few rounds: a server or a later proxy hop may decode again, so '%252e%252e'
    # must be judged as the '..' it can become.
    for _ in range(_DECODE_ROUNDS + 1):
        if decoded in (".", ".."):
            return "'.' and '..' path segments (also percent-encoded) are not allowed"
        if any(ch in decoded for ch in _FORBIDDEN_DECODED):
            return "encoded '/', '\\', NUL, CR or LF in a path segment is not allowed"
        if ";" in decoded:
            # Tomcat-based mirrors read '..;' as '..' (a path parameter): a way out of the tree.
            return "';' in a path segment is not allowed"
        if "%" not in decoded:
            return None
        try:
            undone = unquote(decoded, errors="strict")
        except UnicodeDecodeError:
            return "percent-encoded bytes that are not UTF-8 in a path segment"
        if undone == decoded:
            return None  # a literal '%' (sent as %25) that no further decoding can change
        decoded = undone
    return "percent-encoding nested too deep in a path segment"


def canonical_segment(segment: str) -> str:
    """A path segment (already judged safe by _segment_problem) in one spelling: every byte
    but the unreserved characters (letters, digits, '-', '.', '_', '~') percent-encoded,
    upper-case hex.

    Clients spell one file name in several ways: dnf (librepo) sends
    snap-1.0%5e2023...rpm and libstdc%2b%2b-devel...rpm, curl sends snap-1.0^2023...rpm and
    libstdc++-devel...rpm, and tilde-2.0~rc1 raw or as %7E. One spelling makes them one memo
    entry, one mirror URL and one Squid object. Escaping all but the unreserved characters
    is what librepo does to package paths, and for a reason: S3-backed mirrors (Fedora's
    CloudFront one among them) read a raw '+' in a path as a space, and 404 libstdc++."""
    return quote(unquote(segment, errors="strict"), safe="")


def canonical_path(path: str) -> str:
    """canonical_segment of each segment of a path that relative_path_problem accepts."""
    return "/".join(canonical_segment(segment) for segment in path.split("/"))


def map_url(url: str, extras: Mapping[str, str], config: Config) -> Mapping_:
    """Classify a URL from Squid: a repo file we serve, a refused repo URL, or not ours."""
    if len(url) > MAX_URL_LENGTH:
        return Refused(f"URL longer than {MAX_URL_LENGTH} bytes")
    if not url.isascii() or any(ch < "!" or ch == "\x7f" for ch in url):
        return Refused("control characters, spaces or non-ASCII bytes in the URL")
    scheme, sep, rest = url.partition("://")
    if not sep:
        return NOT_OURS  # CONNECT's host:port and other authority-form targets
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return Refused("malformed URL authority")
    host = (parts.hostname or "").lower()
    if not _is_ours(host, port, extras, config):
        return NOT_OURS
    if scheme.lower() != "http":
        return Refused(f"scheme {scheme[:16]!r} is not served; repo URLs are http://")
    if "@" in parts.netloc:
        return Refused("user information in a repo URL is not allowed")
    segments = parts.path.split("/")
    if segments[0] != "":
        return Refused("the URL path must start with '/'")
    segments = segments[1:]
    if len(segments) == 4 and not segments[3]:
        # /<repo>/<releasever>/<arch>/ is the repo root, as /<repo>/<releasever>/<arch> is:
        # the original repoproxy's own example URL. Its path is "" (RepoPath.is_root).
        segments = segments[:3]
    if len(segments) < 3 or not all(segments[:3]) or (len(segments) > 3 and not segments[3]):
        return Refused("expected /<repo>/<releasever>/<arch>/<path> (or the repo root "
                       "/<repo>/<releasever>/<arch>/) in the URL")
    for index, segment in enumerate(segments):
        if not segment and index != len(segments) - 1:
            return Refused("empty path segment ('//') in the URL")
        problem = _segment_problem(segment)
        if problem:
            return Refused(problem)
    repo, releasever, arch = segments[:3]
    for label, value in (("repo", repo), ("releasever", releasever), ("arch", arch)):
        if not _NAME_RE.match(value):
            return Refused(f"{label} {value[:64]!r} must be letters, digits, '.', '_', '+' or '-'")
    if repo not in config.repos:
        known = ", ".join(sorted(config.repos)) or "none"
        return Refused(f"unknown repo {repo!r}; configured repos: {known}")
    served = config.repos[repo]
    for label, value, only, key in (("releasever", releasever, served.releasevers,
                                     "releasevers"), ("arch", arch, served.arches, "arches")):
        if only and value not in only:
            # Its mirror URLs may name one tree: another releasever/arch would get that one.
            return Refused(f"repo {repo!r} serves {label} {', '.join(only)} only, not "
                           f"{value!r} ({key}: in repos.yaml)")
    return RepoPath(repo, releasever, arch, canonical_path("/".join(segments[3:])))


def virtual_host(config: Config) -> str:
    """The virtual host this proxy's own tools name repo URLs with (warm, the integrity
    check): repoproxy when configured, as clients mostly use it."""
    return "repoproxy" if "repoproxy" in config.virtual_hosts else sorted(config.virtual_hosts)[0]


def expand_template(template: str, releasever: str, arch: str) -> str:
    """Substitute {releasever} and {arch}. The values must already match _NAME_RE."""
    if not (_NAME_RE.match(releasever) and _NAME_RE.match(arch)):
        raise ValueError("releasever/arch must be validated before substitution")
    # str.replace, not str.format: nothing in the values can act as a placeholder.
    return template.replace("{releasever}", releasever).replace("{arch}", arch)


def join_under_base(base: str, path: str) -> str:
    """base + path, refusing any result that would leave the base's tree."""
    if not base.endswith("/"):
        base += "/"
    candidate = base + path
    base_parts, parts = urlsplit(base), urlsplit(candidate)
    if (parts.scheme, parts.netloc) != (base_parts.scheme, base_parts.netloc):
        raise ValueError(f"{candidate!r} leaves mirror {base!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"{candidate!r} carries a query or fragment")
    normalised = posixpath.normpath(unquote(parts.path))
    base_path = posixpath.normpath(unquote(base_parts.path))
    if normalised != base_path and not normalised.startswith(base_path.rstrip("/") + "/"):
        raise ValueError(f"{candidate!r} leaves mirror {base!r}")
    return candidate


def relative_path_problem(path: str) -> Optional[str]:
    """Why a path below a mirror base is unsafe to key or serve, or None when it is fine."""
    if not path:
        return "empty path"
    segments = path.split("/")
    for index, segment in enumerate(segments):
        if not segment and index != len(segments) - 1:
            return "empty path segment ('//')"
        problem = _segment_problem(segment)
        if problem:
            return problem
    return None


def template_pattern(template: str) -> re.Pattern[str]:
    """A regex matching URLs under a mirror base template, capturing releasever, arch, path."""
    pattern = re.escape(template)
    for name in ("releasever", "arch"):
        placeholder = re.escape("{" + name + "}")
        # A repeated placeholder must repeat the same value.
        pattern = pattern.replace(placeholder, f"(?P<{name}>[A-Za-z0-9][A-Za-z0-9._+-]*)", 1)
        pattern = pattern.replace(placeholder, f"(?P={name})")
    return re.compile(pattern + r"(?P<path>[^?#]*)")
