"""The resolver's policies (squid_helper.resolve.decide) as pure functions: no memo, no clock,
no network; `now` is a number the test picks."""

from __future__ import annotations

import random
from typing import Dict, Optional

from squid_helper.facts.lifetimes import Fact
from squid_helper.facts.memo import Stored
from squid_helper.resolve import decide
from squid_helper.resolve.decide import (
    AT_ONCE,
    LAST_KNOWN,
    MEMO,
    NOT_FOUND,
    PROBE,
    PUBLISH,
    UNAVAILABLE,
    PathFacts,
    Snapshot,
)
from squid_helper.resolve.health import HostState, host_state
from squid_helper.resolve.probe import FAILED, MISSING
from squid_helper.resolve.selection import FRESH, STALE, DownloadSpeed
from squid_helper.resolve.survey import Survey
from squid_helper.resolve.urls import REPOMD_PATH, RepoPath

A, B, C = "http://a.example/r/", "http://b.example/r/", "http://c.example/r/"
PACKAGE = RepoPath("r", "9", "x86_64", "Packages/p-1.0.rpm")
OTHER = RepoPath("r", "9", "x86_64", "Packages/readme.txt")
REPOMD = RepoPath("r", "9", "x86_64", REPOMD_PATH)
ROOT = RepoPath("r", "9", "x86_64", "")
NOW = 10_000.0
TTL = 3600.0
DRAW = random.Random(1)
OK = HostState(failing=False, on_probation=False, heard_at=NOW - 1)


def survey(verdicts: Dict[str, Optional[str]]) -> Survey:
    ranked = tuple(b for b, v in verdicts.items() if v is not None and v != STALE)
    return Survey(tuple(verdicts), verdicts, ranked, True, "test.0")


def memoised(request: RepoPath, base: str, learnt: float) -> Stored:
    return Stored({"url": request.on(base), "base": base}, learnt)


FACTS = PathFacts(Fact("path:p", TTL, None), Fact("miss:p", 60.0, 60.0),
                  Fact("refresh-check:r", 30.0, 30.0))


def snapshot(request: RepoPath = PACKAGE, now: float = NOW, **fields) -> Snapshot:
    return Snapshot(request, now, FACTS, **fields)


# -- freshness of memoised answers (TTL) ------------------------------------------------------
def test_a_memoised_answer_holds_for_its_ttl_and_not_a_second_longer():
    answer = memoised(PACKAGE, A, learnt=NOW)
    held = decide.memo_answer(snapshot(answer=answer, hosts={A: OK}, now=NOW + TTL - 1))
    assert held.url == PACKAGE.on(A) and held.status == MEMO and held.fresh_for == 1.0
    assert decide.memo_answer(snapshot(answer=answer, hosts={A: OK}, now=NOW + TTL)) is None


def test_a_memoised_miss_holds_while_fresh_and_only_without_a_good_answer():
    miss = Stored("no mirror has it", NOW)
    found = decide.memo_answer(snapshot(miss=miss, now=NOW + 59))
    assert (found.url, found.status, found.reason, found.fresh_for) == (
        None, NOT_FOUND, "no mirror has it", 1.0)
    assert decide.memo_answer(snapshot(miss=miss, now=NOW + 60)) is None


# -- health and probation ---------------------------------------------------------------------
def test_a_host_is_failing_while_its_mark_is_fresh_then_on_probation_until_it_answers():
    mark = Stored("timed out", NOW)
    assert host_state(mark, 120.0, None, None, NOW + 119) == HostState(True, False, None)
    later = host_state(mark, 120.0, None, None, NOW + 120)
    assert later == HostState(failing=False, on_probation=True)
    assert not later.trusted
    assert host_state(None, 120.0, None, NOW, NOW + 120).trusted


def test_a_host_that_asked_to_be_left_alone_fails_until_then():
    assert host_state(None, 120.0, NOW + 30, None, NOW + 29).failing
    assert not host_state(None, 120.0, NOW + 30, None, NOW + 30).failing


