"""A cold `dnf install` through Squid + squid-helper versus the same through plain Squid.

Real sockets on 127.0.0.1, the real dnf, a real RPM repository (--packages small noarch RPMs from
rpmbuild, repodata from createrepo_c, built once per benchmark run) served by two
lab.mirrors.MirrorServer: a near mirror that adds --delay seconds to every answer and a far one
that adds three times as much. Every measured run starts from nothing: a fresh Squid (its own
directory, `squid -z`, empty cache), a fresh helper memo and log, a fresh dnf client directory.
The time measured is the `dnf install --downloadonly` of every package (Squid start-up, helper
start-up and one warm-up request through Squid excluded). Cases, interleaved in every round:

* helper-near: repos.yaml lists only the near mirror (static `mirrors:`), dnf asks
  http://repoproxy/<repo>/$releasever/$basearch/;
* plain: Squid without any helper line, dnf's baseurl is the near mirror's own URL;
* helper-far: repos.yaml lists the far mirror BEFORE the near one.

Both helper cases are compared with the same plain runs (two per round, one after each helper
run). A second access log with timings (%tr total, %<tt time spent with the mirror) shows where
the time goes: `tr - tt` is what Squid spent before and around the mirror fetch (helpers
included).

    /opt/squid-helper/venv/bin/python benchmarks/bench_cold_dnf.py [--quick]

Needs root, squid, dnf, rpmbuild, createrepo_c and the `proxy` user.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from common import arg_parser, extra_settings, median, run, verdict, write_config

from lab.mirrors import MirrorServer, free_port
from lab.rpmrepo import DnfClient, build_rpm, dnf_output, make_rpm_repo
from lab.squid import SquidInstance, WorldReadableDir, chown_proxy
from squid_helper.ops.squidconf import SquidConfParams

GOAL_NEAR = 1.05
GOAL_FAR = 1.10
FAR_FACTOR = 3.0
REPO = "colddnf"
RELEASEVER = "9"
VIRTUAL_BASE = f"http://repoproxy/{REPO}/$releasever/$basearch/"
NEAR, PLAIN, FAR = "helper-near", "plain", "helper-far"
# The helper settings squid.conf.example ships with (the lab's defaults are smaller).
SHIPPED = SquidConfParams()
HELPER_PARAMS = {name: getattr(SHIPPED, name) for name in (
    "rewrite_children", "rewrite_startup", "rewrite_idle", "rewrite_concurrency",
    "storeid_children", "storeid_startup", "storeid_idle", "storeid_concurrency")}
# A second access log: completion time, %tr (ms, whole transaction), %<tt (ms, from the first
# connect/write to the mirror to the last I/O with it), status, bytes, method, URL as fetched.
TIMING_FORMAT = "logformat benchtiming %ts.%03tu %tr %<tt %Ss/%03>Hs %<st %rm %ru"
STATUS_RE = re.compile(r" \[([a-z-]+), ([0-9.]+)s\]")


# -- the repository ------------------------------------------------------------------------------
def package_names(count: int) -> List[str]:
    return [f"cold{i:03d}" for i in range(count)]


def build_repository(base: Path, count: int, size: int) -> Path:
    """count noarch RPMs (rpmbuild, in parallel) in one createrepo_c repository; returns the
    mirrors' document root (the repo sits at pub/<releasever>/<arch>/ below it)."""
    names = package_names(count)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        rpms = list(pool.map(lambda name: build_rpm(base / "build" / name, name, "1.0",
                                                    size=size), names))
    root = base / "mirror"
    make_rpm_repo(root / "pub" / RELEASEVER / platform.machine(), rpms, revision=1000)
    shutil.rmtree(base / "build", ignore_errors=True)
    return root


# -- one run -------------------------------------------------------------------------------------
@dataclass
class TimingLine:
    end: float  # seconds since the epoch, when Squid finished the transaction
    total_ms: int  # %tr
    mirror_ms: Optional[int]  # %<tt, None when no mirror was contacted
    code: str
    url: str

    @property
    def before_ms(self) -> Optional[int]:
        """Time Squid spent on the request apart from the mirror exchange (helpers, store,
        connect bookkeeping)."""
        return None if self.mirror_ms is None else self.total_ms - self.mirror_ms


