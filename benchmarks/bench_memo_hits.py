"""Memo-hit throughput: `squid-helper rewrite` vs a minimal Python echo helper.

Both are driven by the same driver (common.LinePipe.drive): channel-IDs, `--in-flight`
requests outstanding. The helper's memo is warmed first (every path verified once against a
local mirror), so every measured request is a memo hit. Two workloads, as Squid sends them:

* shipped extras: the URL and `myport=3128` (squid.conf's url_rewrite_extras);
* per-client extras: Squid's default extras, client address first (`10.0.C.D/- - GET
  myip=... myport=3128`), from 37 clients over the same paths, so that no two lines in a row
  and few in a round are alike.

Rounds alternate echo/helper so that machine noise hits both; the medians are compared.
Goal: helper/echo >= 0.5 for both workloads.

    /opt/squid-helper/venv/bin/python benchmarks/bench_memo_hits.py [--quick]
"""

from __future__ import annotations

import sys
import time
from typing import Dict, List

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
    run,
    static_config,
    verdict,
    wait_ready,
    workdir,
)

GOAL = 0.5
CLIENTS = 37  # coprime with the path counts used, so path and client vary independently


def per_client_lines(urls: List[str], count: int) -> List[bytes]:
    """count request lines cycling through urls, each from one of CLIENTS client addresses,
    with Squid's default url_rewrite_extras."""
    return [f"{urls[i % len(urls)]} 10.0.{(i % CLIENTS) // 250}.{i % CLIENTS % 250 + 1}/- - "
            f"GET myip=127.0.0.1 myport=3128".encode() for i in range(count)]


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

    urls = package_urls(args.paths)
    lines = request_lines(urls)
    with mirror(documents=package_documents(args.paths)) as good, workdir() as tmp:
        # The warm-up memoises every path at once: the probe budget, which would spread its
        # thousand first probes over twenty seconds, is not what this measures.
        config = static_config(tmp, [good.url], **{"probe_timeout": 2,
                                                    "max_probes_per_second": 100_000,
                                                    **extra_settings(args)})
        with LinePipe(helper_argv(config), "squid-helper", tmp) as helper, \
                LinePipe(echo_argv(good.url), "echo", tmp) as echo:
            wait_ready(helper)
            wait_ready(echo)
            warm = helper.drive(lines, len(lines), args.in_flight, args.timeout)
            if warm.kinds["OK"] != len(lines):
                print(f"warm-up failed: {warm.kinds}; first reply {warm.first_reply!r}")
                return 1
            # Packages are answered at once and verified in the background: wait for that.
            deadline = time.monotonic() + args.timeout
            while (good.count("HEAD", path_contains="/Packages/") < len(lines)
                   and time.monotonic() < deadline):
                time.sleep(0.05)
            probes = good.count("HEAD", path_contains="/Packages/")
            print(f"warm-up: {len(lines)} new paths answered in {warm.seconds:.2f}s "
                  f"({warm.rate:.0f} req/s, {probes} HEAD probes at the mirror)")
            # One more pass so that the helper's front cache and the echo's buffers are warm.
            helper.drive(lines, len(lines), args.in_flight, args.timeout)
            echo.drive(lines, len(lines), args.in_flight, args.timeout)

            workloads = {
                "shipped extras": lines,
                "per-client extras": per_client_lines(urls, len(urls) * CLIENTS),
            }
            figures: Dict[str, Dict[str, float]] = {}
            for workload, workload_lines in workloads.items():
                print(f"\n{workload}: {args.rounds} round(s) of {args.requests} requests over "
                      f"{len(workload_lines)} distinct lines ({args.paths} memoised paths), "
                      f"{args.in_flight} in flight, channel-IDs")
                figures[workload] = measure(workload_lines, helper, echo, args)
                if not figures[workload]:
                    return 1
            new_probes = good.count("HEAD", path_contains="/Packages/") - probes

    print(f"\nmirror probes during the measured rounds: {new_probes} (expected 0: all memo hits)")
    for workload, figure in figures.items():
        ratio = figure["helper"] / figure["echo"] if figure["echo"] else 0.0
        print(f"{workload:>18}: echo {figure['echo']:>8.0f} req/s, squid-helper "
              f"{figure['helper']:>8.0f} req/s, CPU us/request {figure['echo_cpu']:.1f} / "
              f"{figure['helper_cpu']:.1f}")
        print(f"RATIO throughput helper/echo, {workload} = {ratio:.2f}   goal >= {GOAL}: "
              f"{verdict(ratio >= GOAL)}")
    return 0


def measure(lines: List[bytes], helper: LinePipe, echo: LinePipe, args) -> Dict[str, float]:
    """Alternating rounds of echo and helper on lines; medians (empty when a reply was wrong)."""
    results = {"echo": [], "squid-helper": []}
    print(f"{'round':>5} {'helper':<13} {'req/s':>10} {'CPU us/req':>11} {'replies'}")
    for round_no in range(1, args.rounds + 1):
        for name, pipe in (("echo", echo), ("squid-helper", helper)):
            result = pipe.drive(lines, args.requests, args.in_flight, args.timeout)
            if result.kinds["OK"] != args.requests:
                print(f"{name}: unexpected replies {result.kinds}")
                return {}
            results[name].append(result)
            print(f"{round_no:>5} {name:<13} {result.rate:>10.0f} "
                  f"{result.cpu_us_per_request:>11.1f} {result.kinds}")
    return {
        "echo": median([r.rate for r in results["echo"]]),
        "helper": median([r.rate for r in results["squid-helper"]]),
        "echo_cpu": median([r.cpu_us_per_request for r in results["echo"]]),
        "helper_cpu": median([r.cpu_us_per_request for r in results["squid-helper"]]),
    }


if __name__ == "__main__":
    sys.exit(run(main))
