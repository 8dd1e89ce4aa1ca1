"""Memo-hit throughput: `squid-helper rewrite` vs a minimal Python echo helper.

Both are driven by the same driver (common.LinePipe.drive): channel-IDs, `--in-flight`
requests outstanding. The helper's memo is warmed first (every path verified once against a
local mirror), so every measured request is a memo hit. Rounds alternate echo/helper so that
machine noise hits both; the medians are compared. Goal: helper/echo >= 0.7.

    /opt/squid-helper-venv/bin/python benchmarks/bench_memo_hits.py [--quick]
"""

from __future__ import annotations

import sys

from common import (
    LinePipe,
    arg_parser,
    echo_argv,
    extra_settings,
    helper_argv,
    median,
    mirror,
    package_documents,
    package_urls,
    request_lines,
    static_config,
    verdict,
    wait_ready,
    workdir,
)

GOAL = 0.7


def main() -> int:
    parser = arg_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--paths", type=int, default=1000, help="distinct memoised paths")
    parser.add_argument("--requests", type=int, default=100_000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per helper")
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=120.0, help="limit for one round (s)")
    args = parser.parse_args()
    if args.quick:
        args.paths, args.requests, args.rounds = 200, 20_000, 1

    lines = request_lines(package_urls(args.paths))
    with mirror(documents=package_documents(args.paths)) as good, workdir() as tmp:
        config = static_config(tmp, [good.url], **{"probe_timeout": 2, **extra_settings(args)})
        with LinePipe(helper_argv(config), "squid-helper", tmp) as helper, \
                LinePipe(echo_argv(good.url), "echo", tmp) as echo:
            wait_ready(helper)
            wait_ready(echo)
            warm = helper.drive(lines, len(lines), args.in_flight, args.timeout)
            if warm.kinds["OK"] != len(lines):
                print(f"warm-up failed: {warm.kinds}; first reply {warm.first_reply!r}")
                return 1
            probes = good.count("HEAD", path_contains="/Packages/")
            print(f"warm-up: {len(lines)} new paths verified in {warm.seconds:.2f}s "
                  f"({warm.rate:.0f} req/s, {probes} HEAD probes at the mirror)")
            # One more pass so that the helper's front cache and the echo's buffers are warm.
            helper.drive(lines, len(lines), args.in_flight, args.timeout)
            echo.drive(lines, len(lines), args.in_flight, args.timeout)

            results = {"echo": [], "squid-helper": []}
            print(f"\n{args.rounds} round(s) of {args.requests} requests over {args.paths} "
                  f"memoised paths, {args.in_flight} in flight, channel-IDs")
            print(f"{'round':>5} {'helper':<13} {'req/s':>10} {'CPU us/req':>11} {'replies'}")
            for round_no in range(1, args.rounds + 1):
                for name, pipe in (("echo", echo), ("squid-helper", helper)):
                    result = pipe.drive(lines, args.requests, args.in_flight, args.timeout)
                    if result.kinds["OK"] != args.requests:
                        print(f"{name}: unexpected replies {result.kinds}")
                        return 1
                    results[name].append(result)
                    print(f"{round_no:>5} {name:<13} {result.rate:>10.0f} "
                          f"{result.cpu_us_per_request:>11.1f} {result.kinds}")
            new_probes = good.count("HEAD", path_contains="/Packages/") - probes

    echo_rate = median([r.rate for r in results["echo"]])
    helper_rate = median([r.rate for r in results["squid-helper"]])
    echo_cpu = median([r.cpu_us_per_request for r in results["echo"]])
    helper_cpu = median([r.cpu_us_per_request for r in results["squid-helper"]])
    ratio = helper_rate / echo_rate if echo_rate else 0.0
    print(f"\necho helper:  {echo_rate:>10.0f} req/s   {echo_cpu:6.1f} CPU us/request (median)")
    print(f"squid-helper: {helper_rate:>10.0f} req/s   {helper_cpu:6.1f} CPU us/request (median)")
    print(f"mirror probes during the measured rounds: {new_probes} (expected 0: all memo hits)")
    print(f"CPU per request, echo/helper: {echo_cpu / helper_cpu if helper_cpu else 0:.2f}")
    print(f"RATIO throughput helper/echo = {ratio:.2f}   goal >= {GOAL}: {verdict(ratio >= GOAL)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
