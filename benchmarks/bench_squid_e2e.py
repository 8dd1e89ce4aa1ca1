"""End to end: cached RPMs through a real Squid with the helper vs the same Squid without it.

Three Squids from the same squid.conf (squid_helper.ops.squidconf, the shipped helper settings) run
side by side on 127.0.0.1: one with `squid-helper rewrite` + `squid-helper storeid`, whose
clients ask virtual URLs (http://repoproxy/bench/9/x86_64/Packages/...); one without the
helper lines, whose clients ask the mirror URLs directly ("plain"); and, for reference, one
whose two helpers are minimal Python echo helpers (ECHO_HELPER below), the floor of any
Python helper. The same client (a pure-Python HTTP/1.1 keep-alive driver, `--connections`
persistent connections; it saturates Squid's one CPU, see the "squid CPU" column) drives all
three. The caches are warmed first; the measured rounds alternate, and every measured request
must be a cache hit in access.log with no request reaching the mirror.
Goal: helper/plain >= 0.9.

RPMs are 256 KiB by default, about the size of a typical RPM. With tiny objects (`--size
16384`) the run measures Squid's own per-request cost of consulting any helper pair, which the
echo/plain ratio shows; helper/echo shows what squid-helper itself adds.

    /opt/squid-helper/venv/bin/python benchmarks/bench_squid_e2e.py [--quick]

Needs root, squid and the `proxy` user (Squid runs its helpers as proxy).
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import common
from common import (
    REPO,
    REPO_PREFIX,
    arg_parser,
    extra_settings,
    median,
    package_documents,
    package_name,
    run,
    static_config,
    verdict,
)

from lab.httpclient import DriveStats, KeepAliveClient, get_request, http_get
from lab.mirrors import MirrorServer
from lab.squid import SquidInstance, WorldReadableDir, chown_proxy
from lab.wait import wait_for
from squid_helper.ops.squidconf import SquidConfParams

GOAL = 0.9
# The helper settings squid.conf.example ships with (the harness's defaults are smaller).
SHIPPED = SquidConfParams()
HELPER_PARAMS = {name: getattr(SHIPPED, name) for name in (
    "rewrite_children", "rewrite_startup", "rewrite_idle", "rewrite_concurrency",
    "storeid_children", "storeid_startup", "storeid_idle", "storeid_concurrency")}
# Plain Squid's clients ask the mirror on loopback directly: this host's own address.
HELPER_PARAMS["guard_local_destinations"] = False

# The floor for any Python helper inside Squid: answers each line at once, no parsing beyond
# the URL prefix, no memo. `echo.py rewrite PREFIX BASE` maps PREFIX... to BASE...;
# `echo.py storeid PREFIX KEY` gives every PREFIX... URL the store-id KEY... . Else ERR.
ECHO_HELPER = """import sys
mode, prefix, base = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode()
kv = b' OK rewrite-url=' if mode == 'rewrite' else b' OK store-id='
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    channel, _, rest = line.partition(b' ')
    url = rest.split(b' ', 1)[0].rstrip(b'\\r\\n')
    if url.startswith(prefix):
        out.write(channel + kv + base + url[len(prefix):] + b'\\n')
    else:
        out.write(channel + b' ERR\\n')
    out.flush()
