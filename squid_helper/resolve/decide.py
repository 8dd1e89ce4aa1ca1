"""The resolver's decisions: pure functions of what it knows about one request (a Snapshot).

The resolver reads the facts a request needs once (resolver.Resolver._snapshot), decides here,
acts (fetches a mirror list, surveys, probes) and publishes what it learnt. Nothing here reads a
clock, the memo or the network: `now` is the snapshot's, so every policy can be tried with a
fake clock in a millisecond.

The policies:
* health and probation (health.host_state): a host that failed is skipped while its mark is
  fresh, or while it asked us to back off; after that it is on probation until it answers
  again: probed before it is trusted with an unprobed or memoised answer;
* stale (Survey.usable): a mirror the repo's latest survey found behind loses every answer;
* shunned: a mirror that Squid could not fetch a path from, or whose bytes for it were corrupt,
  never answers for that path: not from the memo, not at once, not after a probe, not as the
  last-known answer;
* failover (candidates): the surveyed mirrors in order, the failing and shunned ones left out;
* optimistic answers (may_answer_at_once): a file of the snapshot whose repomd.xml a trusted
  mirror just served goes to that mirror at once, verified in the background;
* refresh rate limit (refresh_due): a client's no-cache checks the repo again at most once per
  refresh_interval;
* last-known (fallback): when nothing can be verified, the last answer that is still allowed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..facts.lifetimes import Fact
from ..facts.memo import Stored
from .health import UNKNOWN_HOST, HostState
from .probe import ERROR, FAILED, MISSING
from .selection import DownloadSpeed, by_downloads
from .survey import Survey
from .urls import RepoPath

VERIFIED, OPTIMISTIC, MEMO, LAST_KNOWN, NOT_FOUND, UNAVAILABLE = (
    "verified", "optimistic", "memo", "last-known", "not-found", "unavailable")
# An unprobed answer goes only to a mirror that answered the helpers this recently: one that
# started to hang since would stall Squid's fetch (and dnf) until their own timeouts, where a
# probe finds out within hedge_delay. During a dnf run the background verifications keep the
# chosen mirror's record fresh.
RECENTLY = 30.0


@dataclass
class Resolution:
    url: Optional[str]
    status: str  # VERIFIED, OPTIMISTIC, MEMO, LAST_KNOWN, NOT_FOUND or UNAVAILABLE
    reason: str
    trace: List[str] = field(default_factory=list)
    elapsed: float = 0.0
    fresh_for: float = 0.0  # seconds this memoised answer stays fresh
    base: Optional[str] = None  # the mirror answered with (watched while its answers are used)


@dataclass(frozen=True)
class PathFacts:
    """Where the facts of one path live in the memo, and how long each holds (lifetimes):
    what the snapshot read, and what the resolver publishes."""

    answer: Fact
    miss: Fact
    refresh_check: Optional[Fact] = None  # read only when a client asked for a refresh


@dataclass(frozen=True)
class Snapshot:
    """The facts one request needs, read at once at `now` (wall clock)."""

    request: RepoPath
    now: float
    facts: PathFacts
    answer: Optional[Stored] = None  # the memoised answer ({"url", "base"}), fresh or not
    miss: Optional[Stored] = None  # every mirror answered 404 (a reason)
    survey: Optional[Survey] = None  # the repo's latest survey, fresh or not
    hosts: Mapping[str, HostState] = field(default_factory=dict)  # by base URL
    speeds: Mapping[str, DownloadSpeed] = field(default_factory=dict)  # Squid's, by base URL
    shunned: Mapping[str, str] = field(default_factory=dict)  # base -> why, for this path
    # a client asked for fresh metadata (no-cache), and when the repo was last checked again
    # for one (facts.refresh_check)
    refresh_asked: bool = False
    refresh_checked: Optional[Stored] = None
    # the path is being verified (in this process or another): no second answer at once
    verifying: bool = False

    def host(self, base: str) -> HostState:
        return self.hosts.get(base, UNKNOWN_HOST)


def allowed(snapshot: Snapshot, base: str) -> bool:
    """Whether base may answer for the snapshot's path at all (not shunned for it)."""
    return base not in snapshot.shunned


