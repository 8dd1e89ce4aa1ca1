"""`squid-helper warm`: fetch a repository's metadata and packages through Squid, so that builds
start with everything in Squid's cache.

Everything is fetched as a client would, through the proxy, by the virtual-host URL
(`http://repoproxy/<repo>/<releasever>/<arch>/<path>`): the helpers choose the mirror and give
the store-id key, so the copies are the ones every client's requests find.

1. repodata/repomd.xml (always fetched: it names the current metadata), then the primary
   metadata it names, decompressed and parsed (repodata.py);
2. every other metadata file repomd.xml names, and the packages: by name (the newest version
   of each in each architecture) or --all; several at once (--workers).

Resuming: before a file is fetched, Squid is asked for it with `HEAD` and `Cache-Control:
only-if-cached`. Squid answers that from its cache alone, never from a mirror: 200 means it
holds the file (a hit: nothing is transferred), 504 that it does not (then a GET fetches it).
So a rerun after an interruption, or on a warm cache, costs one small request per file and no
mirror traffic. (Judging by a GET's X-Cache header would transfer every file again; the
access log is not readable from every host that can reach the proxy.) Files fetched are
checked against the size and checksum the metadata gives, so a damaged copy is reported.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, List, Optional, Protocol, Sequence, TextIO, Tuple

import requests

from ..config.settings import Config
from ..httpclient import FAILURES, describe_failure, new_session
from ..resolve.urls import REPOMD_PATH, NotOurs, Refused, RepoPath, map_url, virtual_host
from ..verify.repodata import (
    RepodataError,
    RepoFile,
    choose_packages,
    parse_primary,
    parse_repomd,
    primary_of,
)
from .status import human_bytes

HIT, MISS, FAILED = "hit", "miss", "failed"
_CHUNK = 1 << 16


class WarmError(Exception):
    """Warming cannot go on (no proxy, no metadata), worded for the operator."""


@dataclass(frozen=True)
class Outcome:
    file: RepoFile
    result: str  # HIT (Squid had it), MISS (fetched from a mirror now) or FAILED
    fetched: int  # bytes read through the proxy
    seconds: float
    message: str = ""  # why it failed


# -- pure: what to say ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Summary:
    tree: str
    proxy: str
    files: int
    hits: int
    misses: int
    failures: int
    fetched: int
    seconds: float


def summarize(outcomes: Sequence[Outcome], tree: str, proxy: str, seconds: float) -> Summary:
    count = {result: sum(o.result == result for o in outcomes) for result in (HIT, MISS, FAILED)}
    return Summary(tree, proxy, len(outcomes), count[HIT], count[MISS], count[FAILED],
                   sum(o.fetched for o in outcomes), seconds)


def format_summary(summary: Summary) -> str:
    rate = summary.fetched / summary.seconds if summary.seconds > 0 else 0.0
    return (f"warm {summary.tree} through {summary.proxy}: {summary.files} files, "
            f"{summary.hits} hits, {summary.misses} misses, {summary.failures} failures; "
            f"{human_bytes(summary.fetched)} fetched in {summary.seconds:.1f}s "
            f"({human_bytes(rate)}/s)")


def format_outcome(outcome: Outcome, done: int, total: int) -> str:
    width = len(str(total))
    size = human_bytes(outcome.fetched or outcome.file.size)  # a HEAD hit fetched nothing
    text = f"[{done:>{width}}/{total}] {outcome.result.upper():<6} {size:>10}  {outcome.file.path}"
    if outcome.result == FAILED:
        return f"{text}: {outcome.message}"
    return f"{text} ({outcome.seconds:.2f}s)"


# -- progress ------------------------------------------------------------------------------------
class Progress(Protocol):
    def start(self, files: int, size: int) -> None: ...

    def transferred(self, count: int) -> None: ...

    def finished(self, outcome: Outcome) -> None: ...

    def close(self) -> None: ...


class LineProgress:
    """One line per file: for logs and pipes."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.total = 0
        self.done = 0
        self._lock = threading.Lock()

    def start(self, files: int, size: int) -> None:
        self.total += files
        if files > 1:  # the batch after the metadata that names it
            print(f"checking {files} more files ({human_bytes(size)})", file=self.stream,
                  flush=True)

    def transferred(self, count: int) -> None:
        pass

    def finished(self, outcome: Outcome) -> None:
        with self._lock:
            self.done += 1
            print(format_outcome(outcome, self.done, max(self.total, self.done)),
                  file=self.stream, flush=True)

    def close(self) -> None:
        pass


