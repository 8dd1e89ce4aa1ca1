"""A flood of requests for paths that exist nowhere (a typo loop, a scanner), with normal
requests mixed in, against one `squid-helper rewrite` and two real mirrors.

What it measures: the probes each mirror receives per second from the helper, the memo's size
on disk against its limit, and the latency of normal requests (memoised paths) during the flood
against the same requests alone. Normal and flood requests share the helper's stdin, as they
share Squid's helper queue: channel-IDs, at most `in_flight` outstanding.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import diskcache

from lab.helper import HelperProcess, write_config
from lab.mirrors import MirrorServer, make_snapshot

PKG = "http://repoproxy/flood/9/x86_64/"
NORMAL = [f"Packages/normal-{i}.rpm" for i in range(20)]
EXTRAS = "myport=3128 cache-control=- pragma=-"


@dataclass
class FloodResult:
    flood_requests: int
    seconds: float
    replies: Dict[str, int]  # "OK"/"ERR"/"BH" -> count, flood requests
    alone: List[float]  # latencies of normal requests without the flood (seconds)
    during: List[float]  # latencies of normal requests during the flood
    busiest_second: Dict[str, int]  # mirror -> most probes (HEAD) it received in one second
    probe_limit: int
    memo_bytes: int
    memo_limit: int
    memo_entries: int = 0  # facts in the memo at the end (misses, answers, surveys, ...)
    log_tail: str = field(default="")

    @staticmethod
    def p99(latencies: List[float]) -> float:
        return statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else 0.0

    def report(self) -> str:
        return "\n".join([
            f"{self.flood_requests} flood requests in {self.seconds:.1f}s, replies "
            f"{self.replies}",
            f"normal requests, p99 latency: alone {1000 * self.p99(self.alone):.2f} ms "
            f"({len(self.alone)}), during the flood {1000 * self.p99(self.during):.2f} ms "
            f"({len(self.during)})",
            "busiest second of probes per mirror: " + ", ".join(
                f"{m} {n}" for m, n in self.busiest_second.items())
            + f" (limit {self.probe_limit}/s)",
            f"memo on disk: {self.memo_bytes / 1e6:.2f} MB (limit {self.memo_limit / 1e6:.2f} MB),"
            f" {self.memo_entries} entries",
        ])


def _drive(helper: HelperProcess, lines: List[Tuple[bool, str]], in_flight: int,
           timeout: float) -> Tuple[Dict[str, int], List[float]]:
    """Send lines (normal?, URL) with channel-IDs, at most in_flight outstanding; returns the
    reply kinds of the flood lines and the latencies of the normal ones."""
    sent_at: Dict[int, Tuple[bool, float]] = {}
    slots = threading.Semaphore(in_flight)
    kinds = {"OK": 0, "ERR": 0, "BH": 0}
    latencies: List[float] = []
    done = threading.Event()
    lock = threading.Lock()

    def read() -> None:
        for _ in range(len(lines)):
            reply = helper.reply(timeout)
            channel, _, rest = reply.partition(" ")
            with lock:
                normal, started = sent_at.pop(int(channel))
            if normal:
                latencies.append(time.monotonic() - started)
            else:
                kinds[rest.split(" ", 1)[0]] += 1
            slots.release()
        done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    for channel, (normal, url) in enumerate(lines):
        if not slots.acquire(timeout=timeout):
            raise TimeoutError("the helper stopped answering")
        with lock:
            sent_at[channel] = (normal, time.monotonic())
        helper.send_raw(f"{channel} {url} {EXTRAS}\n".encode())
    if not done.wait(timeout):
        raise TimeoutError("replies missing")
    return kinds, latencies


def _name(prefix: str, index: int, length: int) -> str:
    """prefix-index, padded to about length characters in directories of 200 (a file name may
    not be longer than 255)."""
    name = f"{prefix}-{index}" if prefix else str(index)
    padding = max(0, length - len(name))
    return "/".join(["x" * 199] * (padding // 200) + [name])


def run_flood(directory: Path, count: int = 10_000, probe_limit: int = 20, memo_mb: int = 1,
              in_flight: int = 200, normal_every: int = 20, timeout: float = 120.0,
              name_length: int = 0) -> FloodResult:
    """name_length: pad each flood path's file name to about this many characters, so that
    fewer requests fill the memo (each remembered miss holds its path)."""
    snapshot = make_snapshot(directory / "mirror", 2000, [Path(p).name for p in NORMAL])
    with MirrorServer(snapshot) as one, MirrorServer(snapshot) as two:
        config = write_config(directory, {"flood": {"mirrors": [one.url, two.url]}},
                              max_probes_per_second=probe_limit, memo_size_mb=memo_mb,
                              negative_ttl=60)
        with HelperProcess(config) as helper:
            for path in NORMAL:  # memoised before anything is measured
                helper.ask_settled(PKG + path, EXTRAS)
            normal = [(True, PKG + NORMAL[i % len(NORMAL)])
                      for i in range(count // normal_every)]
            _, alone = _drive(helper, normal, in_flight, timeout)
            # Half packages (answered at once, verified in the background), half anything
            # else (probed before they are answered): both kinds of new path.
            flood = [(False, PKG + (f"Packages/{_name('typo', i, name_length)}.rpm" if i % 2
                                    else f"scan/{_name('', i, name_length)}.php"))
                     for i in range(count)]
            mixed: List[Tuple[bool, str]] = []
            for i, line in enumerate(flood):
                mixed.append(line)
                if i % normal_every == 0:
                    mixed.append(normal[(i // normal_every) % len(normal)])
            started = time.monotonic()
            kinds, during = _drive(helper, mixed, in_flight, timeout)
            seconds = time.monotonic() - started
        busiest = {m.url: m.busiest_second("HEAD") for m in (one, two)}
    with diskcache.Cache(str(directory / "memo")) as memo:
        volume, entries = memo.volume(), len(memo)
    log = (directory / "helper.log").read_text(errors="replace")
    return FloodResult(count, seconds, kinds, alone, during, busiest, probe_limit, volume,
                       memo_mb << 20, entries, log[-3000:])
