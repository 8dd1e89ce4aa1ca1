"""The freshness policies of mirror lists and surveys, as pure functions: when a mirror list is
used, refetched behind the client's back or fetched before answering; when the mirrors' answers
mean that the metalink may predate a push."""

from __future__ import annotations

from squid_helper.facts.lifetimes import Fact
from squid_helper.facts.memo import Stored
from squid_helper.resolve.mirrorlists import FETCH, REFETCH_LATER, USE, list_action
from squid_helper.resolve.selection import Observation
from squid_helper.resolve.survey import push_suspected

LIST = Fact("mirrors:r/9/x86_64", 300.0, 3600.0)
NOW = 50_000.0
KNOWN = Stored("a list", NOW)


def test_a_fresh_list_is_used_until_its_time_is_up():
    assert list_action(KNOWN, LIST, NOW + 299, force=False, needs_current_hashes=True) == USE
    assert list_action(KNOWN, LIST, NOW + 300, force=False, needs_current_hashes=True) == FETCH


def test_a_list_past_its_time_is_refetched_in_the_background_unless_hashes_are_needed():
    later = NOW + 300
    assert list_action(KNOWN, LIST, later, force=False,
                       needs_current_hashes=False) == REFETCH_LATER
    assert list_action(KNOWN, LIST, later, force=False, needs_current_hashes=True) == FETCH


def test_a_forced_refetch_or_no_list_at_all_fetches_now():
    assert list_action(KNOWN, LIST, NOW, force=True, needs_current_hashes=False) == FETCH
    assert list_action(None, LIST, NOW, force=False, needs_current_hashes=False) == FETCH


def test_a_push_is_suspected_when_a_mirror_is_newer_than_the_metalink():
    matching = Observation("ok", (10, 100), "expected")
    newer = Observation("ok", (11, 110), "mismatch")
    assert push_suspected({"a": matching, "b": newer})
    assert not push_suspected({"a": matching, "b": Observation("ok", (9, 90), "mismatch")})


def test_a_push_is_suspected_when_no_answer_matches_the_metalink():
    assert push_suspected({"a": Observation("ok", (9, 90), "mismatch")})
    assert not push_suspected({"a": Observation("failed"), "b": Observation("missing")})