class BarProgress:
    """A progress bar on a terminal: bytes, rate and ETA of what is fetched, and the files.
    A file Squid already holds leaves the bar's total, so the rate and the ETA are those of
    the transfers alone."""

    def __init__(self, stream: TextIO, label: str):
        from tqdm import tqdm  # only on a terminal

        self.bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, file=stream,
                        desc=label, dynamic_ncols=True, leave=True)
        self.files = self.done = self.hits = self.failed = 0
        self._lock = threading.Lock()

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"files {self.done}/{self.files}, {self.hits} hits, "
                                 f"{self.failed} failed", refresh=False)

    def start(self, files: int, size: int) -> None:
        with self._lock:
            self.files += files
            self.bar.total += size
            self._postfix()
            self.bar.refresh()

    def transferred(self, count: int) -> None:
        with self._lock:
            self.bar.update(count)

    def finished(self, outcome: Outcome) -> None:
        with self._lock:
            self.done += 1
            self.hits += outcome.result == HIT
            self.failed += outcome.result == FAILED
            expected = outcome.file.size or 0
            if outcome.result == HIT:
                self.bar.total = max(self.bar.n, self.bar.total - expected)
            elif outcome.fetched != expected:  # no size known, or a failure part way
                self.bar.total = max(self.bar.n, self.bar.total - expected + outcome.fetched)
            self._postfix()
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


# A bar narrower than this shows neither the bytes nor the files (tqdm prints nothing at all
# at 0 columns, a terminal whose size was never set): one line per file says more.
MIN_BAR_COLUMNS = 40


def terminal_columns(stream: TextIO) -> Optional[int]:
    """The width of the terminal stream writes to; None when it is no terminal."""
    try:
        return os.get_terminal_size(stream.fileno()).columns if stream.isatty() else None
    except (AttributeError, ValueError, OSError):  # no file descriptor, or no size to ask
        return None


def wants_bar(columns: Optional[int]) -> bool:
    """A progress bar only on a terminal wide enough to show one."""
    return columns is not None and columns >= MIN_BAR_COLUMNS


def progress_for(stream: TextIO, label: str) -> Progress:
    """A bar on a usable terminal, else one line per file."""
    return BarProgress(stream, label) if wants_bar(terminal_columns(stream)) else \
        LineProgress(stream)


# -- HTTP through the proxy ----------------------------------------------------------------------
class Fetcher:
    """Requests through Squid for the virtual URLs of one repo tree; one Session a thread,
    all closed by close()."""

    def __init__(self, proxy: str, base_url: str, timeout: float):
        self.proxy = proxy
        self.base_url = base_url
        self.timeout = timeout
        self._local = threading.local()
        self._sessions: List[requests.Session] = []
        self._lock = threading.Lock()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            # A connection within 10 s, and no wait longer than timeout for the next bytes.
            session = self._local.session = new_session(
                (10, self.timeout), proxy=f"http://{self.proxy}", pool_size=1)
            with self._lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    def _problem(self, exc: BaseException, path: str, started: float) -> str:
        return describe_failure(exc, self.base_url + path, time.monotonic() - started,
                                self.proxy, proxy_role="proxy")

    @staticmethod
    def _refusal(response: requests.Response) -> str:
        error = response.headers.get("X-Squid-Error")
        return f"HTTP {response.status_code} from the proxy" + (f" ({error})" if error else "")

    def cached(self, path: str) -> bool:
        """Whether Squid holds the file (HEAD with only-if-cached: no mirror is asked)."""
        try:
            response = self._session().head(
                self.base_url + path, headers={"Cache-Control": "only-if-cached"},
                allow_redirects=False)
        except FAILURES:
            return False  # the GET that follows says what is wrong
        return response.status_code == 200

    def fetch(self, file: RepoFile, on_bytes: Callable[[int], None],
              keep: bool = False) -> Tuple[Outcome, Optional[bytes]]:
        """GET the file through Squid, checking its size and checksum; keep: also return the
        content (the metadata this command reads)."""
        started = time.monotonic()
        fetched = 0
        kept: List[bytes] = []
        digest = hashlib.new(file.checksum[0]) if file.checksum and file.checksum[0] in \
            hashlib.algorithms_available else None

        def failed(message: str) -> Tuple[Outcome, None]:
            return Outcome(file, FAILED, fetched, time.monotonic() - started, message), None

        try:
            with self._session().get(self.base_url + file.path, stream=True,
                                     allow_redirects=False) as response:
                if response.status_code != 200:
                    return failed(self._refusal(response))
                hit = response.headers.get("X-Cache", "").upper().startswith("HIT")
                for chunk in response.iter_content(_CHUNK):
                    fetched += len(chunk)
                    on_bytes(len(chunk))
                    if digest is not None:
                        digest.update(chunk)
                    if keep:
                        kept.append(chunk)
        except FAILURES as exc:
            return failed(self._problem(exc, file.path, started))
        if file.size is not None and fetched != file.size:
            return failed(f"got {fetched} bytes, the metadata says {file.size}: Squid's copy "
                          "or the mirror's may be damaged (squid-helper purge the URL)")
        if digest is not None and digest.hexdigest() != file.checksum[1]:
            return failed(f"{file.checksum[0]} checksum mismatch: Squid's copy or the "
                          "mirror's may be damaged (squid-helper purge the URL)")
        outcome = Outcome(file, HIT if hit else MISS, fetched, time.monotonic() - started)
        return outcome, b"".join(kept) if keep else None

    def warm(self, file: RepoFile, on_bytes: Callable[[int], None]) -> Outcome:
        """A hit when Squid holds the file, else fetched."""
        started = time.monotonic()
        if self.cached(file.path):
            return Outcome(file, HIT, 0, time.monotonic() - started)
        return self.fetch(file, on_bytes)[0]


