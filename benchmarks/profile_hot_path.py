"""Where does a memo hit spend its time? cProfile of an in-process HelperLoop.

Builds the real RewriteHandler (Resolver + Memo on a temporary cache_dir), verifies `--paths`
paths against a local mirror, then feeds `--requests` channel-ID lines for them through
HelperLoop.run from memory, writing the replies to /dev/null (flushed per reply, as to Squid).
Prints the per-request time without and with the profiler, then the top functions.

    /opt/squid-helper/venv/bin/python benchmarks/profile_hot_path.py [--quick]
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import sys
import time

from common import (
    DEFAULT_EXTRAS,
    arg_parser,
    extra_settings,
    mirror,
    package_documents,
    package_urls,
    static_config,
    workdir,
)

from squid_helper.config.files import load_config
from squid_helper.facts.memo import Memo
from squid_helper.resolve.resolver import Resolver
from squid_helper.resolve.urls import map_url
from squid_helper.squid.helperloop import HelperLoop
from squid_helper.squid.rewrite import RewriteHandler


def main() -> int:
    parser = arg_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--paths", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if args.quick:
        args.paths, args.requests = 200, 20_000

    urls = package_urls(args.paths)
    with mirror(documents=package_documents(args.paths)) as good, workdir() as tmp:
        settings = {"probe_timeout": 2, **extra_settings(args)}
        config = load_config(str(static_config(tmp, [good.url], **settings)))
        resolver = Resolver(config, Memo(config.cache_dir))
        handler = RewriteHandler(resolver)
        try:
            for url in urls:  # verify every path once: what follows is all memo hits
                mapped = map_url(url, {}, config)
                if not resolver.resolve(mapped).url:
                    print(f"cannot verify {url}")
                    return 1
            data = b"".join(b"%d %s %s\n" % (i % 200, urls[i % len(urls)].encode(),
                                             DEFAULT_EXTRAS.encode())
                            for i in range(args.requests))
            with open(os.devnull, "wb") as sink:
                loop = HelperLoop(handler, sink, workers=4)
                loop.run(io.BytesIO(data[: len(data) // 10]))  # warm the front cache
                started = time.perf_counter()
                loop.run(io.BytesIO(data))
                plain = time.perf_counter() - started
                profiler = cProfile.Profile()
                started = time.perf_counter()
                profiler.runcall(loop.run, io.BytesIO(data))
                profiled = time.perf_counter() - started
        finally:
            handler.close()
    print(f"{args.requests} memo hits in-process: {1e6 * plain / args.requests:.1f} us/request "
          f"({args.requests / plain:.0f} req/s); under cProfile "
          f"{1e6 * profiled / args.requests:.1f} us/request")
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