def still_good(snapshot: Snapshot, base: str) -> bool:
    """Whether a memoised answer's mirror may still be answered with: trusted, not found
    stale by the repo's latest survey (freshness is one fact, like health: a mirror that fell
    behind loses every answer it had), and not shunned for the path."""
    return (snapshot.host(base).trusted and allowed(snapshot, base)
            and (snapshot.survey is None or snapshot.survey.usable(base)))


def memo_answer(snapshot: Snapshot) -> Optional[Resolution]:
    """The memoised answer while it is fresh and its mirror still good; else the memoised
    'nobody has it' while fresh; else None (it must be worked out)."""
    answer = snapshot.answer
    if answer is not None:
        left = answer.fresh_for(snapshot.facts.answer, snapshot.now)
        if left > 0 and still_good(snapshot, answer.value["base"]):
            return Resolution(answer.value["url"], MEMO, "memoised answer", fresh_for=left,
                              base=answer.value["base"])
    miss = snapshot.miss
    if miss is not None:
        left = miss.fresh_for(snapshot.facts.miss, snapshot.now)
        if left > 0:
            return Resolution(None, NOT_FOUND, miss.value, fresh_for=left)
    return None


def candidates(snapshot: Snapshot, ranked: Sequence[str], trace: List[str],
               draw: random.Random) -> List[str]:
    """Failover order: the ranked mirrors without the failing ones, the fresh ones among
    them ordered by Squid's downloads (selection.by_downloads; `draw` picks which of the
    equally fast leads), without those shunned for the path (said in the trace)."""
    failing = [b for b in ranked if snapshot.host(b).failing]
    if failing:
        trace.append("skipped unhealthy: " + ", ".join(failing))
    fresh = snapshot.survey.fresh if snapshot.survey is not None else frozenset()
    ordered = by_downloads([b for b in ranked if b not in failing], fresh,
                           dict(snapshot.speeds), draw)
    shunned = [b for b in ordered if not allowed(snapshot, b)]
    if shunned:
        trace.append("shunned for this path: " + ", ".join(
            f"{b} ({snapshot.shunned[b]})" for b in shunned))
    return [b for b in ordered if b not in shunned]


def may_answer_at_once(snapshot: Snapshot, base: str) -> bool:
    """Whether base may get the path unprobed: allowed for it, trusted and heard from
    RECENTLY (the resolver also needs a free background verification)."""
    host = snapshot.host(base)
    return (allowed(snapshot, base) and host.trusted
            and host.heard_within(RECENTLY, snapshot.now))


def only_mirror(snapshot: Snapshot, bases: Sequence[str]) -> Optional[str]:
    """The repo's single mirror, when there is nothing to choose (no survey or probe stands
    between the client and it): trusted and allowed for the path."""
    if len(bases) == 1 and snapshot.host(bases[0]).trusted and allowed(snapshot, bases[0]):
        return bases[0]
    return None


def refresh_due(snapshot: Snapshot) -> bool:
    """A client's no-cache for repomd.xml checks the repo again, even while the memoised
    answer holds, unless the repo was checked so within refresh_interval."""
    checked, fact = snapshot.refresh_checked, snapshot.facts.refresh_check
    return snapshot.refresh_asked and snapshot.request.is_metadata and fact is not None and (
        checked is None or checked.fresh_for(fact, snapshot.now) <= 0)