def test_a_dead_mirrors_memoised_answer_ends_and_stays_ended_on_probation():
    answer = memoised(PACKAGE, A, learnt=NOW)
    failing = HostState(failing=True, on_probation=False)
    probation = HostState(failing=False, on_probation=True)
    assert decide.memo_answer(snapshot(answer=answer, hosts={A: failing})) is None
    assert decide.memo_answer(snapshot(answer=answer, hosts={A: probation})) is None


def test_failover_leaves_out_failing_mirrors_and_says_so():
    trace: list = []
    state = snapshot(hosts={A: HostState(True, False), B: OK, C: OK})
    assert decide.candidates(state, (A, B, C), trace, DRAW) == [B, C]
    assert trace == [f"skipped unhealthy: {A}"]


def test_failover_puts_the_fresh_mirror_squid_downloads_fastest_from_first():
    state = snapshot(survey=survey({A: FRESH, B: FRESH, C: FRESH}), hosts={A: OK, B: OK, C: OK},
                     speeds={B: DownloadSpeed(9e6, 9e6), C: DownloadSpeed(1e6, 1e6)})
    assert decide.candidates(state, (A, B, C), [], DRAW) == [B, C, A]


# -- stale ------------------------------------------------------------------------------------
def test_a_mirror_the_survey_found_stale_loses_its_memoised_answer():
    answer = memoised(PACKAGE, A, learnt=NOW)
    behind = survey({A: STALE, B: FRESH})
    assert decide.memo_answer(snapshot(answer=answer, hosts={A: OK}, survey=behind)) is None
    current = survey({A: FRESH, B: STALE})
    assert decide.memo_answer(snapshot(answer=answer, hosts={A: OK},
                                       survey=current)).url == PACKAGE.on(A)


# -- shunned ----------------------------------------------------------------------------------
SHUNNED = {A: "Squid's fetch failed"}


def test_a_shunned_mirror_is_never_answered_from_the_memo():
    answer = memoised(PACKAGE, A, learnt=NOW)
    assert decide.memo_answer(snapshot(answer=answer, hosts={A: OK}, shunned=SHUNNED)) is None


def test_a_shunned_mirror_is_no_candidate_and_never_the_only_mirror():
    trace: list = []
    state = snapshot(hosts={A: OK, B: OK}, shunned=SHUNNED)
    assert decide.candidates(state, (A, B), trace, DRAW) == [B]
    assert trace == [f"shunned for this path: {A} (Squid's fetch failed)"]
    assert decide.only_mirror(state, (A,)) is None
    assert decide.only_mirror(snapshot(hosts={A: OK}), (A,)) == A


def test_a_shunned_mirror_is_not_asked_again_when_every_other_is_unhealthy():
    state = snapshot(survey=survey({A: FRESH, B: FRESH}), shunned=SHUNNED)
    trace: list = []
    assert decide.retry_candidates(state, [], trace) == [B]
    assert decide.retry_candidates(snapshot(survey=survey({A: FRESH}), shunned=SHUNNED),
                                   [], []) == []


def test_a_shunned_mirror_is_no_last_known_answer():
    answer = memoised(PACKAGE, A, learnt=NOW - 2 * TTL)
    fallen = decide.fallback(snapshot(answer=answer, shunned=SHUNNED), [], "all failed")
    assert (fallen.url, fallen.status, fallen.reason) == (None, UNAVAILABLE, "all failed")


def test_shunning_is_for_its_path_only():
    assert decide.allowed(snapshot(request=OTHER, shunned={}), A)
    assert not decide.allowed(snapshot(shunned=SHUNNED), A)