# -- the command ---------------------------------------------------------------------------------
def tree_url(config: Config, tree: str) -> Tuple[RepoPath, str]:
    """REPO/RELEASEVER/ARCH -> its repomd.xml request and the virtual base URL, validated as
    the helper validates a client's URL."""
    parts = tree.strip("/").split("/")
    if len(parts) != 3:
        raise WarmError(f"{tree!r} is not REPO/RELEASEVER/ARCH (e.g. fedora/40/x86_64)")
    base = f"http://{virtual_host(config)}/{'/'.join(parts)}/"
    mapped = map_url(base + REPOMD_PATH, {}, config)
    if isinstance(mapped, Refused):
        raise WarmError(f"{tree}: {mapped.reason}")
    if isinstance(mapped, NotOurs):  # cannot happen: host is one of virtual_hosts
        raise WarmError(f"{base} is not a repo URL for this configuration")
    return mapped, base


@dataclass
class Plan:
    """What one run will fetch, and what it could not find."""

    repomd: Outcome
    primary: Outcome
    files: List[RepoFile]
    missing: List[str]


def warm(config: Config, proxy: str, tree: str, names: Sequence[str], everything: bool,
         workers: int, timeout: float, progress: Progress) -> Tuple[List[Outcome], List[str]]:
    """Warm one repo tree; returns every file's outcome and the package names not found.
    WarmError when the metadata cannot be had (nothing else can be done then)."""
    _, base = tree_url(config, tree)
    fetcher = Fetcher(proxy, base, timeout)
    try:
        return _warm(fetcher, names, everything, workers, progress)
    finally:
        fetcher.close()


def _warm(fetcher: Fetcher, names: Sequence[str], everything: bool, workers: int,
          progress: Progress) -> Tuple[List[Outcome], List[str]]:
    base, proxy = fetcher.base_url, fetcher.proxy
    progress.start(1, 0)
    repomd, content = fetcher.fetch(RepoFile(REPOMD_PATH), progress.transferred, keep=True)
    progress.finished(repomd)
    if content is None:
        raise WarmError(f"cannot fetch {base}{REPOMD_PATH} through {proxy}: {repomd.message}")
    try:
        metadata = parse_repomd(content)
        primary_file = primary_of(metadata)
    except RepodataError as exc:
        raise WarmError(f"{base}{REPOMD_PATH}: {exc}") from None
    progress.start(1, primary_file.size or 0)
    primary, content = fetcher.fetch(primary_file, progress.transferred, keep=True)
    progress.finished(primary)
    if content is None:
        raise WarmError(f"cannot fetch the primary metadata {base}{primary_file.path}: "
                        f"{primary.message}")
    try:
        packages = parse_primary(content)
    except RepodataError as exc:
        raise WarmError(f"{base}{primary_file.path}: {exc}") from None
    if everything:
        chosen, missing = [p.file for p in packages], []
    else:
        picked, missing = choose_packages(packages, names)
        chosen = [p.file for p in picked]
    seen = {primary_file.path}
    files = []
    for file in [f for f in metadata if f.path != primary_file.path] + chosen:
        if file.path not in seen:
            seen.add(file.path)
            files.append(file)
    progress.start(len(files), sum(f.size or 0 for f in files))
    outcomes = [repomd, primary]

    def one(file: RepoFile) -> Outcome:
        outcome = fetcher.warm(file, progress.transferred)
        progress.finished(outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="warm") as pool:
        outcomes += list(pool.map(one, files))
    return outcomes, missing


def run(config: Config, proxy: str, tree: str, names: Sequence[str], everything: bool,
        workers: int, timeout: float, out: TextIO = sys.stdout, err: TextIO = sys.stderr
        ) -> int:
    """The command: progress on err (a bar on a terminal wide enough for one, else a line per
    file), failures on err, the summary on out. 0 when every file is in Squid's cache, 1
    otherwise."""
    progress = progress_for(err, tree)
    started = time.monotonic()
    try:
        outcomes, missing = warm(config, proxy, tree, names, everything, workers, timeout,
                                 progress)
    except WarmError as exc:
        progress.close()
        print(f"squid-helper warm: {exc}", file=err, flush=True)
        return 1
    progress.close()
    summary = summarize(outcomes, tree, proxy, time.monotonic() - started)
    failures = [o for o in outcomes if o.result == FAILED]
    for outcome in failures:
        print(f"FAILED {outcome.file.path}: {outcome.message}", file=err)
    for name in missing:
        print(f"FAILED package {name!r}: not in {tree} (the repository's primary metadata "
              "has no package of that name)", file=err)
    err.flush()
    print(format_summary(summary) + (f"; {len(missing)} package name(s) not found"
                                     if missing else ""), file=out, flush=True)
    return 1 if failures or missing else 0
