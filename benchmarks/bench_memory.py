"""Memory: RSS of one `squid-helper rewrite` process over 100k requests on 10k distinct paths.

The paths are asked round-robin, so the first pass verifies each one against a local mirror
(probes, memo writes) and the later passes are memo hits. VmRSS (/proc/<pid>/status) is
sampled before the first request and every `--every` answered requests. "Flat" means the
samples taken after the first full pass over the paths differ by less than `--flat-mb`.
Goal: flat and every sample < 40 MB.

    /opt/squid-helper/venv/bin/python benchmarks/bench_memory.py [--quick]
"""

from __future__ import annotations

import sys

from common import (
    LinePipe,
    arg_parser,
    extra_settings,
    helper_argv,
    mirror,
    package_documents,
    package_urls,
    request_lines,
    rss_breakdown_kb,
    run,
    static_config,
    verdict,
    wait_ready,
    workdir,
)

LIMIT_MB = 40.0


def main() -> int:
    parser = arg_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--paths", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=10_000, help="sample interval (requests)")
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--flat-mb", type=float, default=2.0,
                        help="largest spread of the post-warm-up samples still called flat")
    parser.add_argument("--timeout", type=float, default=600.0, help="limit for the run (s)")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.paths, args.every = 20_000, 2_000, 2_000

    lines = request_lines(package_urls(args.paths))
    samples = []
    with mirror(documents=package_documents(args.paths)) as good, workdir() as tmp:
        config = static_config(tmp, [good.url], **{"probe_timeout": 2, **extra_settings(args)})
        with LinePipe(helper_argv(config), "squid-helper", tmp) as helper:
            wait_ready(helper)
            samples.append((0, rss_breakdown_kb(helper.pid)))

            def sample(answered: int) -> None:
                samples.append((answered, rss_breakdown_kb(helper.pid)))

            result = helper.drive(lines, args.requests, args.in_flight, args.timeout,
                                  every=args.every, on_every=sample)
            probes = good.count(path_contains="/Packages/")

    print(f"{args.requests} requests over {args.paths} distinct paths in {result.seconds:.1f}s "
          f"({result.rate:.0f} req/s), replies {result.kinds}, {probes} probes at the mirror")
    print(f"{'requests':>9} {'VmRSS MB':>9} {'RssAnon':>8} {'RssFile':>8}")
    for answered, kb in samples:
        print(f"{answered:>9} {kb['VmRSS'] / 1024:>9.1f} {kb.get('RssAnon', 0) / 1024:>8.1f} "
              f"{kb.get('RssFile', 0) / 1024:>8.1f}")
    settled = [kb["VmRSS"] for answered, kb in samples if answered >= 2 * args.paths] or \
        [samples[-1][1]["VmRSS"]]
    spread = (max(settled) - min(settled)) / 1024
    peak = max(kb["VmRSS"] for _, kb in samples) / 1024
    flat = spread < args.flat_mb
    print(f"after the first full pass: spread {spread:.1f} MB ({'flat' if flat else 'growing'},"
          f" limit {args.flat_mb:g} MB); peak {peak:.1f} MB (limit {LIMIT_MB:g} MB)")
    print(f"RESULT peak RSS {peak:.1f} MB, flat={flat}   goal flat and < {LIMIT_MB:g} MB: "
          f"{verdict(flat and peak < LIMIT_MB)}")
    return 0 if result.kinds["OK"] == args.requests else 1


if __name__ == "__main__":
    sys.exit(run(main))
