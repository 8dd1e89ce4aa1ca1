"""The resolver's policies end to end through its real pipeline, with a fake clock and a fake
prober (mirrors as a dict: no network, no sleeps); the memo is a diskcache in tmp_path."""

from __future__ import annotations

import textwrap
from typing import Dict, List, Optional, Tuple

import pytest

from squid_helper.config.settings import parse_yaml_config
from squid_helper.facts.memo import Memo
from squid_helper.resolve.probe import FAILED, FOUND, MISSING, ProbeResult
from squid_helper.resolve.resolver import (
    LAST_KNOWN,
    MEMO,
    OPTIMISTIC,
    UNAVAILABLE,
    VERIFIED,
    Resolver,
)
from squid_helper.resolve.urls import REPOMD_PATH, RepoPath

A, B = "http://a.example/r/9/x86_64/", "http://b.example/r/9/x86_64/"
PACKAGE = RepoPath("r", "9", "x86_64", "Packages/p-1.0.rpm")
TEXT = RepoPath("r", "9", "x86_64", "Packages/readme.txt")
REPOMD = RepoPath("r", "9", "x86_64", REPOMD_PATH)
REPOMD_XML = b'<repomd><revision>7</revision><data><timestamp>70</timestamp></data></repomd>'
PATH_TTL, UNHEALTHY_TTL = 3600.0, 120.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeProber:
    """Mirrors by base URL: a dict of the paths each holds, or None for a dead host."""

    def __init__(self, mirrors: Dict[str, Optional[Dict[str, bytes]]]):
        self.mirrors = mirrors
        self.asked: List[Tuple[str, str]] = []  # (kind, url)

    def _answer(self, kind: str, url: str) -> ProbeResult:
        self.asked.append((kind, url))
        base = next(b for b in self.mirrors if url.startswith(b))
        files = self.mirrors[base]
        if files is None:
            return ProbeResult(url, FAILED, "connection refused", 0.01)
        path = url[len(base):]
        if path not in files:
            return ProbeResult(url, MISSING, f"{kind} 404", 0.01)
        return ProbeResult(url, FOUND, f"{kind} 200", 0.01,
                           content=files[path] if kind == "GET" else None)

    def probe(self, url: str) -> ProbeResult:
        return self._answer("HEAD", url)

    def fetch(self, url: str, validators: tuple = ()) -> ProbeResult:
        return self._answer("GET", url)

    def close(self) -> None:
        pass

    def probes(self) -> List[str]:
        return [url for kind, url in self.asked if kind == "HEAD"]


def holding(*paths: str) -> Dict[str, bytes]:
    return {REPOMD_PATH: REPOMD_XML, **{p: b"" for p in paths}}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make(tmp_path, clock):
    resolvers: List[Resolver] = []

    def make(mirrors: Dict[str, Optional[Dict[str, bytes]]]) -> Tuple[Resolver, FakeProber]:
        config = parse_yaml_config(textwrap.dedent(f"""\
            cache_dir: {tmp_path}
            log_file: null
            path_ttl: {PATH_TTL}
            unhealthy_ttl: {UNHEALTHY_TTL}
            repos:
              r: {{mirrors: [{", ".join(f'"{b.replace("9/x86_64", "{releasever}/{arch}")}"'
                                        for b in mirrors)}]}}
            """))
        prober = FakeProber(mirrors)
        resolver = Resolver(config, Memo(str(tmp_path / "memo"), clock=clock), prober)
        resolvers.append(resolver)
        return resolver, prober

    yield make
    for resolver in resolvers:
        resolver.close()


def settled(resolver: Resolver, request: RepoPath) -> None:
    """Wait for the background verification of an answer given at once, if it still runs."""
    verifying = resolver.flights.running(resolver.lifetimes.answer(request).key)
    if verifying is not None:
        verifying.result(timeout=5)


def shun(resolver: Resolver, request: RepoPath, base: str, why: str) -> None:
    resolver.memo.shun(resolver.lifetimes.shunned(request), resolver.lifetimes.answer(request),
                       base, why)


def test_the_first_answer_is_the_mirror_that_has_it_and_ends_with_its_ttl(make, clock):
    resolver, prober = make({A: holding(), B: holding(TEXT.path)})
    first = resolver.resolve(TEXT)
    assert (first.url, first.status) == (TEXT.on(B), VERIFIED)
    held = resolver.cached(TEXT)
    assert (held.url, held.status, held.fresh_for) == (TEXT.on(B), MEMO, PATH_TTL)
    clock.advance(PATH_TTL - 1)
    assert resolver.cached(TEXT).fresh_for == 1.0
    clock.advance(1)
    assert resolver.cached(TEXT) is None


def test_a_snapshot_file_is_answered_at_once_by_the_fresh_mirror(make):
    resolver, prober = make({A: holding(PACKAGE.path), B: holding(PACKAGE.path)})
    assert resolver.resolve(REPOMD).url == REPOMD.on(A)
    answer = resolver.resolve(PACKAGE)
    assert (answer.url, answer.status) == (PACKAGE.on(A), OPTIMISTIC)
    settled(resolver, PACKAGE)
    verified = resolver.cached(PACKAGE)
    assert (verified.url, verified.status) == (PACKAGE.on(A), MEMO)
    assert prober.probes() == [PACKAGE.on(A)]


