"""Soak: mixed load through a real Squid with the helpers; RSS and open fds over time, errors.

A real Squid (squid_helper.ops.squidconf's squid.conf; all helper processes started at once, so a
new helper pid can only mean a restart) runs on 127.0.0.1 with `squid-helper rewrite` and
`squid-helper storeid`. A pure-Python keep-alive client sends, at `rate` requests/s:
cached repo paths (hits), new repo paths (each verified once on the local mirror), paths no
mirror has, hostile repo URLs (`..`, `%2e%2e`, `%252e`, backslashes, braces, userinfo, empty
segments, unknown repo, over-long), non-repo URLs to a local origin server (generic proxying,
200 and 404) and PURGE requests; every few seconds it also runs `squid-helper purge` and
`squidclient -m PURGE`. Squid resolves names only through a loopback DNS that answers NXDOMAIN,
so nothing leaves 127.0.0.0/8.

Every `sample_every` seconds the RSS and open file descriptors (/proc/<pid>/fd) of Squid and of
every helper process are recorded. Errors (SoakResult.errors()): an HTTP status other than the
one expected for the kind of request, client failures, helper deaths or restarts (a helper pid
gone or new, Squid's "exited"/"helpers are crashing" lines), BH replies and helper errors in
cache.log, internal errors in the helper log, failed purges. SoakResult.flat() checks that each
helper's fds and RSS stayed within a slack of the first sample after the warm-up.

run_soak() is the whole run; benchmarks/bench_soak.py is its command line (10 minutes, with a
report), tests/test_soak.py runs it for 30 s. Needs root, squid, squidclient and the `proxy`
user.
"""

from __future__ import annotations

import itertools
import random
import re
import shutil
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from lab.dns import LoopbackDns
from lab.helper import helper_command, write_config
from lab.httpclient import KeepAliveClient, get_request, http_get
from lab.mirrors import MirrorServer, repomd_xml
from lab.procfs import ProcSample, proc_sample
from lab.squid import SquidInstance, WorldReadableDir, chown_proxy
from squid_helper.ops.squidconf import SquidConfParams

REPO = "soak"
PREFIX = f"http://repoproxy/{REPO}/9/x86_64/"
HIT_PACKAGES = 200
ORIGIN_PAGES = 50
REWRITE_CHILDREN, STOREID_CHILDREN = 4, 2
OVERLONG = 9000  # characters: over the helper's 8 KiB limit (and Squid's own URL limit)

# kind of request -> (share of the load, HTTP statuses that are correct for it)
MIX: Dict[str, Tuple[float, Tuple[int, ...]]] = {
    "hit": (0.45, (200,)),
    "new": (0.10, (200,)),
    # helper: ERR repo-error=not-found, which squid.conf turns into a 404
    "notfound": (0.08, (404,)),
    # refused by the helper (ERR repo-error=refused: 400) or by Squid itself (400: URL over
    # 8 KiB); 404 where Squid itself cleans the URL first (it drops user:secret@ before the
    # helper sees it, leaving a harmless path no mirror has): never 200
    "hostile": (0.12, (400, 404)),
    "generic": (0.15, (200,)),
    "generic404": (0.05, (404,)),
    "purge": (0.05, (200, 404)),  # 404: not (or no longer) in the cache
}
HOSTILE = [
    PREFIX + "../../../../etc/passwd",
    PREFIX + "Packages/../../../../etc/shadow",
    PREFIX + "Packages/%2e%2e/%2e%2e/%2E%2E/etc/passwd",
    PREFIX + "Packages/%252e%252e/%252e%252e/x.rpm",
    PREFIX + "Packages/..%5c..%5c..%5cx.rpm",
    PREFIX + "Packages/.%2e/x.rpm",
    PREFIX + "Packages/./hit-1.rpm",
    f"http://repoproxy/{REPO}/%7Breleasever%7D/x86_64/Packages/a.rpm",
    f"http://repoproxy/{REPO}/9/x86_64%7D/Packages/a.rpm",
    f"http://repoproxy/{REPO}/9//Packages/a.rpm",
    f"http://repoproxy/{REPO}/9/x86_64//Packages/a.rpm",
    f"http://user:secret@repoproxy/{REPO}/9/x86_64/Packages/a.rpm",
    "http://repoproxy/no-such-repo/9/x86_64/Packages/a.rpm",
    "http://repoproxy/",
    PREFIX + "Packages/%00.rpm",
    PREFIX + "Packages/%0d%0aX-Injected:%20yes.rpm",
    PREFIX + "Packages/" + "a" * 7000 + ".rpm",
    PREFIX + "Packages/" + "b" * OVERLONG + ".rpm",
]
CACHE_LOG_PROBLEMS = re.compile(
    r"helpers are crashing|#Hlpr\d+ exited|ERROR: URL rewrite helper|ERROR: storeID helper"
    r"|FATAL|assertion failed|queue overload|Timedout", re.IGNORECASE)