@dataclass
class RunResult:
    round_no: int
    case: str
    seconds: float
    warmup: float
    package_gets: Dict[str, int]  # mirror name -> GETs of .rpm files
    package_heads: Dict[str, int]  # mirror name -> HEADs of .rpm files (verifications)
    other_requests: Dict[str, int]  # mirror name -> other requests (repodata, survey)
    timing: List[TimingLine] = field(default_factory=list)
    statuses: Dict[str, int] = field(default_factory=dict)  # helper log: status -> count
    repomd_helper_s: Optional[float] = None  # the helper's own time for repomd.xml
    repomd_line: str = ""  # the helper log's line for it (the survey's verdicts)

    def repomd(self) -> Optional[TimingLine]:
        return next((t for t in self.timing if t.url.endswith("/repodata/repomd.xml")), None)

    def span(self) -> float:
        """From the first request's start to the last one's end, as Squid saw them."""
        if not self.timing:
            return 0.0
        return (max(t.end for t in self.timing)
                - min(t.end - t.total_ms / 1000 for t in self.timing))

    def phases(self) -> Dict[str, float]:
        """Seconds of the run's phases as Squid logged them: until repomd.xml was answered,
        the other repodata after it, dnf's own work between the last repodata and the first
        RPM, and the RPM downloads."""
        rpms = [t for t in self.timing if t.url.endswith(".rpm")]
        meta = [t for t in self.timing if not t.url.endswith(".rpm")]
        repomd = self.repomd()
        if not rpms or not meta or repomd is None:
            return {}
        first = min(t.end - t.total_ms / 1000 for t in self.timing)
        meta_end = max(t.end for t in meta)
        rpm_start = min(t.end - t.total_ms / 1000 for t in rpms)
        return {"repomd": repomd.end - first, "repodata": meta_end - repomd.end,
                "dnf": rpm_start - meta_end, "rpms": max(t.end for t in rpms) - rpm_start}

    def rpm_before_ms(self) -> List[int]:
        return [t.before_ms for t in self.timing
                if t.url.endswith(".rpm") and t.before_ms is not None]


def read_timing(path: Path) -> List[TimingLine]:
    lines = []
    if not path.exists():
        return lines
    for raw in path.read_text(errors="replace").splitlines():
        fields = raw.split()
        if len(fields) < 7:
            continue
        try:
            end, total = float(fields[0]), int(fields[1])
        except ValueError:
            continue
        mirror_ms = int(fields[2]) if fields[2].lstrip("-").isdigit() else None
        if mirror_ms is not None and mirror_ms < 0:
            mirror_ms = None
        lines.append(TimingLine(end, total, mirror_ms, fields[3], fields[6]))
    return lines


def helper_statuses(log_text: str) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for match in STATUS_RE.finditer(log_text):
        counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return counts


def repomd_decision(log_text: str) -> str:
    """The helper log's line for the first repomd.xml answer ('' if none)."""
    return next((line for line in log_text.splitlines()
                 if "/repodata/repomd.xml -> " in line and STATUS_RE.search(line)), "")


def helper_config(directory: Path, bases: Sequence[str], accel_port: int,
                  settings: Dict[str, object]) -> Path:
    """repos.yaml with one static-mirrors repo, its memo and log owned by proxy (as the
    end-to-end tests write it)."""
    directory.mkdir(parents=True)
    path = write_config(directory, {REPO: {"mirrors": list(bases)}},
                        accel_ports=[accel_port], probe_timeout=2, **settings)
    (directory / "helper.log").touch()
    chown_proxy(directory / "memo", directory / "helper.log")
    return path