def test_a_dead_mirrors_memoised_answer_ends_at_once_and_not_with_its_ttl(make, clock):
    resolver, prober = make({A: holding(TEXT.path), B: holding(TEXT.path)})
    assert resolver.resolve(TEXT).url == TEXT.on(A)
    resolver.health.record(ProbeResult(TEXT.on(A), FAILED, "connection refused", 0.01))
    assert resolver.cached(TEXT) is None
    moved = resolver.resolve(TEXT)
    assert (moved.url, moved.status) == (TEXT.on(B), VERIFIED)


def test_a_mirror_on_probation_is_asked_again_before_its_answer_is_reused(make, clock):
    resolver, prober = make({A: holding(TEXT.path)})
    assert resolver.resolve(TEXT).url == TEXT.on(A)  # the only mirror: at once, verified after
    settled(resolver, TEXT)
    resolver.health.record(ProbeResult(A, FAILED, "timed out", 5.0))
    clock.advance(UNHEALTHY_TTL - 1)
    assert resolver.cached(TEXT) is None  # failing
    clock.advance(1)  # the mark ran out: A is on probation, not trusted yet
    assert resolver.cached(TEXT) is None
    asked = len(prober.asked)
    assert resolver.resolve(TEXT).url == TEXT.on(A)
    assert prober.asked[asked] == ("GET", REPOMD.on(A))  # heard from before it is reused
    assert resolver.cached(TEXT).status == MEMO  # it answered: trusted again


def test_a_shunned_mirror_never_answers_for_that_path(make):
    resolver, prober = make({A: holding(PACKAGE.path, TEXT.path), B: holding(PACKAGE.path)})
    assert resolver.resolve(REPOMD).url == REPOMD.on(A)  # A comes first
    shun(resolver, PACKAGE, A, "Squid's fetch failed")
    answer = resolver.resolve(PACKAGE, settle=True)
    assert answer.url == PACKAGE.on(B)
    assert PACKAGE.on(A) not in prober.probes()
    assert resolver.cached(PACKAGE).url == PACKAGE.on(B)
    assert resolver.resolve(TEXT).url == TEXT.on(A)  # shunned for one path only


def test_a_shunned_memoised_answer_ends_and_is_no_last_known_answer(make):
    resolver, prober = make({A: holding(TEXT.path)})
    assert resolver.resolve(TEXT).url == TEXT.on(A)  # the only mirror: at once, verified after
    settled(resolver, TEXT)
    shun(resolver, TEXT, A, "its bytes disagree with the repo's checksums")
    assert resolver.cached(TEXT) is None
    answer = resolver.resolve(TEXT)
    assert (answer.url, answer.status) == (None, UNAVAILABLE)
    assert prober.probes() == [TEXT.on(A)]  # the first resolution's, never again


def test_the_last_known_answer_is_used_when_every_mirror_fails(make, clock):
    resolver, prober = make({A: holding(TEXT.path), B: holding()})
    assert resolver.resolve(TEXT).url == TEXT.on(A)
    clock.advance(PATH_TTL)
    prober.mirrors[A] = prober.mirrors[B] = None
    answer = resolver.resolve(TEXT)
    assert (answer.url, answer.status) == (TEXT.on(A), LAST_KNOWN)


def test_a_no_cache_refresh_checks_the_repo_once_per_refresh_interval(make):
    resolver, prober = make({A: holding(), B: holding()})
    resolver.resolve(REPOMD)
    surveyed = len(prober.asked)
    resolver.resolve(REPOMD, refresh=True)
    assert len(prober.asked) == surveyed + 2  # both mirrors' repomd.xml again
    again = resolver.resolve(REPOMD, refresh=True)
    assert len(prober.asked) == surveyed + 2 and again.status == MEMO


def test_the_watch_tells_which_repo_changed_and_its_keeper_surveys_it_again(make):
    resolver, prober = make({A: holding(), B: holding()})
    assert resolver.resolve(REPOMD).url == REPOMD.on(A)
    watch = resolver.keeper.watch
    assert watch.changes() == []  # A serves what the survey saw
    prober.mirrors[A][REPOMD_PATH] = REPOMD_XML.replace(b"<revision>7", b"<revision>6")
    resolver.memo.delete(resolver.lifetimes.watched(A).key)  # its next look is due
    assert watch.changes() == ["r/9/x86_64"]
    resolver.keeper.resurvey("r/9/x86_64")  # A rolled back: stale, its answer goes
    moved = resolver.resolve(REPOMD)
    assert (moved.url, moved.status) == (REPOMD.on(B), VERIFIED)


def test_a_malformed_shunned_fact_shuns_nobody_and_breaks_nothing(make):
    resolver, prober = make({A: holding(TEXT.path)})
    resolver.memo.put(resolver.lifetimes.shunned(TEXT), ["not", "a", "mapping"])
    assert resolver.resolve(TEXT).url == TEXT.on(A)
