"""Mirror ordering: which mirrors to try for a path, and in what order (pure logic).

A freshness survey fetches repodata/repomd.xml from the first mirrors of a repo. Each answer
becomes an Observation; rank_mirrors turns the observations into the order in which mirrors are
probed for every path of that repo, so a mirror with old metadata is never preferred to one with
the current snapshot.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Collection, Dict, Iterable, List, Optional, Sequence, Tuple

from .sources import MirrorSet, SourceError, repomd_age_key

FRESH, ALTERNATE, UNKNOWN, FAILED, STALE = "fresh", "alternate", "unknown", "failed", "stale"
_TIER = {FRESH: 0, ALTERNATE: 1, UNKNOWN: 2, FAILED: 3, STALE: 4}


@dataclass(frozen=True)
class Observation:
    """One mirror's answer to the survey's GET of repodata/repomd.xml."""

    outcome: str  # "ok", "missing" (404/410) or "failed" (timeout, refused, 5xx)
    age_key: Optional[Tuple[int, int]] = None  # from repomd_age_key, when outcome is ok
    digest: Optional[str] = None  # "expected", "alternate" or "mismatch" against a metalink


def observe(content: bytes, mirrors: MirrorSet) -> Observation:
    """Judge one mirror's repomd.xml against the metalink's expectation, if there is one."""
    try:
        age = repomd_age_key(content)
    except SourceError:
        return Observation("missing")  # a mirror serving something else is as good as absent
    digest = None
    if mirrors.expected is not None:
        if mirrors.expected.matches(content):
            digest = "expected"
        elif any(alt.matches(content) for alt in mirrors.alternates):
            digest = "alternate"
        else:
            digest = "mismatch"
    return Observation("ok", age, digest)


def verdicts(bases: Sequence[str], observations: Dict[str, Observation],
             use_digest: bool) -> Dict[str, Optional[str]]:
    """Each base's verdict (FRESH ... STALE), or None when it must not be used for this repo.

    use_digest: judge by the metalink's hashes; otherwise the newest (revision, timestamp)
    among the answers is fresh and anything older is stale. A mirror that matches no hash of
    the metalink but is newer than every one that does has seen a push the metalink does not
    know yet: it is usable (UNKNOWN), never stale.
    """
    newest = max((o.age_key for o in observations.values() if o.outcome == "ok" and o.age_key),
                 default=None)
    newer = set(newer_than_metalink(observations))
    result: Dict[str, Optional[str]] = {}
    for base in bases:
        seen = observations.get(base)
        if seen is None:
            result[base] = UNKNOWN
        elif seen.outcome == "failed":
            result[base] = FAILED
        elif seen.outcome == "missing":
            result[base] = None
        elif use_digest:
            result[base] = {"expected": FRESH, "alternate": ALTERNATE}.get(
                seen.digest or "", UNKNOWN if base in newer else None)
        else:
            result[base] = FRESH if seen.age_key == newest else STALE
    return result


def newer_than_metalink(observations: Dict[str, Observation]) -> List[str]:
    """Mirrors whose repomd.xml matches no hash of the metalink yet is newer than every one
    that matches (evidence of a push the metalink has not caught up with); none when nothing
    matches the metalink (nothing to compare with)."""
    matching = [o.age_key for o in observations.values()
                if o.digest in ("expected", "alternate") and o.age_key]
    if not matching:
        return []
    reference = max(matching)
    return [b for b, o in observations.items()
            if o.digest == "mismatch" and o.age_key and o.age_key > reference]


def digest_usable(observations: Dict[str, Observation]) -> bool:
    """True when some mirror matches the metalink; if none does, the metalink itself is suspect."""
    return any(o.digest == "expected" for o in observations.values())


def rank_mirrors(bases: Sequence[str], verdict: Dict[str, Optional[str]]) -> List[str]:
    """Usable bases, best verdict first, keeping the source's order within a verdict."""
    usable = [(b, verdict.get(b, UNKNOWN)) for b in bases]
    ordered = sorted(((_TIER[v], i, b) for i, (b, v) in enumerate(usable) if v is not None))
    return [b for _, _, b in ordered]


def drop_unhealthy(ranked: Iterable[str], unhealthy: Iterable[str]) -> List[str]:
    """The ranked bases without those currently marked unhealthy."""
    skip = set(unhealthy)
    return [b for b in ranked if b not in skip]