def fallback(snapshot: Snapshot, trace: List[str], why: str) -> Resolution:
    """Nothing could be verified: the last-known answer, so that Squid can serve the copy it
    holds, unless its mirror is shunned for the path; else the client gets an error."""
    known = snapshot.answer
    if known is not None and allowed(snapshot, known.value["base"]):
        trace.append(f"{why}; using the last-known answer")
        return Resolution(known.value["url"], LAST_KNOWN, f"{why}; last-known mirror", trace)
    return Resolution(None, UNAVAILABLE, why, trace)


def answer_value(request: RepoPath, base: str) -> Dict[str, Any]:
    """What the memo keeps of a verified answer."""
    return {"url": request.on(base), "base": base}


# What to do once the repo's mirrors are known and surveyed (Plan.action).
PUBLISH, AT_ONCE, PROBE = "publish", "at-once", "probe"


@dataclass(frozen=True)
class Plan:
    action: str  # PUBLISH (candidates[0], verified), AT_ONCE (candidates[0], unprobed), PROBE
    candidates: Tuple[str, ...]
    why: str = ""


def plan(snapshot: Snapshot, candidates: Sequence[str], may_verify_later: bool) -> Plan:
    """After the survey (snapshot.survey): repomd.xml goes to the first mirror that served the
    current one to the survey; a file of that snapshot goes to it at once (when a background
    verification may start); the repo root only to current mirrors; anything else is
    probed in order."""
    request, survey = snapshot.request, snapshot.survey
    fresh = survey.fresh if survey is not None else frozenset()
    first = candidates[0] if candidates and candidates[0] in fresh else None
    if first is not None and request.is_metadata:
        return Plan(PUBLISH, tuple(candidates), "served the current repomd.xml to the survey")
    if (first is not None and request.in_snapshot and may_verify_later
            and may_answer_at_once(snapshot, first)):
        return Plan(AT_ONCE, tuple(candidates), "it served the current repomd.xml")
    if request.is_root and fresh:
        # A stale mirror's listing shows an old repo: only the current ones may answer.
        candidates = [b for b in candidates if b in fresh] or candidates
    return Plan(PROBE, tuple(candidates))


def retry_candidates(snapshot: Snapshot, candidates: Sequence[str], trace: List[str]
                     ) -> List[str]:
    """Whom to probe: the candidates; when every usable mirror is marked unhealthy, all of
    them again (one may be back), rather than fall back to a last-known answer that names a
    mirror known to fail. Never one shunned for the path."""
    survey = snapshot.survey
    if not candidates and survey is not None and survey.ranked:
        again = [b for b in survey.ranked if allowed(snapshot, b)]
        if again:
            trace.append("every usable mirror is marked unhealthy: asking them again")
        return again
    return list(candidates)


def unprobed(request: RepoPath, candidates: Sequence[str], asked: Iterable[str],
             trace: List[str]) -> Optional[Resolution]:
    """A mirror whose probes for this second are spent (a flood of new paths) was not asked:
    the client gets the first such mirror's own answer, and nothing is memoised."""
    unasked = [b for b in candidates if b not in set(asked)]
    if not unasked:
        return None
    trace.append(f"probe budget spent on {', '.join(unasked)}: answered unprobed")
    return Resolution(request.on(unasked[0]), OPTIMISTIC,
                      f"on {unasked[0]} (unprobed: max_probes_per_second spent)", trace)


def nobody_has(request: RepoPath, outcomes: Mapping[str, str]) -> Optional[str]:
    """Why the path is not found, when every mirror probed answered 404 (outcomes: base ->
    probe outcome); None when some failed or none was probed."""
    if outcomes and all(o == MISSING for o in outcomes.values()):
        return f"no mirror has {request.path or 'the repo root'} ({len(outcomes)} answered 404)"
    return None


def unavailable_why(request: RepoPath, candidates: Sequence[str],
                    outcomes: Mapping[str, str]) -> str:
    if not candidates:
        return "no healthy mirror holds the current metadata"
    failed = sum(o in (FAILED, ERROR) for o in outcomes.values())
    return f"no mirror answered for {request.path or 'the repo root'} ({failed} failed)"
