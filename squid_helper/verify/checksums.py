"""What one repo file must be, by the repo's own metadata (pure: parsed metadata in, answers out).

* Checksum-named repodata (repodata/<hash>-primary.xml.gz and the like): repomd.xml names each
  with its size and checksum.
* Packages: the primary metadata names each with its size and checksum.

repomd.xml itself is where this trust starts: nothing inside the repo vouches for it (a
metalink does, and the survey checks that), so it is never judged here. Paths are compared in
the one spelling the helpers use (urls.canonical_path), so a package that dnf asks for as
libstdc%2b%2b...rpm is found under the primary's libstdc++...rpm.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Dict, Iterable, NamedTuple, Optional, Sequence

from ..resolve.urls import canonical_path
from .repodata import Package, RepoFile


class Expected(NamedTuple):
    """A file's size and checksum as the metadata gives them (a tuple: a big repo's primary
    names tens of thousands of packages, and this is what is kept of each)."""

    size: Optional[int]
    algorithm: str  # as hashlib names it
    digest: str  # lower-case hex


@dataclass(frozen=True)
class Catalogue:
    """What one revision of a repo's metadata says its files must be."""

    revision: str  # the sha256 of the repomd.xml it comes from
    files: Dict[str, Expected]  # canonical path below the repo's base -> what it must be
    packages_known: bool = True  # False: the primary could not be read, packages are unknown

    def expected(self, path: str) -> Optional[Expected]:
        return self.files.get(path)


def _expected(file: RepoFile) -> Optional[Expected]:
    if file.checksum is None or file.checksum[0] not in hashlib.algorithms_available:
        return None  # nothing to compare with: such a file is not judged
    return Expected(file.size, file.checksum[0], file.checksum[1])


def catalogue(revision: str, metadata: Sequence[RepoFile],
              packages: Optional[Iterable[Package]]) -> Catalogue:
    """The catalogue of one repomd.xml (its metadata files) and its primary (its packages;
    None when the primary could not be read: the metadata files can still be judged, and
    the primary among them)."""
    files: Dict[str, Expected] = {}
    for file in list(metadata) + [p.file for p in packages or ()]:
        expected = _expected(file)
        if expected is not None:
            files[canonical_path(file.path)] = expected
    return Catalogue(revision, files, packages is not None)


def disagreement(expected: Expected, size: int, digest: str) -> Optional[str]:
    """Why bytes of this size and digest (in expected.algorithm) are not the file the metadata
    names, or None when they are."""
    if expected.size is not None and size != expected.size:
        return f"{size} bytes where the metadata says {expected.size}"
    if digest.lower() != expected.digest:
        return f"{expected.algorithm} {digest.lower()} where the metadata says {expected.digest}"
    return None