def warm_up(squid: SquidInstance, mirror: MirrorServer, name: str) -> float:
    """Requests through Squid for a URL that is not a repo URL (the helpers answer ERR), two
    at a time so that both rewrite helpers Squid starts are up, and the store-id one, before
    the clock starts. Returns the seconds taken."""
    started = time.monotonic()
    errors: List[BaseException] = []

    def one(index: int) -> None:
        try:
            squid.get(f"{mirror.url}warm-up/{name}/{index}", timeout=30)
        except OSError as exc:
            errors.append(exc)

    for attempt in range(2):
        threads = [threading.Thread(target=one, args=(2 * attempt + i,), daemon=True)
                   for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(35)
    if errors:
        raise RuntimeError(f"warm-up through Squid failed: {errors[0]}")
    return time.monotonic() - started


def mirror_counts(mirrors: Dict[str, MirrorServer], marks: Dict[str, int]):
    gets, heads, others = {}, {}, {}
    for name, server in mirrors.items():
        with server.lock:
            seen = list(server.requests[marks[name]:])
        gets[name] = sum(1 for m, p, _ in seen if m == "GET" and p.endswith(".rpm"))
        heads[name] = sum(1 for m, p, _ in seen if m == "HEAD" and p.endswith(".rpm"))
        others[name] = len(seen) - gets[name] - heads[name]
    return gets, heads, others


class RunFailed(RuntimeError):
    pass


def one_run(tmp: Path, index: int, round_no: int, case: str, mirrors: Dict[str, MirrorServer],
            names: List[str], settings: Dict[str, object]) -> RunResult:
    near, far = mirrors["near"], mirrors["far"]
    arch = platform.machine()
    template = "pub/{releasever}/{arch}/"
    run_dir = tmp / f"run-{index:02d}-{case}"
    accel = free_port()
    if case == NEAR:
        bases = [near.url + template]
    elif case == FAR:
        bases = [far.url + template, near.url + template]
    else:
        bases = [near.url + template]  # unused by plain Squid, but SquidInstance wants one
    config = helper_config(run_dir / "helper", bases, accel, settings)
    # Plain Squid's clients ask the mirrors on loopback directly: this host's own addresses.
    squid = SquidInstance(run_dir / "squid", config, accel_port=accel, helpers=case != PLAIN,
                          guard_local_destinations=False, **HELPER_PARAMS)
    timing_log = squid.log_dir / "timing.log"
    squid.extra_lines += [TIMING_FORMAT, f"access_log stdio:{timing_log} benchtiming"]
    client = DnfClient(run_dir, "dnf")
    baseurl = VIRTUAL_BASE if case != PLAIN else f"{near.url}pub/{RELEASEVER}/{arch}/"
    with squid:
        warmup = warm_up(squid, near, f"{index}")
        marks = {name: len(server.requests) for name, server in mirrors.items()}
        started = time.monotonic()
        result = client.install(baseurl, names, proxy=squid.proxy_url, releasever=RELEASEVER)
        seconds = time.monotonic() - started
    # Squid has stopped (helpers too, logs flushed): nothing reaches the mirrors any more.
    helper_log = (run_dir / "helper" / "helper.log").read_text(errors="replace")
    expected = sorted(f"{n}-1.0-1.noarch.rpm" for n in names)
    if result.returncode != 0 or client.downloaded() != expected:
        missing = sorted(set(expected) - set(client.downloaded()))
        raise RunFailed(
            f"round {round_no} {case}: dnf failed or did not download everything "
            f"({len(missing)} missing: {missing[:5]})\n{dnf_output(result)}\naccess.log:\n"
            + "\n".join(map(str, squid.access_log()[-20:]))
            + f"\nhelper.log:\n{helper_log[-4000:]}\ncache.log:\n{squid.cache_log()[-3000:]}")
    gets, heads, others = mirror_counts(mirrors, marks)
    timing = [t for t in read_timing(timing_log)
              if "/warm-up/" not in t.url and "/squid-internal-mgr/" not in t.url]
    run = RunResult(round_no, case, seconds, warmup, gets, heads, others, timing)
    if case != PLAIN:
        run.statuses = helper_statuses(helper_log)
        run.repomd_line = repomd_decision(helper_log)
        match = STATUS_RE.search(run.repomd_line)
        run.repomd_helper_s = float(match.group(2)) if match else None
    shutil.rmtree(run_dir, ignore_errors=True)
    return run


# -- output --------------------------------------------------------------------------------------
def print_run(run: RunResult) -> None:
    repomd = run.repomd()
    before = run.rpm_before_ms()
    statuses = " ".join(f"{k}={v}" for k, v in sorted(run.statuses.items())) or "-"
    print(f"{run.round_no:>5} {run.case:<11} {run.seconds:>7.2f}s {run.span():>7.2f}s "
          f"{run.warmup:>6.2f}s {repomd.total_ms if repomd else -1:>7}ms "
          f"{median(before):>7.0f}ms {run.package_gets['near']:>4}/{run.package_gets['far']:<4}"
          f" {run.package_heads['near']:>4}/{run.package_heads['far']:<4} {statuses}",
          flush=True)


def prerequisites() -> str:
    missing = [c for c in ("squid", "dnf", "rpmbuild", "createrepo_c") if shutil.which(c) is None]
    problems = [f"missing: {', '.join(missing)}"] if missing else []
    if os.geteuid() != 0:
        problems.append("must run as root (Squid drops to its proxy user)")
    return "; ".join(problems)


def main() -> int:
    parser = arg_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--packages", type=int, default=60, help="packages in the repository")
    parser.add_argument("--size", type=int, default=2000, help="payload bytes per package")
    parser.add_argument("--delay", type=float, default=0.1,
                        help="seconds the near mirror adds to every answer (far: 3x)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (each runs every case)")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 2
    problem = prerequisites()
    if problem:
        print(f"cannot run: {problem}")
        return 2
    settings = extra_settings(args)
    names = package_names(args.packages)
    order = [NEAR, PLAIN, FAR, PLAIN]
    runs: List[RunResult] = []
    wall = time.monotonic()
    with WorldReadableDir("squid-helper-bench-") as tmp:
        started = time.monotonic()
        root = build_repository(tmp, args.packages, args.size)
        print(f"{os.cpu_count()} CPUs; repository of {args.packages} packages "
              f"({args.size} payload bytes each) built in {time.monotonic() - started:.1f}s")
        with MirrorServer(root, delay=args.delay) as near, \
                MirrorServer(root, delay=args.delay * FAR_FACTOR) as far:
            mirrors = {"near": near, "far": far}
            print(f"near mirror {near.url} (+{args.delay:g}s per answer), far mirror {far.url} "
                  f"(+{args.delay * FAR_FACTOR:g}s); helpers: {HELPER_PARAMS}"
                  + (f"; repos.yaml extra: {settings}" if settings else ""))
            print(f"{args.rounds} round(s), each: {', '.join(order)}; fresh Squid, memo and dnf "
                  "directory per run\n")
            print("dnf: wall time of the dnf run; span: first request to last answer in Squid's "
                  "log; repomd: Squid's time for the first repomd.xml; rpm tr-tt: median per-RPM "
                  "time in Squid apart from the mirror exchange; GET/HEAD n/f: .rpm requests at "
                  "the near/far mirror (HEADs: the helper's background verifications)")
            print(f"{'round':>5} {'case':<11} {'dnf':>8} {'span':>8} {'warmup':>7} "
                  f"{'repomd':>9} {'rpm tr-tt':>9} {'GET n/f':>9} {'HEAD n/f':>9} "
                  "helper statuses")
            index = 0
            try:
                for round_no in range(1, args.rounds + 1):
                    for case in order:
                        index += 1
                        run = one_run(tmp, index, round_no, case, mirrors, names, settings)
                        runs.append(run)
                        print_run(run)
            except RunFailed as failure:
                print(f"FAILED: {failure}")
                return 1

    def of(case: str) -> List[RunResult]:
        return [r for r in runs if r.case == case]

    def med(case: str, value) -> float:
        return median([v for v in (value(r) for r in of(case)) if v is not None])

    print("\nmedians")
    for case in (NEAR, FAR, PLAIN):
        repomd_helper = med(case, lambda r: r.repomd_helper_s) if case != PLAIN else None
        print(f"  {case:<11} dnf {med(case, lambda r: r.seconds):6.2f}s  span "
              f"{med(case, lambda r: r.span()):6.2f}s  repomd "
              f"{med(case, lambda r: r.repomd().total_ms if r.repomd() else None):5.0f}ms  "
              f"rpm tr-tt {med(case, lambda r: median(r.rpm_before_ms())):4.0f}ms  "
              f"({len(of(case))} runs)"
              + (f"  helper's own time for repomd.xml {1000 * repomd_helper:.0f}ms"
                 if repomd_helper else ""))
    print("phases in Squid's log (medians): until repomd.xml answered / other repodata / "
          "dnf's own work before the first RPM / RPM downloads")
    for case in (NEAR, FAR, PLAIN):
        parts = [med(case, lambda r, k=k: r.phases().get(k))
                 for k in ("repomd", "repodata", "dnf", "rpms")]
        print(f"  {case:<11} " + " / ".join(f"{p:5.3f}s" for p in parts))
    plain = med(PLAIN, lambda r: r.seconds)
    near_ratio = med(NEAR, lambda r: r.seconds) / plain if plain else 0.0
    far_ratio = med(FAR, lambda r: r.seconds) / plain if plain else 0.0
    far_gets = sum(r.package_gets["far"] for r in of(FAR))
    near_gets = sum(r.package_gets["near"] for r in of(FAR))
    far_heads = sum(r.package_heads["far"] for r in of(FAR))
    near_heads = sum(r.package_heads["near"] for r in of(FAR))
    statuses: Dict[str, int] = {}
    for run in of(NEAR) + of(FAR):
        for key, value in run.statuses.items():
            statuses[key] = statuses.get(key, 0) + value
    print(f"\n{FAR}: package GETs at the far mirror {far_gets}, at the near one {near_gets} "
          f"(expected: all at the near one); HEADs far {far_heads}, near {near_heads}")
    for case in (NEAR, FAR):
        line = next((r.repomd_line for r in of(case) if r.repomd_line), "")
        print(f"{case}, helper log on repomd.xml (first run): "
              f"{line.split(' INFO ', 1)[-1][:600] or 'none'}")
    print(f"helper log statuses over all helper runs: "
          f"{' '.join(f'{k}={v}' for k, v in sorted(statuses.items())) or 'none'}")
    print(f"plain Squid runs ({len(of(PLAIN))}, one after each helper run) are the baseline of "
          "both ratios")
    print(f"total wall time {time.monotonic() - wall:.0f}s")
    print(f"RATIO cold dnf time {NEAR}/plain = {near_ratio:.3f}   goal <= {GOAL_NEAR:.2f}: "
          f"{verdict(near_ratio <= GOAL_NEAR)}")
    print(f"RATIO cold dnf time {FAR}/plain = {far_ratio:.3f}   goal <= {GOAL_FAR:.2f}: "
          f"{verdict(far_ratio <= GOAL_FAR)}"
          + ("" if far_gets == 0 else f"  ({far_gets} package GETs went to the far mirror)"))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
