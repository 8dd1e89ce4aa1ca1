"""The soak (lab/soak.py) for a short time: mixed load through a real Squid with the helpers;
zero errors, no helper restart, open fds and RSS of every helper flat.

Runs 30 s after a 5 s warm-up by default; SQUID_HELPER_SOAK_SECONDS overrides the 30 s (the full
10 minutes: `python benchmarks/bench_soak.py`). Fails (never skips) with CI=true when squid or
squidclient is missing.
"""

from __future__ import annotations

import os

from lab import soak

from conftest import require

RSS_SLACK_MB = 4.0  # RSS of each helper after the warm-up: flat within a few MB
FD_SLACK = 2  # open fds of each helper after the warm-up: a small constant slack


def test_soak_through_a_real_squid_has_no_errors_and_flat_resources():
    require("squid", "squidclient")
    seconds = float(os.environ.get("SQUID_HELPER_SOAK_SECONDS", "30"))
    result = soak.run_soak(seconds=seconds, warmup=5.0, rate=200.0, connections=16,
                           sample_every=max(1.0, seconds / 15), purge_every=3.0,
                           progress=lambda line: None)
    summary = "\n".join(
        [f"{result.requests} requests in {result.seconds:.0f}s, statuses "
         f"{dict(result.statuses)}"]
        + [f"{name}: RSS {rss0:.1f} MB {rss:+.2f} MB, fds {fds0} {fds:+d}"
           for name, (rss, fds, rss0, fds0) in result.growth().items()])

    assert result.requests >= 0.8 * 200 * seconds, summary
    for kind in soak.MIX:  # every kind of request was exercised
        assert any(k == kind for k, _ in result.statuses), (kind, summary)
    assert result.purges >= 2, summary
    assert result.errors() == [], "\n".join(result.errors()) + "\n" + summary
    assert len(result.helper_pids_start) == (soak.REWRITE_CHILDREN
                                             + soak.STOREID_CHILDREN), summary
    assert not result.helpers_gone and not result.helpers_new, summary
    assert result.flat(RSS_SLACK_MB, FD_SLACK) == [], summary
