"""MirrorHealth on a real memo (a directory of this test's), with a fake clock: the host rules
(hostrules) as every helper process applies them, and one budget per host whatever the
release, arch or repo a request is for."""

from __future__ import annotations

import pytest
import yaml

from squid_helper.config.settings import parse_yaml_config
from squid_helper.facts.lifetimes import Lifetimes
from squid_helper.facts.memo import Memo
from squid_helper.resolve.health import MirrorHealth
from squid_helper.resolve.probe import ERROR, FAILED, ProbeResult

MIRROR = "http://mirror.example/pub/"
UNHEALTHY_TTL = 120


class FakeClock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def health(tmp_path):
    config = parse_yaml_config(yaml.safe_dump({
        "cache_dir": str(tmp_path / "memo"), "unhealthy_ttl": UNHEALTHY_TTL,
        "max_probes_per_second": 3,
        "repos": {"r": {"mirrors": [MIRROR + "{releasever}/{arch}/"]}}}))
    memo = Memo.of(config)
    # The budget is keyed by the clock's second: a fake one cannot cross a second mid-test.
    yield MirrorHealth(memo, Lifetimes(config), clock=FakeClock(1_700_000_000.25))
    memo.close()


def timeout(path: str) -> ProbeResult:
    return ProbeResult(MIRROR + path, FAILED, "timeout after 5.0s", 5.0, timed_out=True)


def test_a_timeout_is_one_paths_until_three_paths_time_out(health):
    health.record(timeout("9/x86_64/Packages/slow.rpm"))
    health.record(timeout("9/x86_64/Packages/slow.rpm"))  # the same path: no new evidence
    health.record(timeout("9/x86_64/Packages/slower.rpm"))
    assert health.is_healthy(MIRROR)
    health.record(timeout("9/x86_64/Packages/slowest.rpm"))
    assert not health.is_healthy(MIRROR)


def test_a_timeout_of_the_mirror_list_marks_at_once(health):
    health.record(ProbeResult(MIRROR + "list", FAILED, "timeout after 5.0s", 5.0,
                              timed_out=True), conclusive=True)
    assert not health.is_healthy(MIRROR)


def test_a_refused_connection_marks_at_once(health):
    health.record(ProbeResult(MIRROR + "a.rpm", FAILED, "connection failed (refused)", 0.0))
    assert not health.is_healthy(MIRROR)


def test_a_retry_after_of_ten_minutes_is_heeded_for_unhealthy_ttl(health):
    health.record(ProbeResult(MIRROR + "a.rpm", ERROR, "HEAD 429", 0.01, retry_after=600.0))
    assert not health.is_healthy(MIRROR)
    until = health.memo.last(health.lifetimes.backoff("mirror.example")).value
    assert until == health.clock() + UNHEALTHY_TTL


def test_one_budget_for_every_release_arch_and_repo_of_a_host(health):
    urls = [MIRROR + "9/x86_64/", MIRROR + "z1/x86_64/", "http://mirror.example/other/z2/"]
    assert [health.may_probe(u) for u in urls] == [True, True, True]
    assert not health.may_probe(MIRROR + "z3/aarch64/")
    assert health.may_probe("http://elsewhere.example/pub/")  # another host: its own budget
    health.clock.now += 1
    assert health.may_probe(MIRROR + "z4/x86_64/")


def test_a_survey_asks_the_first_mirrors_with_budget_left(health):
    for _ in range(3):
        assert health.may_probe(MIRROR)
    other, third = "http://b.example/pub/", "http://c.example/pub/"
    assert health.within_budget([MIRROR, other, third], 1) == [other]
    assert health.within_budget([MIRROR], 1) == []
