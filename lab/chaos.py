"""Chaos: mirrors die, hang, come back and go stale while real dnf clients install through Squid.

Three mirrors (lab.mirrors.MirrorServer, each on a fixed port so that a killed one comes back on
the same address) serve a real 60-package RPM repository (rpmbuild, createrepo_c, built once
per run), listed in a plain mirrorlist served by a fourth server, the list host. A real Squid
(squid_helper.ops.squidconf's squid.conf, run as in production) has `squid-helper rewrite` and
`squid-helper storeid` wired in, with short TTLs so that the helpers have to react.

A chaos driver (one thread, a seeded random.Random) acts every 2-4 s: it picks the list host or
a mirror and one of the actions that change its state:

* a mirror: kill (stop the server: connections refused), restart (a new server on the same port
  serving the current snapshot), hang (accepts, never answers), stale (serves an older snapshot:
  lower repodata revision, the 20 newest packages missing) or heal (answers again, current
  snapshot);
* the list host: down, hang, or good again.

An action that would leave no mirror up, answering and current is skipped (and recorded as
skipped): at every moment at least one good mirror is up. Every action is recorded in a
timeline with its time.

Meanwhile `clients` threads run fresh lab.rpmrepo.DnfClient instances (a new directory each),
each installing a random subset of 5-15 of the 60 packages (`dnf install --downloadonly`),
one after the other until `seconds` have passed; client 0, 2, ... use Squid as their proxy
(http://repoproxy/...), client 1, 3, ... the accel port (http://proxyhost:<accel>/..., the old
style). The chaos goes on until the last dnf run has ended.

squid_cache=True runs squid.conf as shipped: Squid then holds all 60 packages and the
checksum-named repodata after the first few dnf runs, and only repomd.xml (revalidated on every
run) still needs a mirror. squid_cache=False adds `cache deny all`, so that every request goes
to the mirror the helper names, as a cold cache or a new snapshot's files would.

What is counted (ChaosResult), from the logs of that run only:

* dnf failures: exit status != 0, or a wanted package not downloaded (the output is kept);
* BH replies: the helper logs "internal error" (with a traceback) for each BH it sends, and
  Squid's cache.log says "ERROR: URL rewrite helper: ..." / "ERROR: storeID helper: ...";
* answers pointing at a mirror known dead at the time: a request in Squid's access log (a
  second log with the start time of each request: its end minus %tr) whose URL is on a mirror
  that was down (killed or hanging, per the timeline) when the request started, and for which
  the helper had logged "mirror <host:port> marked unhealthy" during that same outage, before
  the request started. The helper log has whole seconds: a mark logged in second S counts when
  S >= the outage's start and S + 1 <= the request's start (certainly before); marks that may
  or may not have come first are counted apart ("possibly known").

Also reported: how the helper explained each outage (marked unhealthy, stale verdicts,
corrected optimistic answers, completed surveys, mirrorlist failures, last-known answers),
requests sent to mirrors while they were down or stale, dnf run times.

run_chaos() is the whole run; benchmarks/bench_chaos.py is its command line (2 minutes, with a
report), tests/test_chaos.py runs it for 30 s. Needs root, squid, dnf, rpmbuild, createrepo_c
and the `proxy` user. Everything binds 127.0.0.0/8 only (Squid resolves names through a
loopback DNS that answers NXDOMAIN), and every server and process started here is stopped
before run_chaos() returns.
"""

from __future__ import annotations

import os
import platform
import random
import re
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import yaml

from lab.dns import LoopbackDns
from lab.helper import helper_command
from lab.mirrors import GOOD, HANG, MirrorServer, free_port
from lab.rpmrepo import DNF_TIMEOUT, DnfClient, build_rpms, dnf_output, make_rpm_repo
from lab.squid import SquidInstance, WorldReadableDir, chown_proxy

REPO = "chaos"
RELEASEVER = "9"
ARCH = platform.machine()
TREE = f"pub/{RELEASEVER}/{ARCH}"  # where a mirror keeps the repo
PACKAGES = 60
STALE_PACKAGES = 40  # the stale snapshot holds only the first 40
CURRENT_REVISION, STALE_REVISION = 2000, 1000
PACKAGE_SIZE = 2000  # payload bytes per package
SUBSET = (5, 15)  # packages per dnf run
INTERVAL = (2.0, 4.0)  # seconds between two chaos actions
MIRRORS = ("m1", "m2", "m3")
LIST_HOST = "list"
# The helper has to react: short lifetimes everywhere (repos.yaml settings).
SETTINGS: Dict[str, object] = {
    "probe_timeout": 2, "unhealthy_ttl": 5, "metadata_ttl": 5, "mirrorlist_ttl": 5,
    "refresh_interval": 2,
}
REWRITE_CHILDREN, STOREID_CHILDREN = 4, 2
# A second access log: end time, %tr (ms), local port (which client style), status, URL.
TIMED_FORMAT = "logformat chaostimed %ts.%03tu %tr %lp %>a %Ss/%03>Hs %rm %ru"
DOWN_STATES = ("down", "hang")  # a mirror that cannot answer

_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d) (\d+) (\w+) (\S+) (\w+) (.*)$")
_MARK = re.compile(r"mirror (\S+) marked unhealthy for ([0-9.]+)s: (.*)$")
_STALE_VERDICT = re.compile(r"survey http://([^/\s]+)/\S*: stale")
_ANSWER_TIME = re.compile(r" -> \S+ \[([a-z-]+), ([0-9.]+)s\]")
_LIST_TIMEOUT = re.compile(r"mirrorlist \S+: timeout")
CACHE_LOG_BH = re.compile(r"ERROR: URL rewrite helper|ERROR: storeID helper", re.IGNORECASE)
CACHE_LOG_PROBLEMS = re.compile(r"helpers are crashing|#Hlpr\d+ exited|FATAL|assertion failed"
                                r"|queue overload", re.IGNORECASE)
