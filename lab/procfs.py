"""Processes seen through /proc: a process's descendants, whether a pid is alive, waiting for
pids to go, and a process's memory and open file descriptors."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence


def _children(pid: int) -> List[int]:
    """Direct children of pid, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def descendants(pid: int) -> List[int]:
    result, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            result.append(child)
            todo.append(child)
    return result


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids: Sequence[int], timeout: float) -> List[int]:
    """Wait until none of pids is alive; returns those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if alive(p)]
    return left


def kill_leftovers(pids: Sequence[int], timeout: float = 10.0) -> None:
    """SIGKILL every one of pids still alive, and wait for them to go."""
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    wait_gone(pids, timeout)


def kill_tree(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """A test's cleanup: a process still running is killed, and every process it started
    (Squid, its helpers) with it."""
    if process.poll() is not None:
        return
    leftovers = descendants(process.pid)
    process.kill()
    process.wait(timeout=timeout)
    kill_leftovers(leftovers, timeout)


@dataclass(frozen=True)
class ProcSample:
    rss_kb: int
    anon_kb: int
    fds: int


def proc_sample(pid: int) -> Optional[ProcSample]:
    """VmRSS, RssAnon and the number of open file descriptors; None if the process is gone."""
    try:
        found = {}
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "RssAnon"):
                    found[key] = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        return None
    return ProcSample(found.get("VmRSS", 0), found.get("RssAnon", 0), fds)
