"""Shared pieces of the benchmarks: local mirrors, helper processes and a pipelining driver.

Everything runs on 127.0.0.1, every wait is bounded in time, and every process or server a
benchmark starts is stopped by a context manager (try/finally underneath).

The driver talks to a helper exactly as Squid does with `concurrency=N`: each line starts with
a channel-ID, up to `in_flight` requests are outstanding, and a channel is reused as soon as its
reply arrives. It runs in one thread with select(): the bytes outstanding on the helper's stdin
never exceed in_flight lines, far below a pipe's capacity, so a write cannot block for long.
"""

from __future__ import annotations

import argparse
import os
import random
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
# The lab package (and squid_helper) sit beside benchmarks/: every benchmark imports common
# before lab (isort puts `common` first anyway), and common puts the repository root on sys.path.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from lab.helper import DEFAULT_EXTRAS, helper_command, write_config  # noqa: E402  (root first)
from lab.mirrors import ERROR, GOOD, HANG, MirrorServer, dead_url, repomd_xml  # noqa: E402

__all__ = [
    "DEFAULT_EXTRAS", "ERROR", "GOOD", "HANG", "MirrorServer", "dead_url", "write_config",
    "REPO", "REPO_PREFIX", "package_documents", "package_urls", "mirror", "workdir",
    "LinePipe", "DriveResult", "helper_argv", "echo_argv", "arg_parser", "median",
    "rss_kb", "cpu_seconds", "verdict", "run",
]

REPO = "bench"
REPO_PREFIX = f"http://repoproxy/{REPO}/9/x86_64/"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- mirrors and configs ------------------------------------------------------------------------
def package_name(index: int) -> str:
    return f"pkg-{index:06d}-1.0.rpm"


def package_documents(count: int, revision: int = 2000) -> Dict[str, bytes]:
    """In-memory repo tree for MirrorServer(documents=...): repomd.xml and `count` packages."""
    documents = {"/repodata/repomd.xml": repomd_xml(revision)}
    for index in range(count):
        documents[f"/Packages/{package_name(index)}"] = b"rpm %d" % index
    return documents


def package_urls(count: int, start: int = 0) -> List[str]:
    return [f"{REPO_PREFIX}Packages/{package_name(i)}" for i in range(start, start + count)]


@contextmanager
def mirror(behaviour: str = GOOD, documents: Optional[Dict[str, bytes]] = None,
           delay: float = 0.0) -> Iterator[MirrorServer]:
    server = MirrorServer(documents=documents or {}, behaviour=behaviour, delay=delay)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def workdir(prefix: str = "squid-helper-bench-") -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix, dir="/tmp") as path:
        yield Path(path)


def static_config(directory: Path, bases: Sequence[str], **settings) -> Path:
    """repos.yaml in directory with one static-mirrors repo `bench`; memo in directory/memo."""
    directory.mkdir(parents=True, exist_ok=True)
    return write_config(directory, {REPO: {"mirrors": list(bases)}}, **settings)


def helper_argv(config: Path, mode: str = "rewrite") -> List[str]:
    return [*helper_command(), mode, "--config", str(config)]


def echo_argv(rewrite_base: str) -> List[str]:
    return [sys.executable, str(BENCH_DIR / "echo_helper.py"), "--base", rewrite_base]


# -- /proc figures ------------------------------------------------------------------------------
def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def rss_breakdown_kb(pid: int) -> Dict[str, int]:
    """VmRSS and its parts (RssAnon: heap/stacks, RssFile: mapped files such as libraries and
    sqlite's mmap, RssShmem), in kB."""
    wanted = ("VmRSS", "RssAnon", "RssFile", "RssShmem")
    found = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key = line.split(":", 1)[0]
            if key in wanted:
                found[key] = int(line.split()[1])
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its threads included)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# -- the driver ---------------------------------------------------------------------------------
@dataclass
class DriveResult:
    answered: int
    seconds: float
    cpu: float  # CPU seconds the helper process used meanwhile
    kinds: Dict[str, int] = field(default_factory=dict)  # "OK"/"ERR"/"BH" -> count
    first_reply: Optional[bytes] = None

    @property
    def rate(self) -> float:
        return self.answered / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_request(self) -> float:
        return 1e6 * self.cpu / self.answered if self.answered else 0.0


class ProtocolProblem(RuntimeError):
    pass


