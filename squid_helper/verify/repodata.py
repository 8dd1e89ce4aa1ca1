"""A yum/dnf repository's metadata, for `squid-helper warm` and the integrity check (pure logic:
bytes in, lists out).

* parse_repomd: the files repodata/repomd.xml names (primary, filelists, ...), with sizes and
  checksums;
* open_decompressed / parse_primary: the packages of the primary metadata, however it is
  compressed (gzip, xz, bzip2 from the standard library; zstd when the zstandard module is
  installed), read as a stream so that a large primary is never held decompressed;
* rpmvercmp / choose_packages: the newest version of each named package, per architecture,
  compared as rpm compares versions.

XML from mirrors is untrusted: it is parsed with defusedxml, and every href must stay inside the
repository (urls.relative_path_problem) before it can become a URL.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
from dataclasses import dataclass
from typing import BinaryIO, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import defusedxml
import defusedxml.ElementTree as SafeET

from ..resolve.urls import relative_path_problem

REPO_NS = "{http://linux.duke.edu/metadata/repo}"
COMMON_NS = "{http://linux.duke.edu/metadata/common}"
GZIP, XZ, BZIP2, ZSTD, ZCHUNK = (b"\x1f\x8b", b"\xfd7zXZ\x00", b"BZh", b"\x28\xb5\x2f\xfd",
                                 b"\x00ZCK1")


class RepodataError(ValueError):
    """Metadata that cannot be used, and why (worded for the operator)."""


@dataclass(frozen=True)
class RepoFile:
    """One file the repository lists: a metadata file or a package."""

    path: str  # below the repository's base, e.g. repodata/<hash>-primary.xml.gz
    size: Optional[int] = None
    checksum: Optional[Tuple[str, str]] = None  # (type as hashlib names it, hex digest)
    kind: str = "metadata"  # "metadata" or "package"
    type: str = ""  # the metadata type (primary, filelists ...) or the package's NEVRA


@dataclass(frozen=True)
class Package:
    name: str
    arch: str
    epoch: str
    version: str
    release: str
    file: RepoFile

    @property
    def nevra(self) -> str:
        epoch = "" if self.epoch in ("", "0") else f"{self.epoch}:"
        return f"{self.name}-{epoch}{self.version}-{self.release}.{self.arch}"


def _checked_path(href: Optional[str], what: str) -> str:
    if not href:
        raise RepodataError(f"{what} has no location href")
    problem = relative_path_problem(href)
    if problem is not None:
        raise RepodataError(f"{what} location {href[:200]!r} is refused: {problem}")
    return href


def _checksum(element: Optional[SafeET.Element]) -> Optional[Tuple[str, str]]:
    if element is None or not (element.text or "").strip():
        return None
    kind = (element.get("type") or "sha256").lower()
    return ("sha1" if kind == "sha" else kind), element.text.strip().lower()


def _int(text: Optional[str]) -> Optional[int]:
    return int(text) if text and text.strip().isdigit() else None


def parse_repomd(content: bytes) -> List[RepoFile]:
    """The metadata files repomd.xml names, in its order (type = the data type)."""
    try:
        root = SafeET.fromstring(content)
    except (SafeET.ParseError, defusedxml.DefusedXmlException) as exc:
        raise RepodataError(f"repomd.xml is not usable XML: {exc}") from None
    if root.tag != REPO_NS + "repomd":
        raise RepodataError(f"repomd.xml's root is {root.tag!r}, not repomd")
    files: List[RepoFile] = []
    seen = set()
    for data in root.findall(REPO_NS + "data"):
        kind = data.get("type") or "?"
        location = data.find(REPO_NS + "location")
        path = _checked_path(location.get("href") if location is not None else None,
                             f"repomd.xml's {kind} data")
        if path in seen:
            continue
        seen.add(path)
        size = data.find(REPO_NS + "size")
        files.append(RepoFile(path, _int(size.text if size is not None else None),
                              _checksum(data.find(REPO_NS + "checksum")), "metadata", kind))
    if not files:
        raise RepodataError("repomd.xml names no metadata")
    return files


def primary_of(files: Sequence[RepoFile]) -> RepoFile:
    for entry in files:
        if entry.type == "primary":
            return entry
    raise RepodataError("repomd.xml names no primary metadata (type=\"primary\")")


def open_decompressed(content: bytes) -> BinaryIO:
    """A stream of the decompressed document, by its magic bytes (not its name)."""
    raw = io.BytesIO(content)
    if content.startswith(GZIP):
        return gzip.GzipFile(fileobj=raw)
    if content.startswith(XZ):
        return lzma.LZMAFile(raw)
    if content.startswith(BZIP2):
        return bz2.BZ2File(raw)
    if content.startswith(ZSTD):
        try:
            import zstandard
        except ImportError:
            raise RepodataError(
                "the primary metadata is zstd-compressed and the zstandard module is not "
                "installed: pip install zstandard (or squid-helper[zstd])") from None
        return zstandard.ZstdDecompressor().stream_reader(raw)
    if content.startswith(ZCHUNK):
        raise RepodataError("the primary metadata is zchunk-compressed, which is not "
                            "supported; the repository lists a gzip/xz/zstd one too as a rule")
    return raw  # plain XML (or garbage, which the parser reports)


def parse_primary(content: bytes) -> List[Package]:
    """Every package of the (compressed) primary metadata."""
    return list(iter_primary(open_decompressed(content)))


def iter_primary(stream: BinaryIO) -> Iterator[Package]:
    try:
        for _, element in SafeET.iterparse(stream, events=("end",)):
            if element.tag != COMMON_NS + "package":
                continue
            if element.get("type", "rpm") == "rpm":
                yield _package(element)
            element.clear()  # bounded memory however many packages there are
    except (SafeET.ParseError, defusedxml.DefusedXmlException) as exc:
        raise RepodataError(f"the primary metadata is not usable XML: {exc}") from None
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise RepodataError(f"the primary metadata cannot be decompressed: {exc}") from None
    except Exception as exc:  # zstandard's ZstdError and the like
        if type(exc).__module__.startswith("zstandard"):
            raise RepodataError(f"the primary metadata cannot be decompressed: {exc}") from None
        raise


def _package(element: SafeET.Element) -> Package:
    def text(tag: str) -> str:
        found = element.find(COMMON_NS + tag)
        return (found.text or "").strip() if found is not None else ""

    version = element.find(COMMON_NS + "version")
    epoch, ver, rel = ((version.get("epoch") or "0", version.get("ver") or "",
                        version.get("rel") or "") if version is not None else ("0", "", ""))
    name, arch = text("name"), text("arch")
    location = element.find(COMMON_NS + "location")
    if location is not None and location.get("{http://www.w3.org/XML/1998/namespace}base"):
        raise RepodataError(f"package {name} is stored outside the repository (xml:base): "
                            "not supported")
    path = _checked_path(location.get("href") if location is not None else None,
                         f"package {name}")
    size = element.find(COMMON_NS + "size")
    nevra = Package(name, arch, epoch, ver, rel, RepoFile(path)).nevra
    return Package(name, arch, epoch, ver, rel, RepoFile(
        path, _int(size.get("package") if size is not None else None),
        _checksum(element.find(COMMON_NS + "checksum")), "package", nevra))


# -- versions ------------------------------------------------------------------------------------
def _isdigit(char: str) -> bool:
    return "0" <= char <= "9"


def _isalpha(char: str) -> bool:
    return "a" <= char <= "z" or "A" <= char <= "Z"


def rpmvercmp(one: str, two: str) -> int:
    """-1, 0 or 1 as rpm's rpmvercmp() compares two version (or release) strings: digit and
    letter runs compared in turn (numbers numerically, numbers newer than letters), '~' sorts
    before anything (pre-releases), '^' after the base version (snapshots)."""
    if one == two:
        return 0
    i = j = 0
    while i < len(one) or j < len(two):
        while i < len(one) and not (_isdigit(one[i]) or _isalpha(one[i])) and one[i] not in "~^":
            i += 1
        while j < len(two) and not (_isdigit(two[j]) or _isalpha(two[j])) and two[j] not in "~^":
            j += 1
        a = one[i] if i < len(one) else ""
        b = two[j] if j < len(two) else ""
        if a == "~" or b == "~":
            if a != "~":
                return 1
            if b != "~":
                return -1
            i, j = i + 1, j + 1
            continue
        if a == "^" or b == "^":
            if not a:
                return -1
            if not b:
                return 1
            if a != "^":
                return 1
            if b != "^":
                return -1
            i, j = i + 1, j + 1
            continue
        if not (a and b):
            break
        kind = _isdigit if _isdigit(a) else _isalpha
        end_one, end_two = i, j
        while end_one < len(one) and kind(one[end_one]):
            end_one += 1
        while end_two < len(two) and kind(two[end_two]):
            end_two += 1
        if end_two == j:  # a number against letters: the number is newer
            return 1 if kind is _isdigit else -1
        segment_one, segment_two = one[i:end_one], two[j:end_two]
        if kind is _isdigit:
            segment_one, segment_two = segment_one.lstrip("0"), segment_two.lstrip("0")
            if len(segment_one) != len(segment_two):
                return 1 if len(segment_one) > len(segment_two) else -1
        if segment_one != segment_two:
            return 1 if segment_one > segment_two else -1
        i, j = end_one, end_two
    if i >= len(one) and j >= len(two):
        return 0
    return -1 if i >= len(one) else 1


def compare_evr(one: Package, two: Package) -> int:
    epochs = (int(one.epoch or 0), int(two.epoch or 0))
    if epochs[0] != epochs[1]:
        return 1 if epochs[0] > epochs[1] else -1
    return rpmvercmp(one.version, two.version) or rpmvercmp(one.release, two.release)


def choose_packages(packages: Iterable[Package], names: Sequence[str]
                    ) -> Tuple[List[Package], List[str]]:
    """For each name, the newest version in each architecture the repository has it for;
    and the names it does not have at all."""
    newest: Dict[Tuple[str, str], Package] = {}
    wanted = set(names)
    for package in packages:
        if package.name not in wanted:
            continue
        key = (package.name, package.arch)
        known = newest.get(key)
        if known is None or compare_evr(package, known) > 0:
            newest[key] = package
    found = {name for name, _ in newest}
    chosen = sorted(newest.values(), key=lambda p: (p.name, p.arch))
    return chosen, [name for name in names if name not in found]
