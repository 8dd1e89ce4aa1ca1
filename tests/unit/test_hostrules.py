"""hostrules: what one answer says about its host, and the host's budget (pure, a fake clock)."""

from __future__ import annotations

import pytest
import yaml

from squid_helper.config.settings import parse_yaml_config
from squid_helper.facts.lifetimes import HOST_ERROR_PATHS, HOST_ERROR_WINDOW, Lifetimes
from squid_helper.resolve.hostrules import (
    ANSWERED,
    BACK_OFF,
    HOST_DOWN,
    PATH_FAILED,
    back_off_for,
    budget_second,
    evidence,
    failing_paths,
    first_within_budget,
    host_failing,
    within_budget,
)
from squid_helper.resolve.probe import ERROR, FAILED, FOUND, MISSING, UNCHANGED

NOW = 1_700_000_000.0


@pytest.mark.parametrize("outcome, timed_out, retry_after, conclusive, judged", [
    (FAILED, False, None, False, HOST_DOWN),  # refused, TLS, unreachable: at once
    (FAILED, True, None, False, PATH_FAILED),  # one slow path is slow, not dead
    (FAILED, True, None, True, HOST_DOWN),  # the mirror list or the watch timed out
    (ERROR, False, None, False, PATH_FAILED),  # one 500 is that path's answer
    (ERROR, False, None, True, PATH_FAILED),
    (ERROR, False, 600.0, False, BACK_OFF),
    (FOUND, False, None, False, ANSWERED),
    (MISSING, False, None, False, ANSWERED),
    (UNCHANGED, False, None, True, ANSWERED),
])
def test_evidence(outcome, timed_out, retry_after, conclusive, judged):
    assert evidence(outcome, timed_out, retry_after, conclusive) == judged


@pytest.mark.parametrize("asked, ttl, wait", [
    (600.0, 120.0, 120.0),  # capped at unhealthy_ttl: no path takes a mirror for 10 minutes
    (1.0, 120.0, 1.0),  # as long as it asks, when that is shorter
    (5000.0, 3600.0, 600.0),  # never past MAX_BACKOFF
    (-5.0, 120.0, 0.0),
])
def test_a_back_off_lasts_as_asked_up_to_unhealthy_ttl(asked, ttl, wait):
    assert back_off_for(asked, ttl) == wait


def test_the_host_fails_only_when_enough_distinct_paths_fail_within_the_window():
    paths = None
    for i in range(HOST_ERROR_PATHS - 1):
        paths = failing_paths(paths, f"/p{i}", NOW + i)
        assert not host_failing(paths)
    # The same path again is no new evidence.
    paths = failing_paths(paths, "/p0", NOW + 5)
    assert not host_failing(paths)
    assert host_failing(failing_paths(paths, "/another", NOW + 6))


def test_failures_older_than_the_window_are_forgotten():
    paths = failing_paths(None, "/a", NOW)
    paths = failing_paths(paths, "/b", NOW + 1)
    later = failing_paths(paths, "/c", NOW + HOST_ERROR_WINDOW + 0.5)
    assert later == {"/b": NOW + 1, "/c": NOW + HOST_ERROR_WINDOW + 0.5}
    assert not host_failing(later)


def test_the_budget_is_per_second_and_a_missing_memo_blocks_nothing():
    assert budget_second(NOW + 0.99) == budget_second(NOW) != budget_second(NOW + 1)
    assert within_budget(0, 5)  # no memo to count in
    assert within_budget(5, 5) and not within_budget(6, 5)


def test_only_the_bases_asked_spend_their_budget():
    left = {"a": 1, "b": 0, "c": 5, "d": 5}
    spent = []

    def spend(base: str) -> bool:
        spent.append(base)
        left[base] -= 1
        return left[base] >= 0

    assert first_within_budget(["a", "b", "c", "d"], 2, spend) == ["a", "c"]
    assert spent == ["a", "b", "c"]  # d was not needed: its budget is untouched
    assert first_within_budget(["a", "b"], 2, spend) == []


def test_a_survey_of_a_release_no_mirror_holds_is_kept_briefly():
    config = parse_yaml_config(yaml.safe_dump({
        "negative_ttl": 30, "last_known_ttl": 86400,
        "repos": {"r": {"mirrors": ["http://m/{releasever}/{arch}/"]}}}))
    life = Lifetimes(config)
    nowhere, survey = life.survey_of_nowhere("r/z1/x86_64"), life.survey("r/z1/x86_64")
    assert nowhere.key == survey.key and nowhere.fresh_for == survey.fresh_for
    assert nowhere.keep_for == 30 < survey.keep_for