class LinePipe:
    """One helper process, spoken to through the Squid helper protocol with channel-IDs."""

    def __init__(self, argv: List[str], name: str, log_dir: Path):
        self.name = name
        self.stderr_path = log_dir / f"{name}.stderr"
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115  (closed in close())
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self._stderr, bufsize=0)
        self._wfd = self.process.stdin.fileno()
        self._rfd = self.process.stdout.fileno()
        self._buffer = b""
        self._channel = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    def __enter__(self) -> LinePipe:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self, timeout: float = 15.0) -> None:
        """EOF on stdin (Squid's way of saying goodbye); kill if it does not go in time."""
        try:
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process.stdout.close()
        self._stderr.close()

    def stderr_tail(self, limit: int = 2000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._wfd, view)
            view = view[written:]

    def _read_lines(self, deadline: float) -> List[bytes]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{self.name}: no reply in time")
        ready, _, _ = select.select([self._rfd], [], [], remaining)
        if not ready:
            raise TimeoutError(f"{self.name}: no reply in time; stderr: {self.stderr_tail()}")
        chunk = os.read(self._rfd, 1 << 16)
        if not chunk:
            raise EOFError(f"{self.name} closed stdout; stderr: {self.stderr_tail()}")
        *lines, self._buffer = (self._buffer + chunk).split(b"\n")
        return lines

    def send(self, line: str) -> str:
        """Send one request line (without channel-ID) and return the channel used."""
        self._channel += 1
        channel = f"9{self._channel}"  # distinct from drive()'s 0..in_flight-1
        self._write(f"{channel} {line}\n".encode())
        return channel

    def send_many(self, line: str, count: int) -> List[str]:
        """Send the same request on `count` channels in one write; returns the channels."""
        channels = []
        for _ in range(count):
            self._channel += 1
            channels.append(f"9{self._channel}")
        self._write("".join(f"{c} {line}\n" for c in channels).encode())
        return channels

    def ask(self, line: str, timeout: float = 30.0) -> str:
        """One request, its reply without the channel-ID. Must not overlap drive()."""
        channel = self.send(line)
        return self.collect([channel], timeout)[channel]

    def collect(self, channels: List[str], timeout: float = 30.0) -> Dict[str, str]:
        """Replies (without channel-IDs) for the given channels; other replies are an error."""
        wanted = set(channels)
        replies: Dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while wanted - replies.keys():
            for raw in self._read_lines(deadline):
                cid, _, rest = raw.decode("latin-1").partition(" ")
                if cid not in wanted or cid in replies:
                    raise ProtocolProblem(f"{self.name}: unexpected reply {raw[:200]!r}")
                replies[cid] = rest
        return replies

    def drive(self, lines: Sequence[bytes], total: int, in_flight: int = 200,
              timeout: float = 120.0,
              every: int = 0, on_every: Optional[Callable[[int], None]] = None) -> DriveResult:
        """Send `total` requests (lines[i % len(lines)], no channel-ID, no newline), keeping
        `in_flight` of them outstanding on channels 0..in_flight-1. Checks that every reply
        carries a channel that is waiting, exactly once."""
        count = len(lines)
        waiting = bytearray(in_flight)  # 1 while the channel awaits its reply
        kinds = {b"OK": 0, b"ER": 0, b"BH": 0}
        first_reply = None
        started = time.monotonic()
        deadline = started + timeout
        cpu_before = cpu_seconds(self.pid)
        sent = answered = 0
        out = []
        for channel in range(min(in_flight, total)):
            out.append(b"%d %s\n" % (channel, lines[sent % count]))
            waiting[channel] = 1
            sent += 1
        self._write(b"".join(out))
        while answered < total:
            out = []
            for raw in self._read_lines(deadline):
                cid, _, rest = raw.partition(b" ")
                channel = int(cid)
                if channel >= in_flight or not waiting[channel]:
                    raise ProtocolProblem(f"{self.name}: reply for idle channel: {raw[:200]!r}")
                waiting[channel] = 0
                kind = rest[:2]
                if kind not in kinds:
                    raise ProtocolProblem(f"{self.name}: not a helper reply: {raw[:200]!r}")
                kinds[kind] += 1
                if first_reply is None:
                    first_reply = rest
                answered += 1
                if every and answered % every == 0 and on_every is not None:
                    on_every(answered)
                if sent < total:
                    out.append(b"%d %s\n" % (channel, lines[sent % count]))
                    waiting[channel] = 1
                    sent += 1
            if out:
                self._write(b"".join(out))
        seconds = time.monotonic() - started
        cpu = cpu_seconds(self.pid) - cpu_before
        return DriveResult(answered, seconds, cpu,
                           {"OK": kinds[b"OK"], "ERR": kinds[b"ER"], "BH": kinds[b"BH"]},
                           first_reply)


