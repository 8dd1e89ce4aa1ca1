"""Integrity failures per mirror host in status and metrics (pure: facts in, text out)."""

from __future__ import annotations

from squid_helper.facts.memo import Stored
from squid_helper.ops.metrics import integrity_family
from squid_helper.ops.status import integrity_lines, integrity_section

NOW = 1_800_000_000.0
FACTS = {
    "m1.example": Stored({"count": 1, "path": "f/40/x86_64/Packages/a.rpm",
                          "reason": "99 bytes where the metadata says 100"}, NOW - 90),
    "m2.example:8080": Stored({"count": 3, "path": "f/40/x86_64/Packages/b.rpm",
                               "reason": "sha256 00 where the metadata says 11"}, NOW - 5),
    "odd.example": Stored("not a count", NOW),  # not written by the check: left out
}


def test_hosts_with_most_failures_come_first_and_say_what_and_when():
    section = integrity_section(FACTS)
    assert [(e["host"], e["failures"]) for e in section] == [("m2.example:8080", 3),
                                                             ("m1.example", 1)]
    lines = integrity_lines(section, NOW)
    assert lines[2] == ("  m2.example:8080: 3 integrity failures, latest 5s ago: "
                        "f/40/x86_64/Packages/b.rpm (sha256 00 where the metadata says 11)")
    assert lines[3].startswith("  m1.example: 1 integrity failure, latest 1m30s ago")


def test_no_failures_no_block_and_a_counter_per_host():
    assert integrity_lines([], NOW) == []
    family = integrity_family(integrity_section(FACTS))
    assert {(s.name, s.labels["host"], s.value) for s in family.samples
            if s.name.endswith("_total")} == {
        ("squid_helper_mirror_integrity_failures_total", "m2.example:8080", 3),
        ("squid_helper_mirror_integrity_failures_total", "m1.example", 1)}
