"""Parse mirror sources: mirrorlist text, Fedora metalink XML, and repomd.xml (pure logic)."""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlsplit

import defusedxml
import defusedxml.ElementTree

from ..config.settings import validate_template
from .urls import REPOMD_PATH

HASH_TYPES = ("sha512", "sha256", "sha1", "md5")


class SourceError(ValueError):
    """A mirrorlist, metalink or repomd.xml that cannot be used, and why."""


@dataclass(frozen=True)
class RepomdDigest:
    """What identifies one repomd.xml: its size and hashes (any subset of HASH_TYPES)."""

    size: Optional[int]
    hashes: Dict[str, str]

    def matches(self, content: bytes) -> bool:
        if self.size is not None and self.size != len(content):
            return False
        for kind in HASH_TYPES:
            if kind in self.hashes:
                return hashlib.new(kind, content).hexdigest() == self.hashes[kind].lower()
        return self.size is not None


@dataclass(frozen=True)
class MirrorSet:
    """Ordered mirror base URLs (each ending in '/') and, from a metalink, the expected repomd."""

    bases: Tuple[str, ...]
    expected: Optional[RepomdDigest] = None
    alternates: Tuple[RepomdDigest, ...] = field(default=())
    skipped: Tuple[str, ...] = field(default=())  # unusable entries, as the source gave them


def _checked_base(url: str) -> Optional[str]:
    url = url.strip()
    if validate_template(url) is not None or "{" in url or "}" in url:
        return None
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        return None
    return url if url.endswith("/") else url + "/"


def parse_mirrorlist(text: str) -> MirrorSet:
    """A mirrorlist: '#' comments, blank lines, then one base URL a line. As dnf does, a line
    that is no usable http(s) base URL (ftp://, rsync://, garbage) is skipped, not fatal:
    MirrorSet.skipped names them, for the log."""
    if text.lstrip().startswith("<"):
        raise SourceError("got HTML/XML where a mirrorlist (one URL a line) was expected")
    bases: List[str] = []
    skipped: List[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        base = _checked_base(line)
        if base is None:
            skipped.append(line[:120])
        elif base not in bases:
            bases.append(base)
    if not bases and skipped:
        raise SourceError(f"no line is an http(s) mirror URL (first: {skipped[0]!r})")
    if not bases:
        comment = next((ln.strip("# ").strip() for ln in text.splitlines()
                        if ln.startswith("#")), "")
        hint = f" (server says: {comment[:120]})" if comment else ""
        raise SourceError("the mirrorlist lists no mirrors" + hint)
    return MirrorSet(tuple(bases), skipped=tuple(skipped))


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _digest_from(element: ET.Element) -> RepomdDigest:
    size = None
    hashes: Dict[str, str] = {}
    for child in element.iter():
        name = _local(child.tag)
        if name == "size" and (child.text or "").strip().isdigit():
            size = int(child.text.strip())
        elif name == "hash" and child.get("type") in HASH_TYPES and child.text:
            hashes[child.get("type")] = child.text.strip()
    return RepomdDigest(size, hashes)


def parse_metalink(content: bytes) -> MirrorSet:
    """A Fedora metalink: repomd.xml's URLs on each mirror, their preference, size and hashes."""
    try:
        # Untrusted XML from the network: no entity expansion, no external references.
        root = defusedxml.ElementTree.fromstring(content)
    except ET.ParseError as exc:
        raise SourceError(f"not a metalink XML document ({exc})") from None
    except defusedxml.DefusedXmlException as exc:
        raise SourceError(f"metalink refused: {exc}") from None
    if _local(root.tag) != "metalink":
        raise SourceError(f"not a metalink document (root element <{_local(root.tag)}>)")
    file_el = next((el for el in root.iter() if _local(el.tag) == "file"
                    and el.get("name") == "repomd.xml"), None)
    if file_el is None:
        raise SourceError("the metalink has no <file name=\"repomd.xml\"> entry")
    verification = next((el for el in file_el if _local(el.tag) == "verification"), None)
    size_el = next((el for el in file_el if _local(el.tag) == "size"), None)
    expected = _digest_from(verification) if verification is not None else RepomdDigest(None, {})
    if size_el is not None and (size_el.text or "").strip().isdigit():
        expected = RepomdDigest(int(size_el.text.strip()), expected.hashes)
    alternates = tuple(_digest_from(alt) for el in file_el.iter()
                       if _local(el.tag) == "alternates" for alt in el
                       if _local(alt.tag) == "alternate")
    ranked: List[Tuple[int, int, str]] = []
    skipped: List[str] = []
    for order, url_el in enumerate(el for el in file_el.iter() if _local(el.tag) == "url"):
        url = (url_el.text or "").strip()
        base = (_checked_base(url[: -len(REPOMD_PATH)]) if url.endswith(REPOMD_PATH)
                else None)
        if base is None:
            skipped.append(url[:120])  # rsync://, ftp://, not repomd.xml: dnf skips them too
            continue
        try:
            preference = int(url_el.get("preference", "0"))
        except ValueError:
            preference = 0
        ranked.append((-preference, order, base))
    bases = []
    for _, _, base in sorted(ranked):
        if base not in bases:
            bases.append(base)
    if not bases:
        raise SourceError("the metalink lists no http(s) mirrors for repomd.xml")
    if not expected.hashes and expected.size is None:
        expected = None
    return MirrorSet(tuple(bases), expected, alternates, tuple(skipped))


_REVISION_RE = re.compile(rb"<revision>\s*([0-9]+)\s*</revision>")
_TIMESTAMP_RE = re.compile(rb"<timestamp>\s*([0-9]+)\s*</timestamp>")


def repomd_age_key(content: bytes) -> Tuple[int, int]:
    """(revision, newest timestamp) of a repomd.xml: a larger key is a newer snapshot."""
    if b"<repomd" not in content:
        raise SourceError("not a repomd.xml document")
    revision = _REVISION_RE.search(content)
    timestamps = [int(t) for t in _TIMESTAMP_RE.findall(content)]
    return (int(revision.group(1)) if revision else 0, max(timestamps, default=0))