# -- last-known -------------------------------------------------------------------------------
def test_the_last_known_answer_is_used_when_nothing_can_be_verified():
    answer = memoised(PACKAGE, A, learnt=NOW - 2 * TTL)
    trace: list = []
    fallen = decide.fallback(snapshot(answer=answer), trace, "no mirror answered")
    assert (fallen.url, fallen.status) == (PACKAGE.on(A), LAST_KNOWN)
    assert trace == ["no mirror answered; using the last-known answer"]
    nothing = decide.fallback(snapshot(), [], "no mirror answered")
    assert (nothing.url, nothing.status) == (None, UNAVAILABLE)


# -- optimistic answers, and the plan after a survey ------------------------------------------
def test_a_snapshot_file_goes_at_once_to_the_fresh_trusted_mirror_heard_from_recently():
    state = snapshot(survey=survey({A: FRESH, B: FRESH}), hosts={A: OK, B: OK})
    assert decide.plan(state, [A, B], may_verify_later=True) == decide.Plan(
        AT_ONCE, (A, B), "it served the current repomd.xml")


def test_no_answer_at_once_without_a_recent_word_trust_or_a_free_verification():
    fresh = survey({A: FRESH, B: FRESH})
    silent = HostState(False, False, heard_at=NOW - decide.RECENTLY)
    assert decide.plan(snapshot(survey=fresh, hosts={A: silent}), [A, B], True).action == PROBE
    on_probation = HostState(False, True, heard_at=NOW)
    assert decide.plan(snapshot(survey=fresh, hosts={A: on_probation}), [A, B],
                       True).action == PROBE
    assert decide.plan(snapshot(survey=fresh, hosts={A: OK}), [A, B], False).action == PROBE
    assert decide.plan(snapshot(request=OTHER, survey=fresh, hosts={A: OK}), [A, B],
                       True).action == PROBE


def test_repomd_goes_to_the_first_mirror_that_served_the_current_one():
    state = snapshot(request=REPOMD, survey=survey({A: STALE, B: FRESH}), hosts={B: OK})
    assert decide.plan(state, [B], True) == decide.Plan(
        PUBLISH, (B,), "served the current repomd.xml to the survey")


def test_the_repo_root_is_probed_on_current_mirrors_only():
    state = snapshot(request=ROOT, survey=survey({A: "unknown", B: FRESH}))
    assert decide.plan(state, [A, B], True) == decide.Plan(PROBE, (B,))


# -- refresh rate limit -----------------------------------------------------------------------
def test_a_no_cache_refresh_of_repomd_is_due_once_per_interval():
    def due(checked: Optional[Stored], now: float, request: RepoPath = REPOMD,
            asked: bool = True) -> bool:
        return decide.refresh_due(snapshot(request=request, now=now, refresh_asked=asked,
                                           refresh_checked=checked))

    assert due(None, NOW)
    checked = Stored(True, NOW)
    assert not due(checked, NOW + 29.9)
    assert due(checked, NOW + 30)
    assert not due(None, NOW, asked=False)
    assert not due(None, NOW, request=PACKAGE)  # only repomd.xml follows a push at once


# -- after the probes -------------------------------------------------------------------------
def test_not_found_only_when_every_probed_mirror_answered_404():
    assert decide.nobody_has(PACKAGE, {A: MISSING, B: MISSING}) == \
        "no mirror has Packages/p-1.0.rpm (2 answered 404)"
    assert decide.nobody_has(PACKAGE, {A: MISSING, B: FAILED}) is None
    assert decide.nobody_has(PACKAGE, {}) is None
    assert decide.unavailable_why(PACKAGE, [A, B], {A: MISSING, B: FAILED}) == \
        "no mirror answered for Packages/p-1.0.rpm (1 failed)"


def test_mirrors_whose_probe_budget_is_spent_are_answered_unprobed():
    trace: list = []
    spent = decide.unprobed(PACKAGE, [A, B], {A: None}, trace)
    assert (spent.url, spent.status) == (PACKAGE.on(B), decide.OPTIMISTIC)
    assert decide.unprobed(PACKAGE, [A], {A: None}, []) is None
