"""The rules by which one answer from a host is judged, and the host's probe budget (pure).

A client chooses the paths the helpers ask mirrors for, so what one path does (a 5xx, a 429
asking for ten minutes, an answer slower than probe_timeout) must not take the host away from
every client: a host is marked out at once only when it cannot be reached at all (a refused
connection, a failed TLS handshake) or when a request no client chose timed out (its mirror
list or metalink, the watch's look at a mirror in use); otherwise only when several distinct
paths failed. health.MirrorHealth applies these rules to the memo; nothing here reads a clock
or does I/O.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional

from ..facts.lifetimes import HOST_ERROR_PATHS, HOST_ERROR_WINDOW, MAX_BACKOFF
from .probe import ERROR, FAILED

# What one answer is evidence of.
HOST_DOWN = "host-down"  # mark the host out for unhealthy_ttl, at once
PATH_FAILED = "path-failed"  # one more failing path: the host is out when enough paths fail
BACK_OFF = "back-off"  # the host asked us to wait (Retry-After)
ANSWERED = "answered"  # an answer, of whatever status: the host is there


def evidence(outcome: str, timed_out: bool, retry_after: Optional[float],
             conclusive: bool) -> str:
    """What one result says about its host. conclusive: the request was one no client
    chose (a mirror list, the watch's look at a mirror in use), so its timeout is the
    host's."""
    if outcome == FAILED:
        # A refused connection, a failed TLS handshake, an unreachable host: nothing is
        # served, whatever the path. A timeout may be the path's alone (a slow path is slow).
        return PATH_FAILED if timed_out and not conclusive else HOST_DOWN
    if outcome == ERROR:  # the host answered: a 5xx or 429 is that path's answer
        return BACK_OFF if retry_after else PATH_FAILED
    return ANSWERED


def back_off_for(retry_after: float, unhealthy_ttl: float) -> float:
    """How long a host that asked to be left alone is: as long as it asked, but never longer
    than a host that failed is (one path's 429 with Retry-After: 600 would otherwise take
    the mirror away for ten minutes), nor than MAX_BACKOFF."""
    return max(0.0, min(retry_after, unhealthy_ttl, MAX_BACKOFF))


def failing_paths(known: Optional[Dict[str, float]], path: str, now: float,
                  window: float = HOST_ERROR_WINDOW) -> Dict[str, float]:
    """The host's failing paths (path -> when it last failed) once `path` failed at `now`:
    those older than `window` are forgotten."""
    recent = {p: at for p, at in (known or {}).items() if now - at < window}
    recent[path] = now
    return recent


def host_failing(paths: Dict[str, float]) -> bool:
    """Enough distinct paths failed to blame the host."""
    return len(paths) >= HOST_ERROR_PATHS


def budget_second(now: float) -> int:
    """The second whose budget a request made at `now` spends (the same for every process)."""
    return int(now)


def within_budget(spent: int, limit: int) -> bool:
    """Whether the request that made the second's count `spent` may go (spent counts it; 0:
    no memo to count in, and a helper without a memo still works)."""
    return spent <= limit


def first_within_budget(bases: Iterable[str], wanted: int,
                        spend: Callable[[str], bool]) -> List[str]:
    """The first `wanted` bases, in order, whose host had a request left this second:
    spend(base) takes one (and says whether there was one). Bases past `wanted` are not
    asked, so they spend nothing."""
    chosen: List[str] = []
    for base in bases:
        if len(chosen) >= wanted:
            break
        if spend(base):
            chosen.append(base)
    return chosen
