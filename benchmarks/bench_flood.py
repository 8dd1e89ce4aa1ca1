"""A flood of requests for paths that exist nowhere, with normal requests mixed in.

One `squid-helper rewrite`, two real mirrors on 127.0.0.1 (lab/flood.py): `--count` requests
for nonexistent paths (half packages, half anything else), every 20th line a normal request for
a memoised path, 200 in flight with channel-IDs. Prints the probes each mirror received in its
busiest second (goal: at most max_probes_per_second, here --limit, with 25% slack for seconds
that straddle), the memo's size (goal: within memo_size_mb) and the p99 latency of the normal
requests alone and during the flood.

    /opt/squid-helper/venv/bin/python benchmarks/bench_flood.py [--quick] [--count N]
"""

from __future__ import annotations

import sys

from common import arg_parser, run, verdict, workdir

from lab.flood import run_flood


def main() -> int:
    parser = arg_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=50_000, help="flood requests")
    parser.add_argument("--limit", type=int, default=20, help="max_probes_per_second")
    parser.add_argument("--memo-mb", type=int, default=1, help="memo_size_mb")
    args = parser.parse_args()
    if args.quick:
        args.count = 10_000
    with workdir() as tmp:
        result = run_flood(tmp, count=args.count, probe_limit=args.limit, memo_mb=args.memo_mb)
    print(result.report())
    busiest = max(result.busiest_second.values())
    print(f"RESULT flood of {args.count}: busiest second {busiest} probes per mirror, goal "
          f"<= {args.limit} (+25%): {verdict(busiest <= args.limit * 1.25)}; memo "
          f"{result.memo_bytes / 1e6:.2f} MB, goal <= {result.memo_limit / 1e6:.2f} MB: "
          f"{verdict(result.memo_bytes <= result.memo_limit * 1.1)}; BH {result.replies['BH']}, "
          f"goal 0: {verdict(result.replies['BH'] == 0)}; "
          f"p99 normal {1000 * result.p99(result.during):.1f} ms during vs "
          f"{1000 * result.p99(result.alone):.1f} ms alone")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
