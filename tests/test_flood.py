"""5,000 requests for paths that exist nowhere: the mirrors get at most max_probes_per_second
probes per second, the memo stays within its size limit, and everyone else is answered as
before (benchmarks/bench_flood.py prints the same figures for a longer run)."""

from __future__ import annotations

from lab.flood import run_flood


def test_a_flood_of_nonexistent_paths_is_no_probe_cannon(tmp_path):
    # Several seconds of flood at 20 probes per second per mirror: the limit is reached and
    # held (benchmarks/bench_flood.py: 50,000).
    result = run_flood(tmp_path, count=5_000, probe_limit=20, memo_mb=1)
    report = result.report() + "\n" + result.log_tail
    print(report)
    assert result.replies["BH"] == 0, report
    assert sum(result.replies.values()) == 5_000, report
    for busiest in result.busiest_second.values():
        # A probe counted in one second may arrive in the next: a little slack.
        assert 0 < busiest <= result.probe_limit * 1.25, report
    # Normal requests wait behind the flood's lines in the same pipe, no longer.
    assert result.p99(result.during) < max(20 * result.p99(result.alone), 0.25), report


def test_the_memo_stays_within_its_size_limit_when_every_miss_is_remembered(tmp_path):
    # A probe budget that never runs out: every path is probed, and every miss memoised. Long
    # paths (1200 characters) fill the 1 MB memo three times over with 600 requests.
    result = run_flood(tmp_path, count=600, probe_limit=100_000, memo_mb=1, name_length=1200)
    report = result.report() + "\n" + result.log_tail
    print(report)
    assert result.replies["BH"] == 0, report
    assert sum(result.replies.values()) == 600, report
    assert result.memo_bytes <= result.memo_limit * 1.1, report
    # The limit was reached and acted on: without eviction every one of the 600 misses would
    # still be there.
    assert result.memo_entries < 600, report
