"""Unit tests for squid_helper.resolve.selection: freshness verdicts and mirror ordering."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from squid_helper.config.files import parse_config
from squid_helper.config.settings import Config
from squid_helper.resolve.selection import (
    ALTERNATE,
    FAILED,
    FRESH,
    STALE,
    UNKNOWN,
    Observation,
    digest_usable,
    drop_unhealthy,
    newer_than_metalink,
    observe,
    order_by_speed,
    rank_mirrors,
    survey_wait,
    verdicts,
)
from squid_helper.resolve.sources import MirrorSet, RepomdDigest, parse_mirrorlist
from squid_helper.resolve.urls import expand_template


def make_config(text: str) -> Config:
    return parse_config(text, "test.yaml")


def repomd(revision: int, timestamp: int) -> bytes:
    return (f'<?xml version="1.0"?>\n<repomd xmlns="http://linux.duke.edu/metadata/repo">'
            f"<revision>{revision}</revision><data type=\"primary\">"
            f"<timestamp>{timestamp}</timestamp></data></repomd>").encode()


NEW, OLD, OLDER = repomd(300, 3000), repomd(200, 2000), repomd(100, 1000)


def digest(content: bytes) -> RepomdDigest:
    return RepomdDigest(len(content), {"sha256": hashlib.sha256(content).hexdigest()})


A, B, C, D, E = (f"http://{name}.example.org/os/" for name in "abcde")
STATIC = MirrorSet((A, B, C))
METALINK = MirrorSet((A, B, C), expected=digest(NEW), alternates=(digest(OLD),))


# --- observe ------------------------------------------------------------------------------


def test_observe_without_metalink():
    assert observe(NEW, STATIC) == Observation("ok", (300, 3000), None)
    assert observe(OLD, STATIC) == Observation("ok", (200, 2000), None)


def test_observe_against_metalink():
    assert observe(NEW, METALINK) == Observation("ok", (300, 3000), "expected")
    assert observe(OLD, METALINK) == Observation("ok", (200, 2000), "alternate")
    assert observe(OLDER, METALINK) == Observation("ok", (100, 1000), "mismatch")


def test_observe_expected_wins_over_alternate():
    both = MirrorSet((A,), expected=digest(NEW), alternates=(digest(NEW),))
    assert observe(NEW, both).digest == "expected"


def test_observe_any_alternate_matches():
    many = MirrorSet((A,), expected=digest(NEW), alternates=(digest(OLDER), digest(OLD)))
    assert observe(OLD, many).digest == "alternate"
    assert observe(OLDER, many).digest == "alternate"


def test_observe_metalink_without_alternates():
    plain = MirrorSet((A,), expected=digest(NEW))
    assert observe(OLD, plain).digest == "mismatch"


@pytest.mark.parametrize("content", [b"", b"<html>Not Found</html>", b"captive portal"])
def test_observe_non_repomd_counts_as_missing(content):
    assert observe(content, METALINK) == Observation("missing")
    assert observe(content, STATIC) == Observation("missing")


# --- verdicts without digest ---------------------------------------------------------------


def test_verdicts_by_age():
    observations = {A: observe(OLD, STATIC), B: observe(NEW, STATIC), C: observe(NEW, STATIC)}
    assert verdicts([A, B, C], observations, use_digest=False) == {A: STALE, B: FRESH, C: FRESH}


def test_verdicts_unknown_failed_missing():
    observations = {A: Observation("failed"), B: Observation("missing"), D: observe(NEW, STATIC)}
    assert verdicts([A, B, C, D], observations, use_digest=False) == {
        A: FAILED, B: None, C: UNKNOWN, D: FRESH}


def test_verdicts_newest_is_judged_over_all_observations():
    # an observation of a base outside `bases` still sets what "newest" means
    observations = {A: observe(OLD, STATIC), E: observe(NEW, STATIC)}
    assert verdicts([A], observations, use_digest=False) == {A: STALE}


def test_verdicts_same_revision_older_timestamp_is_stale():
    observations = {A: observe(repomd(5, 10), STATIC), B: observe(repomd(5, 11), STATIC)}
    assert verdicts([A, B], observations, use_digest=False) == {A: STALE, B: FRESH}


def test_verdicts_all_same_age_are_fresh():
    observations = {b: observe(OLD, STATIC) for b in (A, B, C)}
    assert set(verdicts([A, B, C], observations, use_digest=False).values()) == {FRESH}


def test_verdicts_with_no_observations():
    assert verdicts([A, B], {}, use_digest=False) == {A: UNKNOWN, B: UNKNOWN}
    assert verdicts([], {}, use_digest=True) == {}


def test_verdicts_ignore_failed_when_finding_the_newest():
    observations = {A: Observation("failed", (999, 999)), B: observe(OLD, STATIC)}
    assert verdicts([A, B], observations, use_digest=False) == {A: FAILED, B: FRESH}


# --- verdicts with digest ------------------------------------------------------------------


def test_verdicts_by_digest():
    observations = {A: observe(OLDER, METALINK), B: observe(OLD, METALINK),
                    C: observe(NEW, METALINK)}
    assert verdicts([A, B, C], observations, use_digest=True) == {
        A: None, B: ALTERNATE, C: FRESH}


def test_verdicts_by_digest_a_newer_mismatch_is_usable_never_fresh():
    # A repomd newer than the metalink's: a push the metalink does not know yet. Usable, never
    # stale, but never preferred to what the metalink vouches for.
    newer = observe(repomd(999, 9999), METALINK)
    assert newer.digest == "mismatch"
    observations = {A: newer, B: observe(NEW, METALINK)}
    assert verdicts([A, B], observations, use_digest=True) == {A: UNKNOWN, B: FRESH}
    assert rank_mirrors([A, B], verdicts([A, B], observations, use_digest=True)) == [B, A]
    # judged by age instead, the same answers rank the other way round
    assert verdicts([A, B], observations, use_digest=False) == {A: FRESH, B: STALE}


def test_verdicts_by_digest_an_older_mismatch_is_unusable():
    observations = {A: observe(OLDER, METALINK), B: observe(NEW, METALINK)}
    assert verdicts([A, B], observations, use_digest=True) == {A: None, B: FRESH}


def test_newer_than_metalink():
    newer = observe(repomd(999, 9999), METALINK)
    assert newer_than_metalink({A: newer, B: observe(NEW, METALINK)}) == [A]
    assert newer_than_metalink({A: newer, B: observe(OLD, METALINK)}) == [A]  # alternate
    assert newer_than_metalink({A: observe(OLDER, METALINK), B: observe(NEW, METALINK)}) == []
    # Nothing matches the metalink: nothing to be newer than (the caller refetches anyway).
    assert newer_than_metalink({A: newer}) == []
    assert newer_than_metalink({A: observe(NEW, STATIC)}) == []


def test_verdicts_by_digest_keep_failed_unknown_missing():
    observations = {A: Observation("failed"), B: Observation("missing")}
    assert verdicts([A, B, C], observations, use_digest=True) == {
        A: FAILED, B: None, C: UNKNOWN}


def test_verdicts_by_digest_without_a_digest_is_unusable():
    observations = {A: observe(NEW, STATIC)}
    assert verdicts([A], observations, use_digest=True) == {A: None}


# --- digest_usable ------------------------------------------------------------------------


def test_digest_usable():
    assert digest_usable({A: observe(NEW, METALINK)})
    assert digest_usable({A: observe(OLDER, METALINK), B: observe(NEW, METALINK)})
    assert not digest_usable({A: observe(OLD, METALINK), B: observe(OLDER, METALINK)})
    assert not digest_usable({A: Observation("failed"), B: Observation("missing")})
    assert not digest_usable({A: observe(NEW, STATIC)})
    assert not digest_usable({})


def test_suspect_metalink_falls_back_to_age():
    # Every mirror disagrees with the metalink (say, the metalink is newer than any mirror):
    # the caller judges by age, so the newest mirrors are still used.
    observations = {A: observe(OLD, METALINK), B: observe(OLDER, METALINK)}
    use_digest = digest_usable(observations)
    assert use_digest is False
    ranked = rank_mirrors([A, B, C], verdicts([A, B, C], observations, use_digest))
    assert ranked == [A, C, B]


# --- rank_mirrors -------------------------------------------------------------------------


def test_rank_mirrors_orders_by_tier():
    verdict = {A: STALE, B: FAILED, C: UNKNOWN, D: ALTERNATE, E: FRESH}
    assert rank_mirrors([A, B, C, D, E], verdict) == [E, D, C, B, A]


def test_rank_mirrors_keeps_source_order_within_a_tier():
    verdict = {A: FRESH, B: STALE, C: FRESH, D: STALE, E: FRESH}
    assert rank_mirrors([A, B, C, D, E], verdict) == [A, C, E, B, D]
    assert rank_mirrors([E, D, C, B, A], verdict) == [E, C, A, D, B]


def test_rank_mirrors_drops_unusable():
    verdict = {A: None, B: FRESH, C: None}
    assert rank_mirrors([A, B, C], verdict) == [B]
    assert rank_mirrors([A, C], verdict) == []


def test_rank_mirrors_unjudged_bases_are_unknown():
    assert rank_mirrors([A, B, C], {B: STALE, C: FRESH}) == [C, A, B]


def test_rank_mirrors_only_returns_given_bases():
    assert rank_mirrors([B], {A: FRESH, B: STALE}) == [B]
    assert rank_mirrors([], {A: FRESH}) == []


def test_full_survey_ranking():
    mirrors = parse_mirrorlist("\n".join([A, B, C, D, E]))
    observations = {
        A: observe(OLD, mirrors),
        B: Observation("failed"),
        C: observe(NEW, mirrors),
        D: observe(b"<html>404</html>", mirrors),
    }
    ranked = rank_mirrors(mirrors.bases, verdicts(mirrors.bases, observations, False))
    assert ranked == [C, E, B, A]
    assert drop_unhealthy(ranked, {B}) == [C, E, A]


def test_ranking_static_mirrors_from_config():
    config = make_config("repos:\n  r:\n    mirrors:\n      - http://one/{releasever}/{arch}\n"
                         "      - http://two/{releasever}/{arch}\n")
    bases = [expand_template(t, "9", "x86_64") for t in config.repos["r"].templates]
    assert bases == ["http://one/9/x86_64/", "http://two/9/x86_64/"]
    observations = {bases[0]: Observation("ok", (1, 1)), bases[1]: Observation("ok", (2, 2))}
    assert rank_mirrors(bases, verdicts(bases, observations, False)) == bases[::-1]


@given(st.lists(st.sampled_from([A, B, C, D, E]), unique=True),
       st.dictionaries(st.sampled_from([A, B, C, D, E]),
                       st.sampled_from([FRESH, ALTERNATE, UNKNOWN, FAILED, STALE, None])))
def test_rank_mirrors_properties(bases, verdict):
    ranked = rank_mirrors(bases, verdict)
    assert set(ranked) == {b for b in bases if verdict.get(b, UNKNOWN) is not None}
    order = [FRESH, ALTERNATE, UNKNOWN, FAILED, STALE]
    tiers = [order.index(verdict.get(b, UNKNOWN)) for b in ranked]
    assert tiers == sorted(tiers)
    for earlier, later in zip(ranked, ranked[1:]):
        if verdict.get(earlier, UNKNOWN) == verdict.get(later, UNKNOWN):
            assert bases.index(earlier) < bases.index(later)


# --- drop_unhealthy -----------------------------------------------------------------------


def test_drop_unhealthy():
    assert drop_unhealthy([A, B, C], [B]) == [A, C]
    assert drop_unhealthy([A, B, C], []) == [A, B, C]
    assert drop_unhealthy([A, B, C], [A, B, C, D]) == []
    assert drop_unhealthy([], [A]) == []


def test_drop_unhealthy_accepts_iterators_and_keeps_order():
    assert drop_unhealthy(iter([C, A, B]), iter([A])) == [C, B]
    assert drop_unhealthy((b for b in [C, A, B]), {E}) == [C, A, B]


# --- survey_wait ----------------------------------------------------------------------------
WINDOW = 0.25


def test_survey_decides_at_once_on_a_metalink_hash_match():
    seen = {A: observe(NEW, METALINK)}
    assert survey_wait(3, seen, True, 0.0, 0.01, WINDOW, 0.01) is None


def test_survey_with_a_metalink_waits_past_alternates_and_mismatches():
    seen = {A: observe(OLD, METALINK), B: observe(OLDER, METALINK)}
    assert survey_wait(3, seen, True, 0.0, 0.01, WINDOW, 0.02) == pytest.approx(0.24)


def test_survey_without_a_hash_waits_a_window_after_the_first_answer():
    seen = {A: observe(NEW, STATIC)}
    assert survey_wait(3, seen, False, 0.0, 0.01, WINDOW, 0.01) == pytest.approx(0.25)
    assert survey_wait(3, seen, False, 0.0, 0.01, WINDOW, 0.26) is None


def test_survey_window_grows_with_a_far_first_answer():
    # The first answer took 0.4 s: the others get as long again, not only the window.
    seen = {A: observe(NEW, STATIC)}
    assert survey_wait(2, seen, False, 1.0, 1.4, WINDOW, 1.7) == pytest.approx(0.1)
    assert survey_wait(2, seen, False, 1.0, 1.4, WINDOW, 1.8) is None


def test_survey_failures_alone_do_not_start_the_window():
    seen = {A: Observation("failed"), B: Observation("missing")}
    assert survey_wait(3, seen, False, 0.0, None, WINDOW, 5.0) == float("inf")


def test_survey_ends_when_every_mirror_answered():
    seen = {A: Observation("failed"), B: Observation("missing")}
    assert survey_wait(2, seen, False, 0.0, None, WINDOW, 0.0) is None
    assert survey_wait(0, {}, True, 0.0, None, WINDOW, 0.0) is None


# --- order_by_speed -------------------------------------------------------------------------


def test_fastest_fresh_mirror_comes_first():
    verdict = {A: FRESH, B: FRESH, C: STALE}
    assert order_by_speed([A, B, C], verdict, {A: 0.3, B: 0.1, C: 0.01}) == [B, A, C]


def test_unmeasured_mirrors_keep_the_source_order_after_measured_ones():
    verdict = {A: FRESH, B: FRESH, C: FRESH, D: FRESH}
    assert order_by_speed([A, B, C, D], verdict, {C: 0.2}) == [C, A, B, D]


def test_speed_never_beats_freshness():
    verdict = {A: FRESH, B: ALTERNATE, C: UNKNOWN}
    assert order_by_speed([A, B, C], verdict, {A: 9.0, B: 0.1, C: 0.01}) == [A, B, C]


def test_the_current_choice_stays_unless_another_is_clearly_faster():
    verdict = {A: FRESH, B: FRESH}
    assert order_by_speed([A, B], verdict, {A: 0.100, B: 0.080}, current=A) == [A, B]
    assert order_by_speed([A, B], verdict, {A: 0.100, B: 0.070}, current=A) == [B, A]
    # Without a measurement of the current choice, measurements decide.
    assert order_by_speed([A, B], verdict, {B: 0.080}, current=A) == [B, A]
    # A current choice that is no longer usable is simply not there.
    assert order_by_speed([B], {B: FRESH}, {A: 0.01, B: 0.5}, current=A) == [B]


@given(st.lists(st.sampled_from([A, B, C, D, E]), unique=True),
       st.dictionaries(st.sampled_from([A, B, C, D, E]),
                       st.sampled_from([FRESH, ALTERNATE, UNKNOWN, FAILED, STALE])),
       st.dictionaries(st.sampled_from([A, B, C, D, E]), st.floats(0.0, 10.0)),
       st.sampled_from([None, A, B, C, D, E]))
def test_order_by_speed_is_a_reordering_within_tiers(bases, verdict, latency, current):
    ranked = rank_mirrors(bases, verdict)
    ordered = order_by_speed(ranked, verdict, latency, current)
    assert sorted(ordered) == sorted(ranked)
    order = [FRESH, ALTERNATE, UNKNOWN, FAILED, STALE]
    tiers = [order.index(verdict.get(b, UNKNOWN)) for b in ordered]
    assert tiers == sorted(tiers)