HELPER_LOG_PROBLEMS = re.compile(r" (ERROR|CRITICAL) |Traceback")


def document(path: str) -> bytes:
    return b"soak-rpm " + path.encode() + b"\n" + b"x" * 4000


class GeneratedPackages(dict):
    """MirrorServer documents: the fixed ones, plus any /Packages/new-*.rpm (a mirror that has
    every new path the soak asks for)."""

    def get(self, key, default=None):
        if key.startswith("/Packages/new-") and key.endswith(".rpm"):
            return document(key)
        return super().get(key, default)


# -- results -------------------------------------------------------------------------------------
@dataclass
class Sample:
    seconds: float  # since the measured phase began (negative: warm-up)
    squid: Optional[ProcSample]
    helpers: Dict[int, Tuple[str, Optional[ProcSample]]]  # pid -> (role, sample)


@dataclass
class SoakResult:
    seconds: float = 0.0
    warmup: float = 0.0
    requests: int = 0
    statuses: Counter = field(default_factory=Counter)  # (kind, status) -> count
    samples: List[Sample] = field(default_factory=list)
    unexpected: Dict[Tuple[str, int], int] = field(default_factory=dict)
    failures: Dict[Tuple[str, str], int] = field(default_factory=dict)
    purges: int = 0
    purge_failures: List[str] = field(default_factory=list)
    helper_pids_start: Dict[int, str] = field(default_factory=dict)
    helpers_gone: List[int] = field(default_factory=list)
    helpers_new: List[int] = field(default_factory=list)
    cache_log_problems: List[str] = field(default_factory=list)
    helper_log_problems: List[str] = field(default_factory=list)
    final_checks: List[str] = field(default_factory=list)  # problems with the last requests
    mirror_probes: int = 0
    dns_queries: int = 0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def errors(self) -> List[str]:
        found = [f"unexpected HTTP status: {kind} -> {status} x{count}"
                 for (kind, status), count in sorted(self.unexpected.items())]
        found += [f"client failure: {kind}: {problem} x{count}"
                  for (kind, problem), count in sorted(self.failures.items())]
        found += [f"purge failed: {p}" for p in self.purge_failures]
        found += [f"helper pid {p} ({self.helper_pids_start.get(p, '?')}) died"
                  for p in self.helpers_gone]
        found += [f"new helper pid {p} (a restart)" for p in self.helpers_new]
        found += [f"cache.log: {line}" for line in self.cache_log_problems]
        found += [f"helper log: {line}" for line in self.helper_log_problems]
        found += self.final_checks
        return found

    def measured(self) -> List[Sample]:
        return [s for s in self.samples if s.seconds >= 0]

    def growth(self) -> Dict[str, Tuple[float, int, float, int]]:
        """name -> (RSS growth MB, fd growth, first RSS MB, first fds), each growth being the
        largest value after the warm-up minus the first one after it."""
        samples = self.measured()
        series: Dict[str, List[ProcSample]] = {}
        for sample in samples:
            if sample.squid:
                series.setdefault("squid", []).append(sample.squid)
            for pid, (role, proc) in sample.helpers.items():
                if proc:
                    series.setdefault(f"{role}:{pid}", []).append(proc)
        return {name: ((max(p.rss_kb for p in procs) - procs[0].rss_kb) / 1024,
                       max(p.fds for p in procs) - procs[0].fds,
                       procs[0].rss_kb / 1024, procs[0].fds)
                for name, procs in series.items()}

    def flat(self, rss_mb: float, fd_slack: int) -> List[str]:
        """Helpers whose RSS or fds grew beyond the limits after the warm-up."""
        problems = []
        for name, (rss, fds, _, _) in self.growth().items():
            if name == "squid":
                continue
            if rss > rss_mb:
                problems.append(f"{name}: RSS grew {rss:.1f} MB (limit {rss_mb} MB)")
            if fds > fd_slack:
                problems.append(f"{name}: open fds grew by {fds} (limit {fd_slack})")
        if len(self.measured()) < 2:
            problems.append("fewer than two samples after the warm-up")
        return problems


# -- the run -------------------------------------------------------------------------------------
def prerequisites() -> List[str]:
    import os

    problems = [f"missing command: {c}" for c in ("squid", "squidclient")
                if shutil.which(c) is None]
    if os.geteuid() != 0:
        problems.append("must run as root (Squid drops to its proxy user)")
    return problems