# Lines of the helper log that explain a failover, by kind.
EXPLANATIONS: Dict[str, re.Pattern] = {
    "marked unhealthy": re.compile(r"marked unhealthy"),
    "stale verdict": _STALE_VERDICT,
    "optimistic answer corrected": re.compile(r"optimistic answer for \S+ corrected"),
    "survey complete, mirror(s) no longer fresh": re.compile(r"survey of .* complete \(\d+ mirr"),
    "survey complete": re.compile(r"survey of .* complete"),
    "mirrorlist unusable (last good list kept)": re.compile(r"mirrorlist \S+ unusable"),
    "skipped unhealthy mirror(s)": re.compile(r"skipped unhealthy"),
    "last-known answer": re.compile(r"\[last-known, "),
    "unavailable": re.compile(r"\[unavailable, "),
    "not-found": re.compile(r"\[not-found, "),
}


def package_names(count: int = PACKAGES) -> List[str]:
    return [f"chaos{i:02d}" for i in range(count)]


def rpm_file(name: str) -> str:
    return f"{name}-1.0-1.noarch.rpm"


# -- the repository ------------------------------------------------------------------------------
def build_snapshots(base: Path, count: int = PACKAGES, stale_count: int = STALE_PACKAGES,
                    size: int = PACKAGE_SIZE) -> Dict[str, Path]:
    """Two snapshots of one real RPM repository, as mirrors' document roots (the repo at TREE
    below each): current (CURRENT_REVISION, all `count` packages, published an hour ago) and
    stale (STALE_REVISION, the first `stale_count` only, a day old)."""
    rpms = build_rpms(base / "build", package_names(count), "1.0", size=size)
    roots = {"current": base / "current", "stale": base / "stale"}
    make_rpm_repo(roots["current"] / TREE, rpms, revision=CURRENT_REVISION)
    make_rpm_repo(roots["stale"] / TREE, rpms[:stale_count], revision=STALE_REVISION)
    shutil.rmtree(base / "build", ignore_errors=True)
    now = time.time()
    for root, age in ((roots["current"], 3600), (roots["stale"], 86400)):
        for path in root.rglob("*"):
            os.utime(path, (now - age, now - age))
    return roots


# -- servers that come and go --------------------------------------------------------------------
def fixed_port() -> int:
    """A free 127.0.0.1 port below the ephemeral range, so that no outgoing connection (Squid's
    to the mirrors, the helpers' probes) takes it while its server is down."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


class Flapper:
    """One server the chaos plays with: a mirror (current and stale roots) or the list host
    (in-memory documents). Its state: down (no server), hang, stale or good."""

    def __init__(self, name: str, port: int, root: Optional[Path] = None,
                 stale_root: Optional[Path] = None,
                 documents: Optional[Dict[str, bytes]] = None):
        self.name = name
        self.port = port
        self.root = root
        self.stale_root = stale_root
        self.documents = documents
        self.server: Optional[MirrorServer] = None
        self.hanging = False
        self.stale = False

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}/"

    @property
    def state(self) -> str:
        if self.server is None:
            return "down"
        if self.hanging:
            return "hang"
        return "stale" if self.stale else "good"

    def start(self, attempts: int = 25) -> None:
        """A new server on the same port, answering and current."""
        problem: Optional[OSError] = None
        for _ in range(attempts):
            try:
                server = MirrorServer(self.root, documents=self.documents, port=self.port)
            except OSError as exc:  # the port is briefly taken: try again
                problem = exc
                time.sleep(0.2)
                continue
            self.server = server.start()
            self.hanging = self.stale = False
            return
        raise RuntimeError(f"{self.name}: cannot listen on {self.host} again: {problem}")

    def stop(self) -> None:
        server, self.server = self.server, None
        self.hanging = self.stale = False
        if server is not None:
            server.stop()

    def actions(self) -> List[str]:
        """The actions that change this server's state."""
        if self.server is None:
            return ["restart"]
        found = ["kill"]
        if not self.hanging:
            found.append("hang")
        if self.stale_root is not None and not self.stale:
            found.append("stale")
        if self.hanging or self.stale:
            found.append("heal")
        return found

    def state_after(self, action: str) -> str:
        if action == "kill":
            return "down"
        if action in ("restart", "heal"):
            return "good"
        if action == "hang":
            return "hang"
        return "hang" if self.hanging else "stale"  # stale

    def apply(self, action: str) -> None:
        if action == "kill":
            self.stop()
        elif action == "restart":
            self.start()
        elif action == "hang":
            self.server.behaviour = HANG
            self.hanging = True
        elif action == "stale":
            self.server.root = self.stale_root
            self.stale = True
        elif action == "heal":
            self.server.behaviour = GOOD
            self.server.root = self.root
            self.hanging = self.stale = False
        else:
            raise ValueError(action)


@dataclass
class Event:
    at: float  # time.time()
    target: str  # m1, m2, m3 or list
    action: str  # start, kill, restart, hang, stale, heal; skipped ones: skip-<action>
    state: str  # the target's state after it: down, hang, stale, good
    note: str = ""

    @property
    def applied(self) -> bool:
        return not self.action.startswith("skip") and self.action != "start"


