"""selection.by_downloads: fresh mirrors ranked by Squid's own downloads (pure, seeded random)."""

from __future__ import annotations

import random
from collections import Counter

from squid_helper.resolve.selection import SLOWED_DOWN, DownloadSpeed, by_downloads

A, B, C, D = "http://a/", "http://b/", "http://c/", "http://d/"


def speed(rate: float, usual: float = 0.0) -> DownloadSpeed:
    return DownloadSpeed(rate, usual or rate)


def test_without_downloads_the_survey_order_stays():
    assert by_downloads([A, B, C], {A, B, C}, {}, random.Random(1)) == [A, B, C]


def test_the_fastest_downloads_lead_and_unmeasured_mirrors_follow():
    speeds = {B: speed(1e6), C: speed(5e6)}
    assert by_downloads([A, B, C], {A, B, C}, speeds, random.Random(1)) == [C, B, A]


def test_only_fresh_mirrors_move():
    # D is not fresh (an alternate, or unknown): it keeps its place whatever its speed.
    speeds = {B: speed(1e6), C: speed(5e6), D: speed(50e6)}
    assert by_downloads([A, B, C, D], {A, B, C}, speeds, random.Random(1)) == [C, B, A, D]


def test_mirrors_within_ten_percent_share_the_lead_at_random():
    speeds = {A: speed(10e6), B: speed(9.5e6), C: speed(8e6)}
    rng = random.Random(7)
    leads = Counter(by_downloads([A, B, C], {A, B, C}, speeds, rng)[0] for _ in range(400))
    assert set(leads) == {A, B}, leads  # C is 20% slower: never drawn
    assert min(leads.values()) > 120, leads  # about half each


def test_a_mirror_that_slowed_down_goes_behind_unmeasured_ones():
    slowed = {A: speed(1e6, usual=10e6)}
    assert 10e6 * SLOWED_DOWN > 1e6
    assert by_downloads([A, B, C], {A, B, C}, slowed, random.Random(1)) == [B, C, A]
    steady = {A: speed(1e6, usual=1.2e6)}
    assert by_downloads([A, B, C], {A, B, C}, steady, random.Random(1)) == [A, B, C]


def test_a_slow_mirror_measured_against_a_fast_one_loses_the_lead():
    speeds = {A: speed(1e6, usual=9e6), B: speed(10e6)}
    assert by_downloads([A, B], {A, B}, speeds, random.Random(3)) == [B, A]