class Load:
    """The request mix; deterministic for a seed."""

    def __init__(self, origin: str, seed: int = 5):
        self.random = random.Random(seed)
        self.origin = origin
        self.kinds = list(MIX)
        self.weights = [MIX[k][0] for k in self.kinds]
        self.counter = itertools.count()
        self.hostile = itertools.cycle(HOSTILE)

    def url(self, kind: str) -> Tuple[str, str]:
        n = next(self.counter)
        if kind == "hit":
            return "GET", f"{PREFIX}Packages/hit-{self.random.randrange(HIT_PACKAGES)}.rpm"
        if kind == "new":
            return "GET", f"{PREFIX}Packages/new-{n}.rpm"
        if kind == "notfound":
            return "GET", f"{PREFIX}Packages/missing-{n}.rpm"
        if kind == "hostile":
            return "GET", next(self.hostile)
        if kind == "generic":
            return "GET", f"{self.origin}page-{self.random.randrange(ORIGIN_PAGES)}"
        if kind == "generic404":
            return "GET", f"{self.origin}nothing-{n}"
        return "PURGE", f"{PREFIX}Packages/hit-{self.random.randrange(HIT_PACKAGES)}.rpm"

    def __call__(self) -> Tuple[bytes, str]:
        kind = self.random.choices(self.kinds, self.weights)[0]
        method, url = self.url(kind)
        return get_request(url, method), kind


class Sampler(threading.Thread):
    """Samples /proc every `every` seconds and runs the periodic purges, until stopped."""

    def __init__(self, squid: SquidInstance, config: Path, every: float, purge_every: float,
                 result: SoakResult, origin_of_time: Callable[[], float]):
        super().__init__(daemon=True)
        self.squid, self.config, self.every, self.purge_every = squid, config, every, purge_every
        self.result, self.origin_of_time = result, origin_of_time
        self.stopping = threading.Event()
        self.purge_counter = itertools.count()

    def sample(self) -> None:
        roles = self.squid.helper_roles()
        self.result.samples.append(Sample(
            time.monotonic() - self.origin_of_time(), proc_sample(self.squid.pid),
            {pid: (role, proc_sample(pid)) for pid, role in sorted(roles.items())}))
        known = self.result.helper_pids_start
        for pid in roles:
            if pid not in known and pid not in self.result.helpers_new:
                self.result.helpers_new.append(pid)
        for pid in known:
            if pid not in roles and pid not in self.result.helpers_gone:
                self.result.helpers_gone.append(pid)

    def purge(self) -> None:
        n = next(self.purge_counter)
        url = f"{PREFIX}Packages/hit-{(n * 37) % HIT_PACKAGES}.rpm"
        if n % 2 == 0:
            command = [*helper_command(), "purge", "--config", str(self.config),
                       "--proxy", self.squid.proxy, url]
            def good(r: subprocess.CompletedProcess) -> bool:
                return r.returncode == 0 and r.stdout.startswith("OK")
        else:
            command = ["squidclient", "-h", "127.0.0.1", "-p", str(self.squid.port),
                       "-m", "PURGE", url]
            def good(r: subprocess.CompletedProcess) -> bool:
                return r.returncode == 0 and bool(re.search(r" (200|404) ", r.stdout))
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            self.result.purge_failures.append(f"{command[0]} {url}: no answer in 60s")
            return
        self.result.purges += 1
        if not good(done):
            self.result.purge_failures.append(
                f"{' '.join(command[:2])} {url}: exit {done.returncode} "
                f"{(done.stdout + done.stderr)[-300:]!r}")

    def run(self) -> None:
        next_sample = next_purge = time.monotonic()
        while not self.stopping.is_set():
            now = time.monotonic()
            if now >= next_sample:
                self.sample()
                next_sample = now + self.every
            if self.purge_every and now >= next_purge:
                self.purge()
                next_purge = now + self.purge_every
            self.stopping.wait(max(0.05, min(next_sample, next_purge) - time.monotonic()))


