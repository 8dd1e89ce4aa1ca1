"""Cold path: time to the first answer when dead, hanging and 500 mirrors precede a good one.

Mirror order [dead (refused), hanging, 500, good], all on 127.0.0.1, probe_timeout as given.
Two scenarios, each with a fresh memo and a fresh helper process:
  cold start     nothing memoised; the repomd.xml survey meets the bad mirrors first;
  turned bad     the survey ran while all four mirrors were good; then one dies, one hangs,
                 one answers 500, and a new path is asked (the probes meet them).
For each: the first new path (the figure the goal is about), then a second new path (the bad
mirrors should now be skipped as unhealthy). Goal: first answer < 2 x probe_timeout.

    /opt/squid-helper-venv/bin/python benchmarks/bench_cold_path.py [--quick]
"""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from typing import List, Tuple

from common import (
    DEFAULT_EXTRAS,
    ERROR,
    GOOD,
    HANG,
    LinePipe,
    arg_parser,
    dead_url,
    extra_settings,
    helper_argv,
    median,
    mirror,
    package_documents,
    package_urls,
    static_config,
    verdict,
    wait_ready,
    workdir,
)

GOAL = 2.0


def timed_ask(helper: LinePipe, url: str, timeout: float) -> Tuple[float, str]:
    started = time.monotonic()
    reply = helper.ask(f"{url} {DEFAULT_EXTRAS}", timeout)
    return time.monotonic() - started, reply


def scenario(name: str, probe_timeout: float, hedge_delay: float, trial: int,
             settings: dict) -> List[float]:
    """Returns [first new path seconds, second new path seconds]."""
    documents = package_documents(8)
    urls = package_urls(8)
    with ExitStack() as stack:
        tmp = stack.enter_context(workdir())
        turned_bad = name == "turned bad"
        hang = stack.enter_context(mirror(GOOD if turned_bad else HANG, documents))
        error = stack.enter_context(mirror(GOOD if turned_bad else ERROR, documents))
        good = stack.enter_context(mirror(GOOD, documents))
        if turned_bad:
            doomed = stack.enter_context(mirror(GOOD, documents))
            dead = doomed.url
        else:
            dead = dead_url()
        config = static_config(tmp, [dead, hang.url, error.url, good.url],
                               **{"probe_timeout": probe_timeout,
                                  "hedge_delay": hedge_delay, **settings})
        helper = stack.enter_context(LinePipe(helper_argv(config), f"helper-{trial}", tmp))
        wait_ready(helper)
        limit = 10 * probe_timeout + 10
        if turned_bad:
            seconds, reply = timed_ask(helper, urls[0], limit)  # survey: all good now
            if not reply.startswith("OK"):
                raise RuntimeError(f"warm-up failed: {reply}")
            doomed.stop()
            hang.behaviour, error.behaviour = HANG, ERROR
        figures = []
        for url in urls[1:3]:
            seconds, reply = timed_ask(helper, url, limit)
            expected = good.url + url.split("/x86_64/", 1)[1]
            if expected not in reply:
                raise RuntimeError(f"{name}: expected {expected}, got {reply}")
            figures.append(seconds)
        return figures


def main() -> int:
    parser = arg_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--probe-timeout", type=float, default=2.0)
    parser.add_argument("--hedge-delay", type=float, default=0.5)
    parser.add_argument("--trials", type=int, default=3, help="fresh helper+memo per trial")
    args = parser.parse_args()
    if args.quick:
        args.trials = 1

    print(f"mirrors: [dead, hanging, 500, good]; probe_timeout {args.probe_timeout:g}s, "
          f"hedge_delay {args.hedge_delay:g}s, {args.trials} trial(s) per scenario")
    print(f"{'scenario':<12} {'trial':>5} {'1st new path':>13} {'x timeout':>10} "
          f"{'2nd new path':>13}")
    worst = 0.0
    for name in ("cold start", "turned bad"):
        firsts, seconds = [], []
        for trial in range(1, args.trials + 1):
            first, second = scenario(name, args.probe_timeout, args.hedge_delay, trial,
                                     extra_settings(args))
            firsts.append(first)
            seconds.append(second)
            print(f"{name:<12} {trial:>5} {first:>12.3f}s {first / args.probe_timeout:>9.2f}x "
                  f"{second:>12.3f}s")
        worst = max(worst, max(firsts))
        print(f"{name:<12} {'med':>5} {median(firsts):>12.3f}s "
              f"{median(firsts) / args.probe_timeout:>9.2f}x {median(seconds):>12.3f}s")
    ratio = worst / args.probe_timeout
    print(f"RATIO worst first answer / probe_timeout = {ratio:.2f}   goal < {GOAL}: "
          f"{verdict(ratio < GOAL)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
