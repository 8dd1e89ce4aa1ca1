"""Soak: mixed load through a real Squid with the helpers; RSS and open fds over time, errors.

The command line of lab/soak.py, which describes the load and what counts as an error. Prints
the statuses per kind of request, the RSS and open file descriptors of Squid and of every helper
process every `--sample` seconds, their growth after the warm-up, and every error. Verdict: zero
errors, and for each helper, after the warm-up, fds within `--fd-slack` and RSS within
`--rss-mb` of the first sample.

    /opt/squid-helper/venv/bin/python benchmarks/bench_soak.py             # 10 minutes
    /opt/squid-helper/venv/bin/python benchmarks/bench_soak.py --seconds 60

Needs root, squid, squidclient and the `proxy` user.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Dict, Optional

from common import arg_parser, extra_settings, run, verdict

from lab.procfs import ProcSample
from lab.soak import MIX, SoakResult, prerequisites, run_soak


# -- report --------------------------------------------------------------------------------------
def report(result: SoakResult, rss_mb: float, fd_slack: int) -> bool:
    print(f"\n{result.requests} requests in {result.seconds:.0f}s measured "
          f"({result.rate:.0f} req/s) after {result.warmup:g}s of warm-up; "
          f"{result.purges} purge commands; {result.mirror_probes} HEAD probes at the mirror; "
          f"{result.dns_queries} DNS queries (all NXDOMAIN)")
    by_kind: Dict[str, Counter] = {}
    for (kind, status), count in sorted(result.statuses.items()):
        by_kind.setdefault(kind, Counter())[status] = count
    for kind, statuses in by_kind.items():
        print(f"  {kind:<11} {dict(statuses)}  expected {list(MIX[kind][1])}")

    names = sorted({f"{role}:{pid}" for s in result.samples
                    for pid, (role, _) in s.helpers.items()})
    print("\nRSS MB / open fds over time (t < 0: warm-up)")
    print(f"{'t (s)':>7} {'squid':>12} " + " ".join(f"{n:>15}" for n in names))
    for sample in result.samples:
        cells = {f"{role}:{pid}": proc for pid, (role, proc) in sample.helpers.items()}

        def cell(proc: Optional[ProcSample], width: int) -> str:
            text = f"{proc.rss_kb / 1024:.1f}/{proc.fds}" if proc else "gone"
            return f"{text:>{width}}"

        print(f"{sample.seconds:>7.0f} {cell(sample.squid, 12)} "
              + " ".join(cell(cells.get(n), 15) for n in names))
    print("\ngrowth after the warm-up (largest - first):")
    for name, (rss, fds, rss0, fds0) in result.growth().items():
        note = "  (Squid's memory cache fills by design: for information)" \
            if name == "squid" else ""
        print(f"  {name:<16} RSS {rss0:6.1f} MB {rss:+6.2f} MB   fds {fds0:4d} {fds:+3d}{note}")
    errors = result.errors()
    print(f"\nerrors: {len(errors)}")
    for line in errors[:40]:
        print(f"  {line}")
    not_flat = result.flat(rss_mb, fd_slack)
    for line in not_flat:
        print(f"  not flat: {line}")
    ok = not errors and not not_flat
    print(f"RESULT soak {result.seconds:.0f}s at {result.rate:.0f} req/s: errors "
          f"{len(errors)}, helper restarts {len(result.helpers_new) + len(result.helpers_gone)}"
          f", RSS/fds flat (<= {rss_mb} MB, <= {fd_slack} fds): "
          f"{'yes' if not not_flat else 'no'}   {verdict(ok)}")
    return ok


def main() -> int:
    parser = arg_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak")
    parser.add_argument("--seconds", type=float, default=None, help="overrides --minutes")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds of mixed load before the measurement (default: 10%%, "
                             "at most 30)")
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--sample", type=float, default=0.0,
                        help="seconds between samples (default: about 20 samples)")
    parser.add_argument("--purge-every", type=float, default=5.0, help="seconds")
    parser.add_argument("--rss-mb", type=float, default=4.0, help="allowed helper RSS growth")
    parser.add_argument("--fd-slack", type=int, default=2, help="allowed helper fd growth")
    args = parser.parse_args()
    seconds = args.seconds if args.seconds is not None else 60 * args.minutes
    if args.quick and args.seconds is None:
        seconds = 30.0
    warmup = args.warmup if args.warmup is not None else min(30.0, max(5.0, seconds / 10))
    problems = prerequisites()
    if problems:
        print("cannot run: " + "; ".join(problems))
        return 2
    result = run_soak(seconds, warmup, args.rate, args.connections, args.sample,
                      args.purge_every, extra_settings(args), seed=args.seed)
    return 0 if report(result, args.rss_mb, args.fd_slack) else 1


if __name__ == "__main__":
    sys.exit(run(main))