class ChaosDriver(threading.Thread):
    """Acts on one server every interval (seeded), keeping one mirror up, answering and
    current at every moment, until stopped."""

    def __init__(self, mirrors: Sequence[Flapper], list_host: Flapper, rng: random.Random,
                 interval: Tuple[float, float], list_share: float = 0.25,
                 list_host_every: int = 4):
        """list_share: the chance that an action is the list host's; and at the latest every
        list_host_every-th action is, so that even a short run upsets it."""
        super().__init__(name="chaos", daemon=True)
        self.mirrors = list(mirrors)
        self.list_host = list_host
        self.rng = rng
        self.interval = interval
        self.list_share = list_share
        self.list_host_every = list_host_every
        self.since_list_host = 0  # steps since the list host's last applied action
        self.timeline: List[Event] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.error: Optional[BaseException] = None

    def record(self, target: str, action: str, state: str, note: str = "",
               at: Optional[float] = None) -> None:
        with self.lock:
            self.timeline.append(Event(time.time() if at is None else at, target, action,
                                       state, note))

    def good_mirrors(self, changed: Optional[Flapper] = None, action: str = "") -> int:
        return sum(1 for m in self.mirrors
                   if (m.state_after(action) if m is changed else m.state) == "good")

    def step(self) -> None:
        drawn = self.rng.random() < self.list_share
        if drawn or self.since_list_host >= self.list_host_every - 1:
            target = self.list_host
        else:
            target = self.rng.choice(self.mirrors)
            self.since_list_host += 1
        actions = target.actions()
        if target is self.list_host:
            actions = [a for a in actions if a != "stale"]
        action = self.rng.choice(actions)
        if target is not self.list_host and self.good_mirrors(target, action) < 1:
            self.record(target.name, f"skip-{action}", target.state,
                        "would leave no good mirror")
            return
        # An outage is dated from before the action (a kill takes a moment to cut every
        # connection), a recovery from after it: the timeline never shows a mirror good
        # while it was not.
        before = time.time()
        try:
            target.apply(action)
        except RuntimeError as exc:  # a restart that could not bind: it stays down
            self.record(target.name, f"skip-{action}", target.state, str(exc))
            return
        self.record(target.name, action, target.state,
                    at=before if action in ("kill", "hang", "stale") else None)
        if target is self.list_host:
            self.since_list_host = 0

    def run(self) -> None:
        try:
            while not self.stopping.wait(self.rng.uniform(*self.interval)):
                self.step()
        except BaseException as exc:  # reported by the caller
            self.error = exc


# -- the clients ---------------------------------------------------------------------------------
@dataclass
class DnfRun:
    name: str
    style: str  # proxy or accel
    started: float
    ended: float
    wanted: List[str]
    returncode: int
    missing: List[str]
    output: str = ""  # dnf's output, kept for failures

    @property
    def failed(self) -> bool:
        return self.returncode != 0 or bool(self.missing)

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def kind(self) -> str:
        """What went wrong, from dnf's output."""
        text = self.output
        if not self.failed:
            return ""
        if self.returncode == -1:
            return "dnf timed out"
        if "No match for argument" in text:
            return "old metadata (No match for argument)"
        if re.search(r"Status code: 404 for \S*/repodata/", text):
            return "404 on repodata"
        if re.search(r"Status code: 404 for \S*\.rpm", text):
            return "404 on a package"
        if re.search(r"Status code: 5\d\d", text):
            return "5xx from Squid"
        if re.search(r"Curl error \(28\)|Operation too slow|Timeout was reached", text):
            return "download timed out (curl)"
        if re.search(r"Curl error", text):
            return "other curl error"
        if self.returncode == 0:
            return "exit 0 but packages missing"
        return "other"


