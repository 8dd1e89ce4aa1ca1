"""Chaos: mirrors killed, restarted, hanging and stale while fresh dnf clients install through
Squid; counts dnf failures, BH replies and answers pointing at mirrors known dead at the time.

The command line of lab/chaos.py, which describes the workload and how each count is made.
Prints the chaos timeline, the dnf runs, the requests Squid sent to mirrors while they were
down or stale, how the helper log explained each outage, every failure with dnf's output and
what Squid and the helper did meanwhile, and the verdict: goal 0 dnf failures, 0 BH, 0 answers
to known-dead mirrors. Two runs by default: squid.conf as shipped, and the same with Squid's
cache off, so that the chaos reaches every request (with the cache on, Squid holds all 60
packages after the first few dnf runs and only repomd.xml still goes to a mirror).

    /opt/squid-helper/venv/bin/python benchmarks/bench_chaos.py              # 2 x 2 minutes
    /opt/squid-helper/venv/bin/python benchmarks/bench_chaos.py --quick      # 2 x 30 s
    /opt/squid-helper/venv/bin/python benchmarks/bench_chaos.py --seed 1234 --seconds 300

Needs root, squid, dnf, rpmbuild, createrepo_c and the `proxy` user.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from common import arg_parser, extra_settings, run, verdict

from lab.chaos import INTERVAL, prerequisites, run_chaos


def main() -> int:
    parser = arg_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=None,
                        help="how long clients keep starting dnf runs (default 120, --quick 30)")
    parser.add_argument("--clients", type=int, default=2, help="dnf clients running at once")
    parser.add_argument("--interval", type=float, nargs=2, default=list(INTERVAL),
                        metavar=("MIN", "MAX"), help="seconds between chaos actions")
    parser.add_argument("--squid-cache", choices=("on", "off", "both"), default="both",
                        help="on: squid.conf as shipped (Squid's cache soon holds all 60 "
                             "packages); off: plus `cache deny all`, so that every request "
                             "goes to the mirror the helper names; both (default): one run "
                             "of each")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="copy the logs, timeline and dnf runs of each run into DIR")
    parser.add_argument("--helper-debug", action="store_true",
                        help="run the rewrite helpers with --debug (memo hits logged too)")
    parser.add_argument("--failures", type=int, default=5,
                        help="failure episodes to print in full (dnf output and context)")
    args = parser.parse_args()
    seconds = args.seconds if args.seconds is not None else (30.0 if args.quick else 120.0)
    problems = prerequisites()
    if problems:
        print("cannot run: " + "; ".join(problems))
        return 2
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.squid_cache]
    verdicts = []
    for cache in modes:
        wall = time.monotonic()
        label = "on" if cache else "off"
        print(f"===== Squid cache {label}", flush=True)
        result = run_chaos(seconds, args.seed, args.clients, tuple(args.interval),
                           extra_settings(args), squid_cache=cache,
                           keep=args.keep / f"cache-{label}" if args.keep else None,
                           helper_debug=args.helper_debug,
                           progress=lambda line: print(line, flush=True)
                           if not line.startswith("  c") or "FAILED" in line or "slow" in line
                           else None)
        print()
        for line in result.report(failures=args.failures):
            print(line)
        print(f"wall time {time.monotonic() - wall:.0f}s\n", flush=True)
        verdicts.append((result.result_line(), result.met()))
    for line, met in verdicts:
        print(f"{line}: {verdict(met)}")
    return 0 if all(met for _, met in verdicts) else 1


if __name__ == "__main__":
    sys.exit(run(main))
