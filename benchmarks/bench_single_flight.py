"""Single-flight: probes at the mirror when 50 requests for one new path arrive together
across 4 helper processes sharing one cache_dir.

Each trial asks a path no process has seen: the 50 requests are split over the 4 processes and
written by 4 threads released by one barrier. The mirror counts every HEAD/GET for that path.
Trials run with the repo warm (its repomd.xml survey memoised) and, on a fresh memo, cold (the
survey has to happen too: its repomd.xml GETs are counted separately), each with an instant
and a slow (--delay) mirror. Goal: 1 probe per path.

    /opt/squid-helper/venv/bin/python benchmarks/bench_single_flight.py [--quick]
"""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from typing import Dict, List

from common import (
    DEFAULT_EXTRAS,
    LinePipe,
    arg_parser,
    extra_settings,
    helper_argv,
    mirror,
    package_documents,
    package_urls,
    run,
    start_together,
    static_config,
    verdict,
    wait_ready,
    workdir,
)

GOAL = 1


def one_burst(helpers: List[LinePipe], url: str, requests: int,
              timeout: float) -> Dict[str, int]:
    """`requests` asks for url, split across helpers, sent at one moment; reply kinds."""
    shares = [requests // len(helpers) + (i < requests % len(helpers))
              for i in range(len(helpers))]
    channels: Dict[int, List[str]] = {}

    def batch(index: int):
        def send() -> None:
            channels[index] = helpers[index].send_many(f"{url} {DEFAULT_EXTRAS}",
                                                       shares[index])
        return send

    start_together([batch(i) for i in range(len(helpers))])
    kinds = {"OK": 0, "ERR": 0, "BH": 0}
    for index, helper in enumerate(helpers):
        for reply in helper.collect(channels[index], timeout).values():
            kind = reply.split(" ", 1)[0]
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def run_trials(label: str, delay: float, warm: bool, trials: int, processes: int,
               requests: int, settings: dict) -> List[int]:
    counts = []
    for trial in range(trials):
        paths = package_urls(trials + 1)
        with ExitStack() as stack:
            tmp = stack.enter_context(workdir())
            good = stack.enter_context(mirror(documents=package_documents(trials + 1),
                                              delay=delay))
            config = static_config(tmp, [good.url], **{"probe_timeout": 2, **settings})
            helpers = [stack.enter_context(LinePipe(helper_argv(config), f"helper-{i}", tmp))
                       for i in range(processes)]
            for helper in helpers:
                wait_ready(helper)
            if warm:
                helpers[0].ask(f"{paths[-1]} {DEFAULT_EXTRAS}", 30)  # memoises the survey
            url = paths[trial]
            suffix = url.split("/x86_64/", 1)[1]
            survey_before = good.count(path_suffix="repodata/repomd.xml")
            started = time.monotonic()
            kinds = one_burst(helpers, url, requests, timeout=30)
            took = time.monotonic() - started
            probes = good.count(path_suffix=suffix)
            surveys = good.count(path_suffix="repodata/repomd.xml") - survey_before
            counts.append(probes)
            print(f"{label:<22} {trial + 1:>5} {probes:>7} {surveys:>15} {took:>8.3f}s  {kinds}")
    return counts


def main() -> int:
    parser = arg_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--delay", type=float, default=0.2,
                        help="seconds the slow mirror takes per answer")
    args = parser.parse_args()
    if args.quick:
        args.trials = 1

    print(f"{args.requests} requests for one new path across {args.processes} processes "
          f"sharing one cache_dir")
    print(f"{'variant':<22} {'trial':>5} {'probes':>7} {'repomd.xml GETs':>15} {'took':>9}  "
          "replies")
    worst = 0
    for label, delay, warm in (("warm, instant mirror", 0.0, True),
                               (f"warm, {args.delay:g}s mirror", args.delay, True),
                               ("cold, instant mirror", 0.0, False),
                               (f"cold, {args.delay:g}s mirror", args.delay, False)):
        counts = run_trials(label, delay, warm, args.trials, args.processes, args.requests,
                            extra_settings(args))
        worst = max(worst, max(counts))
    print(f"RESULT most probes for one path = {worst}   goal {GOAL}: {verdict(worst <= GOAL)}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