class Clients:
    """`count` threads, each running fresh dnf clients one after the other until `until`."""

    def __init__(self, directory: Path, squid: SquidInstance, count: int, rng: random.Random,
                 until: float, progress: Callable[[str], None]):
        self.directory = directory
        self.squid = squid
        self.count = count
        self.rng = rng
        self.until = until
        self.progress = progress
        self.runs: List[DnfRun] = []
        self.lock = threading.Lock()
        self.numbers = iter(range(1, 1 << 30))
        self.threads = [threading.Thread(target=self.loop, args=(i,), name=f"dnf-{i}",
                                         daemon=True) for i in range(count)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    def baseurl(self, style: str) -> Tuple[str, Optional[str]]:
        if style == "accel":
            return (f"http://127.0.0.1:{self.squid.accel_port}/{REPO}/$releasever/$basearch/",
                    None)
        return f"http://repoproxy/{REPO}/$releasever/$basearch/", self.squid.proxy_url

    def loop(self, index: int) -> None:
        style = "proxy" if index % 2 == 0 else "accel"
        names = package_names()
        while time.time() < self.until:
            with self.lock:
                number = next(self.numbers)
                wanted = sorted(self.rng.sample(names, self.rng.randint(*SUBSET)))
            name = f"c{number:03d}-{style}"
            client = DnfClient(self.directory, name)
            baseurl, proxy = self.baseurl(style)
            started = time.time()
            try:
                result = client.install(baseurl, wanted, proxy=proxy, releasever=RELEASEVER,
                                        repo=REPO)
                returncode, output = result.returncode, dnf_output(result)
            except subprocess.TimeoutExpired as exc:
                returncode = -1
                output = (f"dnf did not finish within {DNF_TIMEOUT:g}s\n"
                          f"{(exc.stdout or b'')[-3000:]!r}\n{(exc.stderr or b'')[-3000:]!r}")
            except Exception as exc:  # a failure of the lab, reported as a failed run
                returncode, output = -2, f"{type(exc).__name__}: {exc}"
            ended = time.time()
            have = set(client.downloaded())
            missing = [n for n in wanted if rpm_file(n) not in have]
            run = DnfRun(name, style, started, ended, wanted, returncode, missing)
            if run.failed:
                run.output = output
            else:
                shutil.rmtree(client.directory, ignore_errors=True)
            with self.lock:
                self.runs.append(run)
            self.progress(f"  {name}: {len(wanted)} packages in {run.seconds:.1f}s"
                          + (" (slow)" if run.seconds > 10 else "")
                          + (f"  FAILED: {run.kind} (exit {returncode}, {len(missing)} missing)"
                             if run.failed else ""))


# -- what the logs say ---------------------------------------------------------------------------
@dataclass
class Access:
    start: float
    end: float
    port: int  # Squid's port the client used
    code: str
    status: int
    method: str
    url: str

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc if "://" in self.url else ""

    def __str__(self) -> str:
        return (f"{_clock(self.start)}..{_clock(self.end)} {self.code}/{self.status} "
                f"{self.method} {self.url}")


@dataclass
class LogLine:
    second: float  # the whole second it was logged in (time.time() of its start)
    level: str
    text: str  # the whole line
    seen: float = 0.0  # when LogTail read it (the line was written before); 0: unknown


@dataclass
class Mark:
    second: float
    host: str
    detail: str
    seen: float = 0.0  # when the line was read: the mark was made before

    @property
    def before(self) -> float:
        """A time the mark certainly preceded."""
        return self.seen or self.second + 1


@dataclass
class DeadAnswer:
    access: Access
    mirror: str
    outage_start: float
    mark: Mark
    certain: bool  # the mark surely came before the request


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"


def read_timed(path: Path) -> List[Access]:
    entries = []
    if not path.exists():
        return entries
    for raw in path.read_text(errors="replace").splitlines():
        fields = raw.split()
        if len(fields) < 7 or "/" not in fields[4]:
            continue
        try:
            end, total, port = float(fields[0]), int(fields[1]), int(fields[2])
        except ValueError:
            continue
        code, _, status = fields[4].partition("/")
        entries.append(Access(end - total / 1000, end, port, code,
                              int(status) if status.isdigit() else 0, fields[5], fields[6]))
    return entries


def read_helper_log(text: str, seen: Sequence[float] = ()) -> List[LogLine]:
    """The helper log's lines (a traceback joined to its line); seen: when each raw line was
    read (LogTail), in order."""
    lines: List[LogLine] = []
    for index, raw in enumerate(text.splitlines()):
        match = _LOG_TIME.match(raw)
        if match is None:
            if lines:  # a traceback's continuation
                lines[-1].text += "\n" + raw
            continue
        second = time.mktime(time.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S"))
        lines.append(LogLine(second, match.group(5), raw,
                             seen[index] if index < len(seen) else 0.0))
    return lines


class LogTail(threading.Thread):
    """Reads a growing log file every `every` seconds and notes when each line appeared: the
    helper log has whole seconds only, and whether a mirror was marked unhealthy before or
    after a request a few hundred milliseconds later is the question."""

    def __init__(self, path: Path, every: float = 0.02):
        super().__init__(name="logtail", daemon=True)
        self.path = path
        self.every = every
        self.text: List[str] = []
        self.seen: List[float] = []
        self._buffer = b""
        self._offset = 0
        self.stopping = threading.Event()

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as log:
                log.seek(self._offset)
                data = log.read()
        except OSError:
            return
        now = time.time()
        self._offset += len(data)
        *complete, self._buffer = (self._buffer + data).split(b"\n")
        for raw in complete:
            self.text.append(raw.decode("utf-8", "replace"))
            self.seen.append(now)

    def run(self) -> None:
        while not self.stopping.wait(self.every):
            self.poll()

    def finish(self) -> str:
        self.stopping.set()
        self.join(timeout=5)
        self.poll()
        if self._buffer:
            self.text.append(self._buffer.decode("utf-8", "replace"))
            self.seen.append(time.time())
        return "\n".join(self.text)


def intervals(timeline: Sequence[Event], target: str, states: Sequence[str],
              until: float) -> List[Tuple[float, float, str]]:
    """(start, end, first state) of each maximal stretch in which target's state was in
    `states`."""
    found = []
    current: Optional[List] = None
    for event in timeline:
        if event.target != target or event.action.startswith("skip"):
            continue
        if event.state in states:
            if current is None:
                current = [event.at, until, event.state]
        elif current is not None:
            current[1] = event.at
            found.append(tuple(current))
            current = None
    if current is not None:
        found.append(tuple(current))
    return found


@dataclass
class ChaosResult:
    seed: int
    seconds: float  # the clients' time limit
    settings: Dict[str, object]
    squid_cache: bool
    ports: Dict[str, int] = field(default_factory=dict)  # m1.. and list -> port
    build_seconds: float = 0.0
    chaos_seconds: float = 0.0  # from the start of the load to the end of the chaos
    timeline: List[Event] = field(default_factory=list)
    runs: List[DnfRun] = field(default_factory=list)
    accesses: List[Access] = field(default_factory=list)
    helper_lines: List[LogLine] = field(default_factory=list)
    cache_log: str = ""
    proxy_port: int = 0
    accel_port: int = 0
    lab_problems: List[str] = field(default_factory=list)  # the lab's own failures
    _marks: Optional[Tuple[List[LogLine], List[Mark]]] = field(default=None, repr=False)

    # -- the three counts ----------------------------------------------------------------------
    @property
    def failures(self) -> List[DnfRun]:
        return [r for r in self.runs if r.failed]

    def helper_bh(self) -> List[LogLine]:
        return [ln for ln in self.helper_lines if "internal error" in ln.text]

    def cache_log_bh(self) -> List[str]:
        return [ln for ln in self.cache_log.splitlines() if CACHE_LOG_BH.search(ln)]

    def cache_log_problems(self) -> List[str]:
        return [ln for ln in self.cache_log.splitlines() if CACHE_LOG_PROBLEMS.search(ln)]

    @property
    def bh(self) -> int:
        """BH replies: each is logged by the helper and by Squid; the larger count."""
        return max(len(self.helper_bh()), len(self.cache_log_bh()))

    def marks(self) -> List[Mark]:
        """The helper's "marked unhealthy" lines (parsed once per helper log)."""
        if self._marks is None or self._marks[0] is not self.helper_lines:
            found = []
            for line in self.helper_lines:
                match = _MARK.search(line.text)
                if match:
                    found.append(Mark(line.second, match.group(1), match.group(3), line.seen))
            self._marks = (self.helper_lines, found)
        return self._marks[1]

    @property
    def end(self) -> float:
        times = [e.at for e in self.timeline] + [r.ended for r in self.runs]
        return max(times) + 1 if times else time.time()

    def mirror_hosts(self) -> Dict[str, str]:
        return {f"127.0.0.1:{port}": name for name, port in self.ports.items()
                if name != LIST_HOST}

    def dead_answers(self) -> List[DeadAnswer]:
        """Requests on mirrors that were down when they started, after the helper had marked
        them unhealthy during that outage (certain), or maybe after (possible)."""
        hosts = self.mirror_hosts()
        outages = {name: intervals(self.timeline, name, DOWN_STATES, self.end)
                   for name in hosts.values()}
        marks: Dict[str, List[Mark]] = {}
        for mark in self.marks():
            marks.setdefault(mark.host, []).append(mark)
        found = []
        for access in self.accesses:
            mirror = hosts.get(access.host)
            if mirror is None:
                continue
            outage = next((o for o in outages[mirror] if o[0] <= access.start < o[1]), None)
            if outage is None:
                continue
            certain = [m for m in marks.get(access.host, [])
                       if outage[0] <= m.second and m.before <= access.start]
            possible = [m for m in marks.get(access.host, [])
                        if outage[0] < m.before and m.second < access.start]
            if certain:
                found.append(DeadAnswer(access, mirror, outage[0], certain[-1], True))
            elif possible:
                found.append(DeadAnswer(access, mirror, outage[0], possible[-1], False))
        return found

    def mark_lag(self, answer: DeadAnswer) -> Tuple[float, float, str]:
        """How long after the mark the request started, at least (the mark was made before
        its line was read) and at most (not before its logged second, nor before the mirror's
        last change of state), and that change."""
        changes = [e for e in self.timeline if e.target == answer.mirror and e.applied
                   and answer.outage_start <= e.at < answer.mark.before]
        latest = max(changes, key=lambda e: e.at) if changes else None
        earliest_mark = max(answer.mark.second, latest.at if latest else answer.outage_start)
        cause = f"{latest.action} at {_clock(latest.at)}" if latest else "-"
        return (answer.access.start - answer.mark.before, answer.access.start - earliest_mark,
                cause)

    def dead_cause(self, answer: DeadAnswer,
                   last_known: Optional[List[LogLine]] = None) -> str:
        """Why the helper answered a mirror it had marked, as far as its log tells.
        last_known: the helper log's last-known answers (found here if not given)."""
        access = answer.access
        path = access.url.split(f"/{TREE}/", 1)[-1]
        if last_known is None:
            last_known = [ln for ln in self.helper_lines if "[last-known, " in ln.text]
        for line in last_known:
            if (f"/{path} -> " in line.text
                    and access.start - 0.05 <= (line.seen or line.second) <= access.end + 0.1):
                return "last-known answer: no healthy mirror with the current metadata left"
        ttl = float(self.settings.get("unhealthy_ttl", 120))
        lag = access.start - answer.mark.before
        if lag > ttl:
            return f"the mark had expired (unhealthy_ttl {ttl:g}s), the mirror still down"
        if lag < 1.0:
            return "less than 1 s after the mark (other processes' copies not updated yet)"
        return "unexplained"

    def known_dead(self) -> List[DeadAnswer]:
        return [d for d in self.dead_answers() if d.certain]

    def counts(self) -> Tuple[int, int, int]:
        return len(self.failures), self.bh, len(self.known_dead())

    def met(self) -> bool:
        return self.counts() == (0, 0, 0) and not self.lab_problems

    def applied_actions(self) -> List[Event]:
        return [e for e in self.timeline if e.applied]

    # -- the report ----------------------------------------------------------------------------
    def requests_during(self, mirror: str, states: Sequence[str]) -> List[Access]:
        host = f"127.0.0.1:{self.ports[mirror]}"
        stretches = intervals(self.timeline, mirror, states, self.end)
        return [a for a in self.accesses if a.host == host
                and any(s <= a.start < e for s, e, _ in stretches)]

    def outages_explained(self) -> List[Tuple[str, float, float, str, bool, int]]:
        """(mirror, start, end, kind, the helper logged a reason during it, requests Squid
        sent it meanwhile) for every stretch in which a mirror was down or stale."""
        rows = []
        for name, port in sorted(self.ports.items()):
            if name == LIST_HOST:
                continue
            host = f"127.0.0.1:{port}"
            for states, kind in ((DOWN_STATES, "down/hang"), (("stale",), "stale")):
                for start, end, _ in intervals(self.timeline, name, states, self.end):
                    if kind == "stale":
                        noticed = any(
                            start - 1 < ln.second < end and any(
                                m.group(1) == host for m in _STALE_VERDICT.finditer(ln.text))
                            for ln in self.helper_lines)
                    else:
                        noticed = any(start - 1 < m.second < end and m.host == host
                                      for m in self.marks())
                    sent = sum(1 for a in self.accesses
                               if a.host == host and start <= a.start < end)
                    rows.append((name, start, end, kind, noticed, sent))
        return sorted(rows, key=lambda r: r[1])

    def marked_at(self, host: str, at: float) -> bool:
        """Whether a mark of host was in force at `at` (made before, not expired)."""
        ttl = float(self.settings.get("unhealthy_ttl", 120))
        return any(m.host == host and m.before <= at < m.second + ttl for m in self.marks())

    def evidence(self, run: DnfRun) -> List[Tuple[str, Access]]:
        """The run's requests (told apart from the other client's by Squid's port) that failed,
        stalled, or went to a mirror that was not good, each with what it was: status, the
        mirror's state when the request started, whether the helper had it marked, the kind of
        path."""
        port = self.proxy_port if run.style == "proxy" else self.accel_port
        hosts = self.mirror_hosts()
        found = []
        for access in self.accesses:
            if access.port != port or not run.started - 0.05 <= access.start <= run.ended:
                continue
            mirror = hosts.get(access.host)
            state = self.state_at(mirror, access.start) if mirror else "-"
            stalled = access.end - access.start > 10
            if access.status < 400 and access.status != 0 and not stalled and state == "good":
                continue
            path = access.url.rsplit("/", 1)[-1]
            what = ("repomd.xml" if path == "repomd.xml" else "a package"
                    if path.endswith(".rpm") else "repodata")
            marked = mirror is not None and self.marked_at(access.host, access.start)
            found.append((f"{access.code}/{access.status}{' after >10s' if stalled else ''} for "
                          f"{what} from a {state} mirror"
                          + (" (marked unhealthy)" if marked else "") if mirror else
                          f"{access.code}/{access.status} for {what} (no mirror)", access))
        return found

    def failure_signatures(self) -> Counter:
        """Failed runs by the first thing that went wrong in their requests."""
        signatures: Counter = Counter()
        for run in self.failures:
            evidence = self.evidence(run)
            wrong = [label for label, a in evidence
                     if a.status >= 400 or a.status == 0 or a.end - a.start > 10]
            signatures[(wrong or [label for label, _ in evidence]
                        or ["no request of it went wrong"])[0]] += 1
        return signatures

    def episodes(self) -> List[Tuple[str, float, float, int]]:
        """(kind, first start, last end, runs) of failures of one kind close together."""
        found: List[List] = []
        for run in sorted(self.failures, key=lambda r: r.started):
            same = [e for e in found if e[0] == run.kind and run.started - e[2] < 3.0]
            if same:
                same[-1][2] = max(same[-1][2], run.ended)
                same[-1][3] += 1
            else:
                found.append([run.kind, run.started, run.ended, 1])
        return [tuple(e) for e in sorted(found, key=lambda e: e[1])]

    def explanation_counts(self) -> Dict[str, List[str]]:
        found: Dict[str, List[str]] = {kind: [] for kind in EXPLANATIONS}
        for line in self.helper_lines:
            for kind, pattern in EXPLANATIONS.items():
                if pattern.search(line.text):
                    found[kind].append(line.text)
        return found

    def context(self, start: float, end: float, limit: int = 25) -> List[str]:
        """Squid's requests that went wrong or went to a mirror that was not good, and the
        helper's warnings, that started between start and end (another client's among them)."""
        hosts = self.mirror_hosts()
        lines = []
        for access in sorted(self.accesses, key=lambda a: a.start):
            if not (start - 0.2 <= access.start <= end + 0.2):
                continue
            mirror = hosts.get(access.host)
            state = self.state_at(mirror, access.start) if mirror else "-"
            if access.status >= 400 or access.status == 0 or state != "good":
                lines.append(f"    access {access}  [{mirror or '?'} {state} at start]")
        warnings = [ln.text.splitlines()[0][:400] for ln in self.helper_lines
                    if start - 1 <= ln.second <= end + 1 and ln.level != "INFO"]
        return lines[:limit] + [f"    helper {w}" for w in warnings[:limit]]

    def state_at(self, target: Optional[str], at: float) -> str:
        state = "good"
        for event in self.timeline:
            if event.at > at:
                break
            if event.target == target and not event.action.startswith("skip"):
                state = event.state
        return state

    def report(self, timeline: bool = True, failures: int = 5) -> List[str]:
        """The whole story; `failures`: how many failure episodes to show in full (the
        first run of each: dnf's output, what Squid and the helper did meanwhile)."""
        out: List[str] = []
        applied = self.applied_actions()
        skipped = [e for e in self.timeline if e.action.startswith("skip")]
        actions = Counter(f"{e.target}:{e.action}" for e in applied)
        by_action = Counter(e.action for e in applied)
        out.append(f"seed {self.seed}; clients' time {self.seconds:g}s, chaos lasted "
                   f"{self.chaos_seconds:.0f}s; repository built in {self.build_seconds:.0f}s; "
                   f"Squid cache {'on' if self.squid_cache else 'off (cache deny all)'}")
        out.append("servers: " + ", ".join(f"{n} :{p}" for n, p in sorted(self.ports.items()))
                   + f"; Squid :{self.proxy_port} (proxy), :{self.accel_port} (accel)")
        out.append(f"helper settings: {self.settings}")
        out.append(f"chaos actions applied: {len(applied)} ({dict(sorted(by_action.items()))});"
                   f" skipped to keep a good mirror: {len(skipped)}")
        out.append("  per target: " + ", ".join(f"{k} {v}" for k, v in sorted(actions.items())))
        if timeline:
            out.append("timeline (state after each action; skipped actions in brackets):")
            for event in self.timeline:
                text = (f"[{event.action} {event.target}: {event.note}]"
                        if event.action.startswith("skip")
                        else f"{event.target} {event.action} -> {event.state}")
                goods = [n for n in MIRRORS if self.state_at(n, event.at) == "good"]
                out.append(f"  {_clock(event.at)} {text:<44} good mirrors: "
                           f"{','.join(goods) or 'NONE'}")
        runs = self.runs
        times = sorted(r.seconds for r in runs)
        out.append(f"dnf runs: {len(runs)} ({Counter(r.style for r in runs)}), "
                   f"packages asked {sum(len(r.wanted) for r in runs)}; run time median "
                   f"{times[len(times) // 2] if times else 0:.1f}s, max "
                   f"{times[-1] if times else 0:.1f}s, over 20s: "
                   f"{sum(1 for t in times if t > 20)}")
        slow = [r for r in runs if r.seconds > 20]
        for run in slow[:5]:
            out.append(f"  slow run {run.name} {_clock(run.started)}..{_clock(run.ended)} "
                       f"({run.seconds:.1f}s){' FAILED ' + run.kind if run.failed else ''}")
        stalled = sorted((a for a in self.accesses if a.end - a.start > 10),
                         key=lambda a: a.start)
        out.append(f"requests that stalled in Squid for more than 10s: {len(stalled)}")
        hosts = self.mirror_hosts()
        for access in stalled[:8]:
            mirror = hosts.get(access.host)
            marks = [m for m in self.marks() if m.host == access.host
                     and access.start - 30 < m.second < access.end]
            out.append(f"  {access}  [{mirror or '?'} {self.state_at(mirror, access.start)} at "
                       f"start; marked unhealthy at: "
                       f"{', '.join(_clock(m.second)[:8] for m in marks) or 'never'}]")
        statuses = Counter(f"{a.code}/{a.status}" for a in self.accesses)
        out.append(f"Squid requests: {len(self.accesses)}: "
                   + ", ".join(f"{k} {v}" for k, v in statuses.most_common()))
        per_mirror = Counter(hosts.get(a.host, "other") for a in self.accesses)
        out.append("  by mirror in the URL: " + ", ".join(
            f"{k} {v}" for k, v in sorted(per_mirror.items())))
        for mirror in MIRRORS:
            down = self.requests_during(mirror, DOWN_STATES)
            stale = self.requests_during(mirror, ("stale",))
            if down or stale:
                out.append(f"  {mirror}: {len(down)} requests started while it was down/hanging"
                           f" ({Counter(f'{a.code}/{a.status}' for a in down)}), {len(stale)} "
                           f"while stale ({Counter(f'{a.code}/{a.status}' for a in stale)})")
        rows = self.outages_explained()
        out.append(f"outages and stale periods: {len(rows)}; the helper log names the mirror "
                   f"during {sum(1 for r in rows if r[4])}; not named but sent requests: "
                   f"{sum(1 for r in rows if not r[4] and r[5])}")
        for name, start, end, kind, noticed, sent in rows:
            out.append(f"  {name} {kind:<9} {_clock(start)}..{_clock(end)} "
                       f"({end - start:4.1f}s): {'explained' if noticed else 'no log line'}, "
                       f"{sent} requests sent to it")
        slow_answers = [ln for ln in self.helper_lines
                        if (m := _ANSWER_TIME.search(ln.text)) and float(m.group(2)) >= 1.0]
        waited = [ln for ln in slow_answers if _LIST_TIMEOUT.search(ln.text)]
        out.append(f"helper answers that took 1 s or more: {len(slow_answers)} ({len(waited)} of "
                   "them waited for the mirror list host to time out)")
        for line in (waited[:1] + [ln for ln in slow_answers if ln not in waited][:2]):
            out.append(f"  e.g. {line.text.splitlines()[0][:400]}")
        explained = self.explanation_counts()
        out.append("failovers in the helper log: " + ", ".join(
            f"{kind} {len(lines)}" for kind, lines in explained.items()))
        for kind in ("marked unhealthy", "stale verdict", "optimistic answer corrected",
                     "survey complete, mirror(s) no longer fresh",
                     "mirrorlist unusable (last good list kept)", "last-known answer"):
            for line in explained[kind][:2]:
                out.append(f"  e.g. {line.splitlines()[0][:300]}")
        # the counts
        dead = self.dead_answers()
        known = [d for d in dead if d.certain]
        maybe = [d for d in dead if not d.certain]
        failed = self.failures
        out.append(f"dnf failures: {len(failed)} of {len(runs)} runs")
        for kind, count in Counter(r.kind for r in failed).most_common():
            out.append(f"  {kind}: {count}")
        out.append("  by the run's first request that went wrong (else the first one to a "
                   "mirror that was not good):")
        for signature, count in self.failure_signatures().most_common():
            out.append(f"    {count:4d} {signature}")
        out.append("  failure episodes (same kind, less than 3 s apart):")
        for kind, first, last, count in self.episodes():
            out.append(f"    {_clock(first)}..{_clock(last)} {kind}: {count} run(s)")
        # the first failure of each episode, in full
        firsts = []
        for kind, first, _, _ in self.episodes():
            firsts += [r for r in failed if r.kind == kind and r.started == first]
        for run in firsts[:failures]:
            out.append(f"  {run.name} {_clock(run.started)}..{_clock(run.ended)} "
                       f"({run.seconds:.1f}s) exit {run.returncode}, wanted {len(run.wanted)}, "
                       f"missing {run.missing}")
            out.append("    dnf output (tail):")
            out += ["      " + ln for ln in run.output[-2500:].splitlines()]
            out.append("    its requests that went wrong or to a mirror that was not good:")
            out += [f"      {label}: {access}" for label, access in self.evidence(run)[:12]]
            out.append("    meanwhile (every client):")
            out += self.context(run.started, run.ended, limit=10)
        out.append(f"BH replies: {self.bh} (helper log 'internal error': {len(self.helper_bh())}"
                   f", cache.log helper errors: {len(self.cache_log_bh())})")
        for line in self.helper_bh()[:2]:
            out += ["  " + ln for ln in line.text.splitlines()[:30]]
        for line in self.cache_log_bh()[:5]:
            out.append(f"  cache.log: {line[:300]}")
        for line in self.cache_log_problems()[:10]:
            out.append(f"  cache.log problem: {line[:300]}")
        out.append(f"answers to known-dead mirrors: {len(known)} (and {len(maybe)} more where "
                   "the mark's line was read after the request started, in the same second)")
        if known:
            out.append(f"  by Squid's code: "
                       f"{dict(Counter(f'{d.access.code}/{d.access.status}' for d in known))}")
            groups: Dict[Tuple[str, float, str], List[DeadAnswer]] = {}
            last_known = [ln for ln in self.helper_lines if "[last-known, " in ln.text]
            for answer in known:
                key = (answer.mirror, answer.mark.before, self.dead_cause(answer, last_known))
                groups.setdefault(key, []).append(answer)
            for (mirror, before, cause), answers in sorted(groups.items(),
                                                           key=lambda kv: kv[0][1]):
                lags = [a.access.start - before for a in answers]
                codes = Counter(f"{a.access.code}/{a.access.status}" for a in answers)
                out.append(f"  {mirror} marked before {_clock(before)}: {len(answers)} answers "
                           f"{min(lags):.3f}..{max(lags):.3f}s after the mark, "
                           f"{dict(codes)}: {cause}")
        for answer in (known + maybe)[:8]:
            low, high, cause = self.mark_lag(answer)
            out.append(f"  {answer.mirror} down since {_clock(answer.outage_start)} (last "
                       f"change before the mark: {cause}), marked before "
                       f"{_clock(answer.mark.before)} ({answer.mark.detail}): "
                       f"{answer.access}{'' if answer.certain else '  (possibly)'}; "
                       f"{max(low, 0):.2f}..{high:.2f}s after the mark")
        for problem in self.lab_problems:
            out.append(f"LAB PROBLEM: {problem}")
        return out

    def result_line(self) -> str:
        failures, bh, dead = self.counts()
        return (f"RESULT chaos (Squid cache {'on' if self.squid_cache else 'off'}) "
                f"{self.chaos_seconds:.0f}s, {len(self.runs)} dnf runs, "
                f"{len(self.applied_actions())} chaos actions: dnf failures {failures}, "
                f"BH {bh}, answers to known-dead mirrors {dead}   goal 0/0/0")


# -- the run -------------------------------------------------------------------------------------
def prerequisites() -> List[str]:
    missing = [c for c in ("squid", "dnf", "rpmbuild", "createrepo_c") if shutil.which(c) is None]
    problems = [f"missing commands: {', '.join(missing)}"] if missing else []
    if os.geteuid() != 0:
        problems.append("must run as root (Squid drops to its proxy user)")
    return problems


def helper_config(directory: Path, list_url: str, accel_port: int,
                  settings: Dict[str, object]) -> Path:
    """repos.yaml for the helpers, its memo and log owned by proxy."""
    directory.mkdir(parents=True, exist_ok=True)
    data = {"virtual_hosts": ["repoproxy"], "accel_ports": [accel_port],
            "cache_dir": str(directory / "memo"), "log_file": str(directory / "helper.log"),
            **settings,
            "repos": {REPO: {"mirrorlist": list_url + "mirrorlist?repo=chaos-{releasever}"
                                                      "&arch={arch}"}}}
    path = directory / "repos.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    (directory / "helper.log").touch()
    chown_proxy(directory / "memo", directory / "helper.log")
    return path


def run_chaos(seconds: float = 120.0, seed: Optional[int] = None, clients: int = 2,
              interval: Tuple[float, float] = INTERVAL,
              settings: Optional[Dict[str, object]] = None, squid_cache: bool = True,
              package_size: int = PACKAGE_SIZE, keep: Optional[Path] = None,
              helper_debug: bool = False,
              progress: Callable[[str], None] = print) -> ChaosResult:
    """Run the chaos workload and return what happened (see the module's docstring).
    keep: a directory to copy the logs, the timeline and the dnf runs into. helper_debug: the
    rewrite helpers run with --debug (memo hits logged too, with the answering process)."""
    problems = prerequisites()
    if problems:
        raise RuntimeError("; ".join(problems))
    seed = seed if seed is not None else random.SystemRandom().randrange(1, 1 << 31)
    settings = {**SETTINGS, **(settings or {})}
    result = ChaosResult(seed, seconds, settings, squid_cache)
    with WorldReadableDir("squid-helper-chaos-") as tmp:
        started = time.monotonic()
        roots = build_snapshots(tmp, size=package_size)
        result.build_seconds = time.monotonic() - started
        mirrors = [Flapper(name, fixed_port(), roots["current"], roots["stale"])
                   for name in MIRRORS]
        listing = "# chaos mirrorlist\n" + "".join(f"{m.url}{TREE}/\n" for m in mirrors)
        list_host = Flapper(LIST_HOST, fixed_port(),
                            documents={"/mirrorlist": listing.encode()})
        result.ports = {f.name: f.port for f in [*mirrors, list_host]}
        driver: Optional[ChaosDriver] = None
        load: Optional[Clients] = None
        tail: Optional[LogTail] = None
        try:
            for flapper in [*mirrors, list_host]:
                flapper.start()
            with LoopbackDns() as dns:
                accel = free_port()
                config = helper_config(tmp / "helper", list_host.url, accel, settings)
                tail = LogTail(tmp / "helper" / "helper.log")
                extra = [TIMED_FORMAT,
                         f"access_log stdio:{tmp / 'squid' / 'logs' / 'timed.log'} chaostimed",
                         f"dns_nameservers {dns.address}"]
                if not squid_cache:
                    extra.append("cache deny all")
                programs = ({"url_rewrite_program": " ".join(
                    [*helper_command(), "rewrite", "--config", str(config), "--debug"])}
                    if helper_debug else None)
                squid = SquidInstance(tmp / "squid", config, accel_port=accel, extra_lines=extra,
                                      programs=programs, rewrite_children=REWRITE_CHILDREN,
                                      rewrite_startup=REWRITE_CHILDREN,
                                      storeid_children=STOREID_CHILDREN,
                                      storeid_startup=STOREID_CHILDREN)
                with squid:
                    result.proxy_port, result.accel_port = squid.port, squid.accel_port
                    progress(f"seed {seed}; Squid :{squid.port}/:{squid.accel_port}; "
                             + ", ".join(f"{f.name} {f.url}" for f in [*mirrors, list_host])
                             + f"; {clients} dnf clients for {seconds:g}s")
                    driver = ChaosDriver(mirrors, list_host, random.Random(seed + 1), interval)
                    for flapper in [*mirrors, list_host]:
                        driver.record(flapper.name, "start", flapper.state)
                    load = Clients(tmp / "clients", squid, clients, random.Random(seed + 2),
                                   time.time() + seconds, progress)
                    began = time.time()
                    tail.start()
                    driver.start()
                    load.start()
                    if not load.join(seconds + DNF_TIMEOUT + 60):
                        result.lab_problems.append("dnf clients still running at the deadline")
                    driver.stopping.set()
                    driver.join(timeout=30)
                    result.chaos_seconds = time.time() - began
                    if driver.error is not None:
                        result.lab_problems.append(f"chaos driver failed: {driver.error!r}")
                # Squid has stopped (its log daemons too): the logs are complete.
                result.accesses = read_timed(squid.log_dir / "timed.log")
                result.cache_log = squid.cache_log()
                text = tail.finish()
                result.helper_lines = read_helper_log(text, tail.seen)
        finally:
            if tail is not None:
                tail.stopping.set()
            if driver is not None:
                driver.stopping.set()
                driver.join(timeout=30)
                result.timeline = list(driver.timeline)
            if load is not None:
                result.runs = sorted(load.runs, key=lambda r: r.started)
            for flapper in [*mirrors, list_host]:
                flapper.stop()
            if keep is not None:
                save(result, tmp, Path(keep))
    return result


def save(result: ChaosResult, tmp: Path, keep: Path) -> None:
    """The run's logs, config, timeline and dnf runs (failures with their output) in keep."""
    keep.mkdir(parents=True, exist_ok=True)
    for source in (tmp / "helper" / "helper.log", tmp / "helper" / "repos.yaml",
                   tmp / "squid" / "squid.conf", *sorted((tmp / "squid" / "logs").glob("*"))):
        if source.is_file():
            shutil.copy2(source, keep / source.name)
    (keep / "helper.seen.log").write_text("".join(
        f"{_clock(line.seen)} {line.text}\n" for line in result.helper_lines))
    (keep / "timeline.txt").write_text("".join(
        f"{e.at:.3f} {_clock(e.at)} {e.target} {e.action} {e.state} {e.note}\n"
        for e in result.timeline))
    (keep / "runs.txt").write_text("".join(
        f"{r.started:.3f} {_clock(r.started)}..{_clock(r.ended)} {r.name} exit {r.returncode} "
        f"{'FAILED ' + r.kind if r.failed else 'ok'} wanted {' '.join(r.wanted)} missing "
        f"{' '.join(r.missing)}\n" + (r.output + "\n" if r.failed else "")
        for r in result.runs))