# What the shipped squid.conf sends after the URL (url_rewrite_extras "myport=%lp").
SQUID_CONF_EXTRAS = "myport=3128"


def request_lines(urls: Sequence[str]) -> List[bytes]:
    return [f"{url} {SQUID_CONF_EXTRAS}".encode() for url in urls]


def wait_ready(pipe: LinePipe, timeout: float = 30.0) -> float:
    """Ask a URL that is not ours (ERR) to know the helper is up; returns seconds taken."""
    started = time.monotonic()
    reply = pipe.ask(f"http://example.invalid/ {DEFAULT_EXTRAS}", timeout)
    if not reply.startswith("ERR"):
        raise ProtocolProblem(f"{pipe.name}: unexpected readiness reply {reply!r}")
    return time.monotonic() - started


def start_together(actions: List[Callable[[], None]], timeout: float = 10.0) -> None:
    """Run actions in threads released by one barrier, so they happen at the same moment."""
    barrier = threading.Barrier(len(actions))
    errors: List[BaseException] = []

    def run(action: Callable[[], None]) -> None:
        try:
            barrier.wait(timeout)
            action()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(a,), daemon=True) for a in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    if errors:
        raise errors[0]


# -- output -------------------------------------------------------------------------------------
RESULTS_DIR = BENCH_DIR / "results"
_missed: List[str] = []  # verdict() calls that said MISSED, for run()'s exit status


def arg_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a short run (smaller counts)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the run's random choices, to replay them (default: drawn "
                             "and written into the results file)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra repos.yaml setting for the helper, e.g. --set workers=4")
    return parser


def extra_settings(args: argparse.Namespace) -> Dict[str, object]:
    """--set KEY=VALUE options as repos.yaml settings (values parsed as YAML scalars)."""
    import yaml

    settings = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set needs KEY=VALUE, got {item!r}")
        settings[key] = yaml.safe_load(value)
    return settings


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def verdict(met: bool) -> str:
    """MET or MISSED; a MISSED one makes run() exit with 1."""
    if not met:
        _missed.append("MISSED")
    return "MET" if met else "MISSED"


class _Tee:
    """Writes to the terminal and to the results file alike."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def _seed_argument(argv: List[str]) -> Tuple[int, List[str]]:
    """The run's seed: --seed from argv, or one drawn now and added to argv, so that the
    command line in the results file replays the run."""
    seen, _ = _seed_parser().parse_known_args(argv)
    if seen.seed is not None:
        return seen.seed, argv
    seed = random.SystemRandom().randrange(1, 1 << 31)
    return seed, [*argv, f"--seed={seed}"]


def _seed_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--seed", type=int, default=None)
    return parser


def run(main: Callable[[], int]) -> int:
    """Run a benchmark's main() with its output also appended to
    benchmarks/results/<name>-<date>.txt, after a header with the command line, seed, date and
    the machine's load; exit 1 if any goal was MISSED (or main's own non-zero status)."""
    if {"-h", "--help"} & set(sys.argv[1:]):
        return main()  # usage only: nothing to record
    name = Path(sys.argv[0]).stem
    seed, sys.argv[1:] = _seed_argument(sys.argv[1:])
    random.seed(seed)
    now = time.gmtime()
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}-{time.strftime('%Y-%m-%d', now)}.txt"
    with open(path, "a") as results:
        results.write(f"===== {time.strftime('%Y-%m-%dT%H:%M:%SZ', now)}\n"
                      f"command: {' '.join([sys.executable, *sys.argv])}\n"
                      f"seed: {seed}\n"
                      f"machine: {os.cpu_count()} CPUs, load average "
                      f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the start\n")
        results.flush()
        stdout, stderr = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(stdout, results), _Tee(stderr, results)
        try:
            status = main()
        finally:
            sys.stdout, sys.stderr = stdout, stderr
        if status == 0 and _missed:
            status = 1
        results.write(f"exit status: {status}"
                      + (f" ({len(_missed)} goal(s) missed)" if _missed else "") + "\n\n")
    print(f"results appended to {path}")
    return status