# -- when the survey may decide ------------------------------------------------------------------
def survey_wait(asked: int, observations: Dict[str, Observation], has_digest: bool,
                started: float, first_answer: Optional[float], window: float,
                now: float) -> Optional[float]:
    """How much longer a running survey should wait for more answers; None: decide now.

    A metalink's hash proves a mirror fresh by itself, so one matching answer decides. Without
    a hash, freshness is relative (the newest snapshot among the answers): after the first
    repomd.xml arrives, the others get `window` seconds, or as long again as the first one
    took, whichever is longer, so that a mirror a little farther away still counts but a
    hanging one costs nothing. Failures and 404s alone never start the window.
    """
    if len(observations) >= asked:
        return None
    if has_digest and any(o.digest == "expected" for o in observations.values()):
        return None
    if first_answer is None:
        return float("inf")
    deadline = first_answer + max(window, first_answer - started)
    return None if now >= deadline else deadline - now


# -- the fastest fresh mirror --------------------------------------------------------------------
# A mirror must be this much faster than the current choice to replace it, so that two mirrors
# of about the same speed do not take turns (and split Squid's fetches between them).
FASTER_BY = 0.25


def order_by_speed(ranked: Sequence[str], verdict: Dict[str, Optional[str]],
                   latency: Dict[str, float], current: Optional[str] = None) -> List[str]:
    """ranked (best verdict first) with each verdict's mirrors fastest first.

    latency: seconds each mirror took to answer lately (missing: never measured). Measured
    mirrors come before unmeasured ones, which keep their list order: the source's order is
    the prior, measurements the evidence. `current`, the mirror chosen before, stays first of
    its verdict unless another one of that verdict is FASTER_BY faster.
    """
    position = {base: index for index, base in enumerate(ranked)}

    def key(base: str) -> Tuple[int, float, int]:
        return (_TIER[verdict.get(base) or UNKNOWN], latency.get(base, float("inf")),
                position[base])

    ordered = sorted(ranked, key=key)
    if current in position:
        tier = _TIER[verdict.get(current) or UNKNOWN]
        rivals = [b for b in ordered if _TIER[verdict.get(b) or UNKNOWN] == tier]
        mine, fastest = latency.get(current), latency.get(rivals[0])
        if (rivals[0] != current and mine is not None and fastest is not None
                and fastest > mine * (1 - FASTER_BY)):
            ordered.remove(current)
            ordered.insert(ordered.index(rivals[0]), current)
    return ordered


# -- Squid's own downloads -----------------------------------------------------------------------
# Fresh mirrors whose downloads run within this fraction of the fastest one's share new fetches
# at random: a fleet of proxies (and one proxy's many paths) does not pile onto one mirror.
NEAR_BEST = 0.10
# A mirror whose recent downloads run below this fraction of its usual speed has slowed down:
# fresh mirrors not measured yet are tried before it (else they would never be measured).
SLOWED_DOWN = 0.5


@dataclass(frozen=True)
class DownloadSpeed:
    """A mirror host's speed as Squid's downloads from it showed (bytes/s)."""

    rate: float  # moving average that follows the latest downloads
    usual: float  # a slow one: what the mirror was like before


def by_downloads(candidates: Sequence[str], fresh: Collection[str],
                 speeds: Dict[str, DownloadSpeed], rng: random.Random) -> List[str]:
    """candidates (as the survey ranked them: best verdict first, by latency within one) with
    the fresh mirrors among them reordered by Squid's downloads; the others keep their places.

    Measured fresh mirrors go fastest first, one of those within NEAR_BEST of the fastest
    drawn at random to lead; mirrors without downloads yet keep their latency order after
    them, or before them when the fastest measured one has SLOWED_DOWN."""
    slots = [i for i, base in enumerate(candidates) if base in fresh]
    ours = [candidates[i] for i in slots]
    measured = sorted((b for b in ours if b in speeds), key=lambda b: -speeds[b].rate)
    if not measured:
        return list(candidates)
    unmeasured = [b for b in ours if b not in speeds]
    fastest = speeds[measured[0]]
    near = [b for b in measured if speeds[b].rate >= fastest.rate * (1 - NEAR_BEST)]
    lead = rng.choice(near)
    measured = [lead] + [b for b in measured if b != lead]
    slowed = fastest.rate < fastest.usual * SLOWED_DOWN
    order = unmeasured + measured if slowed else measured + unmeasured
    result = list(candidates)
    for slot, base in zip(slots, order):
        result[slot] = base
    return result