"""


def write_echo_helper(directory: Path) -> Path:
    """ECHO_HELPER as a file the proxy user can run with /usr/bin/python3."""
    path = directory / "echo_helper.py"
    path.write_text(ECHO_HELPER)
    path.chmod(0o644)
    return path


def cpu_seconds(pid: int) -> float:
    """CPU seconds of a process so far; 0 once it has gone."""
    try:
        return common.cpu_seconds(pid)
    except OSError:
        return 0.0


@dataclass
class Side:
    name: str
    squid: SquidInstance
    urls: List[str]

    def requests(self):
        cycle = itertools.cycle([(get_request(u), "rpm") for u in self.urls])
        return lambda: next(cycle)


def prerequisites() -> str:
    missing = [c for c in ("squid",) if shutil.which(c) is None]
    problems = [f"missing: {', '.join(missing)} (apt-get install squid)"] if missing else []
    if os.geteuid() != 0:
        problems.append("must run as root (Squid drops to its proxy user)")
    return "; ".join(problems)


def drive(side: Side, connections: int, seconds: float, once: bool = False) -> DriveStats:
    if once:
        queue = iter([(get_request(u), "rpm") for u in side.urls])

        def source():
            return next(queue, None)
    else:
        source = side.requests()
    with KeepAliveClient("127.0.0.1", side.squid.port, connections) as client:
        return client.run(source, seconds)


def marker(side: Side, mirror_url: str, name: str) -> int:
    """Send a marker request and return the number of access.log lines up to and including
    it: Squid's log daemon writes lines in batches, so a plain line count taken right after a
    round can be short; lines before the marker are certainly there."""
    url = f"{mirror_url}marker/{side.name}-{name}"
    status, _, _ = http_get("127.0.0.1", side.squid.port, url, {"Host": url.split("/")[2]})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        entries = side.squid.access_log()
        for index in range(len(entries) - 1, -1, -1):
            if entries[index].url == url:
                return index + 1
        time.sleep(0.1)
    raise RuntimeError(f"{side.name}: marker {url} ({status}) never reached access.log")


def check_round(side: Side, stats: DriveStats, start: int, end: int) -> List[str]:
    """Problems with a round: non-200 answers, client failures, access.log lines (between the
    markers: [start, end - 1)) that are not hits."""
    problems = []
    bad = {k: v for k, v in stats.statuses.items() if k[1] != 200}
    if bad or stats.failures:
        problems.append(f"{side.name}: statuses {dict(stats.statuses)} failures "
                        f"{dict(stats.failures)}")
    entries = side.squid.access_log()[start:end - 1]
    misses = [e for e in entries if not e.hit]
    if len(entries) != stats.answered or misses:
        codes: Dict[str, int] = {}
        for entry in entries:
            codes[entry.code] = codes.get(entry.code, 0) + 1
        problems.append(f"{side.name}: access.log has {len(entries)} lines for "
                        f"{stats.answered} answers; codes {codes}")
    return problems


def main() -> int:
    parser = arg_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--packages", type=int, default=500, help="distinct cached RPMs")
    parser.add_argument("--size", type=int, default=256 * 1024, help="bytes per RPM")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of one round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per Squid")
    args = parser.parse_args()
    if args.quick:
        args.packages, args.seconds, args.rounds = 100, 3.0, 1
    problem = prerequisites()
    if problem:
        print(f"cannot run: {problem}")
        return 2

    documents = package_documents(0)  # repodata/repomd.xml: the helper surveys it first
    documents.update({f"/Packages/{package_name(i)}": (b"%08d" % i) * (args.size // 8)
                      for i in range(args.packages)})
    good = MirrorServer(documents=documents)
    # An RPM published long ago: with a Last-Modified of just now, Squid's LM-factor would make
    # the copies stale within seconds (TCP_REFRESH_UNMODIFIED instead of hits).
    good.started = time.time() - 30 * 86400
    with good, WorldReadableDir("squid-helper-bench-") as tmp:
        # 500 new paths in a burst would be verified 50 a second (max_probes_per_second), and
        # the unverified ones again on every later request: what is measured here is cached
        # throughput, so the warm-up verifies them all at once.
        config = static_config(tmp / "helper", [good.url],
                               **{"probe_timeout": 2, "max_probes_per_second": 100_000,
                                  **extra_settings(args)})
        (tmp / "helper" / "helper.log").touch()
        chown_proxy(tmp / "helper" / "memo", tmp / "helper" / "helper.log")
        virtual = [f"{REPO_PREFIX}Packages/{package_name(i)}" for i in range(args.packages)]
        direct = [f"{good.url}Packages/{package_name(i)}" for i in range(args.packages)]
        echo = write_echo_helper(tmp)
        echo_programs = {
            "url_rewrite_program": f"/usr/bin/python3 {echo} rewrite {REPO_PREFIX} {good.url}",
            "store_id_program": f"/usr/bin/python3 {echo} storeid {REPO_PREFIX} "
                                "http://echo.squid-helper.invalid/"}
        with SquidInstance(tmp / "with-helper", config, **HELPER_PARAMS) as with_helper, \
                SquidInstance(tmp / "plain", config, helpers=False, **HELPER_PARAMS) as plain, \
                SquidInstance(tmp / "echo", config, programs=echo_programs,
                              **HELPER_PARAMS) as with_echo:
            sides = [Side("plain", plain, direct), Side("helper", with_helper, virtual),
                     Side("echo", with_echo, virtual)]
            print(f"{os.cpu_count()} CPUs; {args.packages} RPMs of {args.size} bytes on a local "
                  f"mirror; Squid with helper on :{with_helper.port} (repo {REPO}), plain "
                  f"Squid on :{plain.port}, echo Squid on :{with_echo.port}; "
                  f"helpers: {HELPER_PARAMS}")
            for side in sides:  # warm: a miss each, then every URL must be a hit
                for attempt in ("fill", "check"):
                    start = marker(side, good.url, f"{attempt}-start")
                    stats = drive(side, args.connections, 120.0, once=True)
                    end = marker(side, good.url, f"{attempt}-end")
                    if attempt == "check":
                        problems = check_round(side, stats, start, end)
                    elif (stats.answered != args.packages or stats.failures
                          or set(stats.statuses) != {("rpm", 200)}):
                        problems = [f"{side.name}: {dict(stats.statuses)} {dict(stats.failures)}"]
                    else:
                        problems = []
                    if problems:
                        print("warm-up failed:", *problems, sep="\n  ")
                        print("access.log:", *side.squid.access_log()[-3:], sep="\n  ")
                        print("cache.log:", side.squid.cache_log()[-3000:])
                        helper_log = tmp / "helper" / "helper.log"
                        print("helper.log:", helper_log.read_text()[-3000:])
                        return 1
                print(f"warm-up {side.name}: {args.packages} misses, then {args.packages} hits")
            # The helper verifies its unprobed package answers in the background: let it finish,
            # or its HEADs land in the measured rounds.
            verified = wait_for(lambda: good.count("HEAD", path_contains="/Packages/")
                                >= args.packages, timeout=args.packages / 20 + 30, step=0.2)
            print(f"probes at the mirror during warm-up: {good.count('HEAD')} HEAD, "
                  f"{good.count('GET', path_contains='/Packages/')} GET"
                  + ("" if verified else " (the background verification did not finish)"))

            mirror_before = good.count(path_contains="/Packages/")
            rates: Dict[str, List[float]] = {side.name: [] for side in sides}
            failed: List[str] = []
            print(f"\n{args.rounds} round(s) of {args.seconds:g}s per Squid, "
                  f"{args.connections} keep-alive connections, alternating")
            print(f"{'round':>5} {'squid':<7} {'req/s':>9} {'MB/s':>7} {'squid CPU':>9} "
                  f"{'helpers CPU':>11} {'client CPU':>10} {'hits':>8}")
            for round_no, side in itertools.product(range(1, args.rounds + 1), sides):
                start = marker(side, good.url, f"{round_no}-start")
                helper_pids = side.squid.helper_pids()
                squid_cpu = cpu_seconds(side.squid.pid)
                helper_cpu = sum(cpu_seconds(p) for p in helper_pids)
                client_cpu = sum(os.times()[:2])
                stats = drive(side, args.connections, args.seconds)
                client_cpu = sum(os.times()[:2]) - client_cpu
                squid_cpu = cpu_seconds(side.squid.pid) - squid_cpu
                helper_cpu = sum(cpu_seconds(p) for p in helper_pids) - helper_cpu
                end = marker(side, good.url, f"{round_no}-end")
                problems = check_round(side, stats, start, end)
                failed += problems
                rates[side.name].append(stats.rate)
                print(f"{round_no:>5} {side.name:<7} {stats.rate:>9.0f} "
                      f"{stats.bytes / stats.seconds / 1e6:>7.1f} "
                      f"{100 * squid_cpu / stats.seconds:>8.0f}% "
                      f"{100 * helper_cpu / stats.seconds:>10.0f}% "
                      f"{100 * client_cpu / stats.seconds:>9.0f}% "
                      f"{'all' if not problems else 'NOT ALL':>8}")
            mirror_requests = good.count(path_contains="/Packages/") - mirror_before
            cache_log = with_helper.cache_log()

    plain_rate, helper_rate = median(rates["plain"]), median(rates["helper"])
    echo_rate = median(rates["echo"])
    ratio = helper_rate / plain_rate if plain_rate else 0.0
    for problem in failed:
        print(f"PROBLEM {problem}")
    helper_errors = [ln for ln in cache_log.splitlines()
                     if "ERROR" in ln or "helpers are crashing" in ln]
    print(f"\nplain Squid (mirror URLs):       {plain_rate:>9.0f} req/s (median)")
    print(f"Squid + helper (virtual URLs):   {helper_rate:>9.0f} req/s (median)")
    print(f"Squid + echo helpers (virtual):  {echo_rate:>9.0f} req/s (median): the floor of "
          "any Python rewrite + store_id helper pair")
    if plain_rate and echo_rate:
        print(f"echo/plain = {echo_rate / plain_rate:.2f} (Squid's own cost of consulting two "
              f"helpers per request); helper/echo = {helper_rate / echo_rate:.2f}")
    print(f"requests reaching the mirror during the measured rounds: {mirror_requests} "
          "(expected 0: all hits)")
    print(f"helper errors in cache.log: {len(helper_errors)}")
    for line in helper_errors[:5]:
        print(f"  {line}")
    ok = not failed and mirror_requests == 0 and not helper_errors
    print(f"RATIO requests/s helper/plain = {ratio:.2f}   goal >= {GOAL}: "
          f"{verdict(ratio >= GOAL)}{'' if ok else '  (but see PROBLEM lines: not all hits)'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run(main))