def run_soak(seconds: float = 600.0, warmup: float = 10.0, rate: float = 200.0,
             connections: int = 16, sample_every: float = 0.0, purge_every: float = 5.0,
             settings: Optional[Dict[str, object]] = None,
             progress: Callable[[str], None] = print, seed: int = 5) -> SoakResult:
    """Run the soak and return its measurements. sample_every 0: about 20 samples; seed: the
    request mix's."""
    problems = prerequisites()
    if problems:
        raise RuntimeError("; ".join(problems))
    sample_every = sample_every or max(1.0, min(30.0, seconds / 20))
    result = SoakResult(warmup=warmup)
    documents = GeneratedPackages({"/repodata/repomd.xml": repomd_xml(2000)})
    documents.update({f"/Packages/hit-{i}.rpm": document(f"/Packages/hit-{i}.rpm")
                      for i in range(HIT_PACKAGES)})
    good = MirrorServer()
    good.documents = documents
    good.started = time.time() - 30 * 86400  # long-published files: Squid keeps them fresh
    origin = MirrorServer(documents={f"/page-{i}": b"page %d\n" % i for i in range(ORIGIN_PAGES)})
    origin.started = good.started
    phase_start = [time.monotonic() + warmup]
    sampler: Optional[Sampler] = None
    with good, origin, LoopbackDns() as dns, WorldReadableDir("squid-helper-soak-") as tmp:
        (tmp / "helper").mkdir()
        config = write_config(tmp / "helper", {REPO: {"mirrors": [good.url]}},
                              **{"probe_timeout": 2, **(settings or {})})
        (tmp / "helper" / "helper.log").touch()
        chown_proxy(tmp / "helper" / "memo", tmp / "helper" / "helper.log")
        with SquidInstance(tmp / "squid", config,
                           extra_lines=[f"dns_nameservers {dns.address}"],
                           rewrite_children=REWRITE_CHILDREN, rewrite_startup=REWRITE_CHILDREN,
                           rewrite_concurrency=SquidConfParams().rewrite_concurrency,
                           storeid_children=STOREID_CHILDREN, storeid_startup=STOREID_CHILDREN,
                           storeid_concurrency=SquidConfParams().storeid_concurrency,
                           # the generic proxying goes to an origin server on loopback
                           guard_local_destinations=False) as squid:
            deadline = time.monotonic() + 30
            while (len(squid.helper_roles()) < REWRITE_CHILDREN + STOREID_CHILDREN
                   and time.monotonic() < deadline):
                time.sleep(0.2)
            result.helper_pids_start = squid.helper_roles()
            progress(f"Squid pid {squid.pid} on :{squid.port}, helpers "
                     f"{sorted(result.helper_pids_start.items())}, DNS {dns.address}")
            sampler = Sampler(squid, config, sample_every, purge_every, result,
                              lambda: phase_start[0])
            try:
                load = Load(origin.url, seed)
                with KeepAliveClient("127.0.0.1", squid.port, connections) as client:
                    # fill the cache with the hit paths first, then the mixed warm-up
                    hits = iter([(get_request(f"{PREFIX}Packages/hit-{i}.rpm"), "hit")
                                 for i in range(HIT_PACKAGES)])
                    fill = client.run(lambda: next(hits, None), 120.0)
                    phase_start[0] = time.monotonic() + warmup
                    sampler.start()
                    warm = client.run(load, warmup, rate) if warmup > 0 else fill
                    phase_start[0] = time.monotonic()
                    sampler.sample()
                    progress(f"warm-up: {fill.answered} hit paths filled, {warm.answered} "
                             f"mixed requests in {warmup:g}s; measuring for {seconds:g}s")
                    stats = client.run(load, seconds, rate)
                for run in (fill, warm, stats):
                    for key, count in run.statuses.items():
                        result.statuses[key] += count
                    for key, count in run.failures.items():
                        result.failures[key] = result.failures.get(key, 0) + count
                result.requests, result.seconds = stats.answered, stats.seconds
            finally:
                if sampler.is_alive():
                    sampler.stopping.set()
                    sampler.join(timeout=90)
            sampler.sample()
            # the proxy still answers correctly: a cached path and a new one
            for path in ("hit-3.rpm", f"new-final-{time.time_ns()}.rpm"):
                status, _, body = http_get("127.0.0.1", squid.port, f"{PREFIX}Packages/{path}",
                                           {"Host": "repoproxy"}, timeout=30)
                if status != 200 or body != document(f"/Packages/{path}"):
                    result.final_checks.append(f"final request for {path}: {status} "
                                               f"{body[:80]!r}")
            result.cache_log_problems = [ln for ln in squid.cache_log().splitlines()
                                         if CACHE_LOG_PROBLEMS.search(ln)]
            helper_log = (tmp / "helper" / "helper.log").read_text(errors="replace")
            result.helper_log_problems = [ln[:300] for ln in helper_log.splitlines()
                                          if HELPER_LOG_PROBLEMS.search(ln)]
        result.mirror_probes = good.count("HEAD")
        result.dns_queries = dns.queries
    for (kind, status), count in result.statuses.items():
        if status not in MIX[kind][1]:
            result.unexpected[(kind, status)] = count
    return result
