"""`squid-helper status`: what the helpers know (from the memo) and what Squid did (its counters).

read_memo() and collect() do the I/O; build_status() turns what they found into one
JSON-ready document (the `--json` output, schema below), and render_table() and the metrics
(metrics.py) are both made from that document, so the three always agree.

Schema (version 1; fields are only ever added):

    schema        1
    time          when the status was taken (Unix seconds)
    config        the repos.yaml read
    memo          {directory, store, state: "ok" | "no traffic yet" | "unreadable", problem}
      store       where the facts were read: the directory, or the fleet's Redis (memo:
                  redis://..., password left out)
    squid         {proxy, reachable, problem, requests, hits, hit_ratio, bytes_sent,
                   hit_bytes_sent, byte_hit_ratio}   (counts since Squid started; null when
                   not reachable; hit_ratio null before the first request)
    repos[]       {name, kind: "mirrorlist" | "metalink" | "mirrors", trees[], source_host}
      source_host the mirror list's or metalink's host, as for a mirror below: {host, health,
                  until, reason, last_probe}; null for static mirrors (a source that fails
                  before any list arrives leaves no tree, only this)
      trees[]     one per releasever/arch seen in the memo:
                  {releasever, arch, answers (memoised path answers, last-known ones
                   included), not_found (memoised "no mirror has it" answers),
                   source {kind, url, fetched, age_seconds, fresh, problem},
                   survey {at, age_seconds, complete, fresh_mirrors} | null,
                   mirrors[]}
        mirrors[] in the source's order: {url, host, health: "healthy" | "unhealthy" |
                  "probation" | "backoff", until (end of unhealthy/backoff, else null),
                  reason, verdict (the survey's: "fresh" | "alternate" | "unknown" |
                  "failed" | "stale" | "unusable", null when not surveyed),
                  latency_seconds (moving average, null when never measured),
                  last_probe {at, age_seconds, outcome: "found" | "missing" | "unchanged" |
                  "error" | "failed", detail, seconds, url} | null}
    integrity[]   per mirror host whose bytes disagreed with a repo's metadata (verify/):
                  {host, failures, at (the latest), path (repo/releasever/arch/path), reason}
    fetches       what Squid's own fetches showed (fetchstats.py has its schema)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set, Union

from ..config.settings import Config
from ..facts.lifetimes import (
    ANSWERS,
    BACKOFFS,
    FETCH_FAILURES,
    INTEGRITY_FAILURES,
    LAST_PROBES,
    LATENCIES,
    MIRROR_LISTS,
    MISSES,
    SOURCE_RETRIES,
    SURVEYS,
    THROUGHPUTS,
    TRAFFIC,
    UNHEALTHY_MARKS,
    Lifetimes,
)
from ..facts.memo import Memo, MemoUnreadable, Stored
from ..resolve.health import host_of
from ..resolve.urls import RepoPath, expand_template
from .fetchstats import fetch_lines, fetch_section
from .squidstats import SquidCounters, SquidUnreachable, fetch_counters

SCHEMA = 1
HEALTHY, UNHEALTHY, PROBATION, BACKOFF = "healthy", "unhealthy", "probation", "backoff"
HEALTH_STATES = (HEALTHY, UNHEALTHY, PROBATION, BACKOFF)
OK, NO_TRAFFIC, UNREADABLE = "ok", "no traffic yet", "unreadable"
# The kinds of facts read here (lifetimes.py makes their keys), by MemoFacts field.
_KINDS = {"lists": MIRROR_LISTS, "retries": SOURCE_RETRIES, "surveys": SURVEYS,
          "unhealthy": UNHEALTHY_MARKS, "backoff": BACKOFFS, "latency": LATENCIES,
          "last_probe": LAST_PROBES, "integrity": INTEGRITY_FAILURES,
          "traffic": TRAFFIC, "throughput": THROUGHPUTS, "fetch_failures": FETCH_FAILURES}


@dataclass
class MemoFacts:
    """What the memo holds that status shows, keyed by repo tree (`repo/ver/arch`) or host."""

    directory: str
    state: str = OK
    store: Optional[str] = None  # what was read: the directory, or the fleet's Redis
    problem: Optional[str] = None
    lists: Dict[str, Stored] = field(default_factory=dict)
    retries: Dict[str, Stored] = field(default_factory=dict)
    surveys: Dict[str, Stored] = field(default_factory=dict)
    unhealthy: Dict[str, Stored] = field(default_factory=dict)
    backoff: Dict[str, Stored] = field(default_factory=dict)
    latency: Dict[str, Stored] = field(default_factory=dict)
    last_probe: Dict[str, Stored] = field(default_factory=dict)
    integrity: Dict[str, Stored] = field(default_factory=dict)
    traffic: Dict[str, Stored] = field(default_factory=dict)
    throughput: Dict[str, Stored] = field(default_factory=dict)
    fetch_failures: Dict[str, Stored] = field(default_factory=dict)
    answers: Dict[str, int] = field(default_factory=dict)
    not_found: Dict[str, int] = field(default_factory=dict)


def read_memo(config: Config, now: Optional[float] = None) -> MemoFacts:
    """Everything status needs from the memo the helpers of `config` share (Memo.reader: the
    fleet's Redis, or the directory read-only); never raises for a missing, empty or
    unreadable memo (the state says which)."""
    facts = MemoFacts(config.cache_dir)
    now = time.time() if now is None else now
    try:
        memo = Memo.reader(config)
    except MemoUnreadable as exc:
        facts.state, facts.problem = UNREADABLE, str(exc)
        return facts
    facts.store = memo.store_name
    try:
        for name, kind in _KINDS.items():
            setattr(facts, name, memo.facts(kind, now))
        facts.answers = memo.trees(ANSWERS, now)
        facts.not_found = memo.trees(MISSES, now)
    except MemoUnreadable as exc:
        facts.state, facts.problem = UNREADABLE, str(exc)
        return facts
    finally:
        memo.close()
    if not (facts.lists or facts.surveys or facts.answers or facts.not_found
            or facts.latency or facts.unhealthy):
        facts.state = NO_TRAFFIC
    return facts


# -- pure: health, sources, the document ---------------------------------------------------------
def host_health(unhealthy: Optional[Stored], backoff: Optional[Stored], unhealthy_ttl: float,
                now: float) -> Dict[str, Any]:
    """A host's state as MirrorHealth judges it: unhealthy while its mark is fresh; backing
    off while the time it asked for runs; on probation while an older mark is kept (probed,
    not trusted, until it answers again); else healthy."""
    if unhealthy is not None and unhealthy.at + unhealthy_ttl > now:
        return {"health": UNHEALTHY, "until": unhealthy.at + unhealthy_ttl,
                "reason": str(unhealthy.value)}
    if backoff is not None and isinstance(backoff.value, (int, float)) and backoff.value > now:
        return {"health": BACKOFF, "until": float(backoff.value),
                "reason": "asked to be left alone (Retry-After)"}
    if unhealthy is not None:
        return {"health": PROBATION, "until": None,
                "reason": f"failed {_ago(now - unhealthy.at)}: {unhealthy.value}"}
    return {"health": HEALTHY, "until": None, "reason": None}


def _verdict(survey: Optional[Stored], base: str) -> Optional[str]:
    verdicts = getattr(survey.value, "verdicts", None) if survey is not None else None
    if not isinstance(verdicts, dict) or base not in verdicts:
        return None
    return verdicts[base] or "unusable"


def _host(host: str, facts: MemoFacts, config: Config, now: float) -> Dict[str, Any]:
    """A host's health and its last answer, as any helper last saw them."""
    probe = facts.last_probe.get(host)
    last = None
    if probe is not None and isinstance(probe.value, dict):
        last = {"at": probe.at, "age_seconds": max(0.0, now - probe.at),
                "outcome": probe.value.get("outcome"), "detail": probe.value.get("detail"),
                "seconds": probe.value.get("elapsed"), "url": probe.value.get("url")}
    return {"host": host,
            **host_health(facts.unhealthy.get(host), facts.backoff.get(host),
                          config.unhealthy_ttl, now),
            "last_probe": last}


def _mirror(base: str, facts: MemoFacts, survey: Optional[Stored], config: Config,
            now: float) -> Dict[str, Any]:
    host = host_of(base)
    latency = facts.latency.get(host)
    return {"url": base, **_host(host, facts, config, now),
            "verdict": _verdict(survey, base),
            "latency_seconds": float(latency.value) if latency is not None else None}


def _tree(repo: str, releasever: str, arch: str, facts: MemoFacts, config: Config,
          now: float) -> Dict[str, Any]:
    triple = f"{repo}/{releasever}/{arch}"
    kind = config.repos[repo].kind
    templates = config.repos[repo].templates
    listed = facts.lists.get(triple)
    survey = facts.surveys.get(triple)
    source: Dict[str, Any] = {"kind": kind, "url": None, "fetched": None, "age_seconds": None,
                              "fresh": None, "problem": None}
    try:
        expanded = [expand_template(t, releasever, arch) for t in templates]
    except ValueError:  # not from a helper: keys are validated before they are made
        expanded = []
    if kind == "mirrors":
        bases = expanded
        source["fresh"] = True
    else:
        source["url"] = expanded[0] if expanded else None
        mirrors = getattr(listed.value, "mirrors", None) if listed is not None else None
        bases = list(getattr(mirrors, "bases", ()))
        if listed is not None:
            fact = Lifetimes(config).mirror_list(RepoPath(repo, releasever, arch, "x"))
            source.update(fetched=listed.at, age_seconds=max(0.0, now - listed.at),
                          fresh=listed.fresh_for(fact, now) > 0)
        retry = facts.retries.get(triple)
        if retry is not None:
            source["problem"] = f"{retry.value} ({_ago(now - retry.at)})"
    if survey is not None:  # mirrors the survey judged that the list no longer names
        bases += [b for b in getattr(survey.value, "bases", ()) if b not in bases]
    return {
        "releasever": releasever, "arch": arch,
        "answers": facts.answers.get(triple, 0), "not_found": facts.not_found.get(triple, 0),
        "source": source,
        "survey": None if survey is None else {
            "at": survey.at, "age_seconds": max(0.0, now - survey.at),
            "complete": bool(getattr(survey.value, "complete", False)),
            "fresh_mirrors": len(getattr(survey.value, "fresh", ()))},
        "mirrors": [_mirror(b, facts, survey, config, now) for b in bases],
    }


def squid_section(proxy: Optional[str],
                  counters: Union[SquidCounters, str, None]) -> Dict[str, Any]:
    """counters: Squid's, or why there are none (a str), or None when not asked."""
    section: Dict[str, Any] = {"proxy": proxy, "reachable": isinstance(counters, SquidCounters),
                               "problem": counters if isinstance(counters, str) else None}
    for name in ("requests", "hits", "hit_ratio", "bytes_sent", "hit_bytes_sent",
                 "byte_hit_ratio"):
        section[name] = getattr(counters, name) if isinstance(counters, SquidCounters) else None
    return section


def build_status(config: Config, facts: MemoFacts, squid: Dict[str, Any],
                 now: float) -> Dict[str, Any]:
    """The status document (schema in the module docstring)."""
    seen: Set[str] = set()
    for table in (facts.lists, facts.retries, facts.surveys, facts.answers, facts.not_found):
        seen.update(table)
    repos = []
    for name, repo in config.repos.items():
        trees = []
        for triple in sorted(seen):
            parts = triple.split("/")
            if len(parts) == 3 and parts[0] == name:
                trees.append(_tree(name, parts[1], parts[2], facts, config, now))
        source_host = None
        if repo.kind != "mirrors" and repo.templates:
            source_host = _host(host_of(repo.templates[0]), facts, config, now)
        repos.append({"name": name, "kind": repo.kind, "trees": trees,
                      "source_host": source_host})
    return {"schema": SCHEMA, "time": now, "config": config.path,
            "memo": {"directory": facts.directory, "store": facts.store or facts.directory,
                     "state": facts.state, "problem": facts.problem},
            "squid": squid, "repos": repos, "integrity": integrity_section(facts.integrity),
            "fetches": fetch_section(facts.traffic, facts.throughput, facts.fetch_failures)}


def integrity_section(failures: Dict[str, Stored]) -> List[Dict[str, Any]]:
    """The integrity failures per mirror host (the document's integrity[]), most first."""
    found = []
    for host, stored in failures.items():
        if isinstance(stored.value, dict) and isinstance(stored.value.get("count"), int):
            found.append({"host": host, "failures": stored.value["count"], "at": stored.at,
                          "path": stored.value.get("path"), "reason": stored.value.get("reason")})
    return sorted(found, key=lambda entry: (-entry["failures"], entry["host"]))


def integrity_lines(integrity: List[Dict[str, Any]], now: float) -> List[str]:
    """The integrity failures as the table shows them: a block of their own, none when no
    mirror's bytes ever disagreed."""
    if not integrity:
        return []
    lines = ["", "Integrity failures (Squid's copy disagreed with the repo's metadata, and was "
             "purged):"]
    for entry in integrity:
        count = entry["failures"]
        lines.append(f"  {entry['host']}: {count} integrity failure{'s' if count != 1 else ''}, "
                     f"latest {_ago(now - entry['at'])}: {entry['path']} ({entry['reason']})")
    return lines


def collect(config: Config, proxy: Optional[str], now: Optional[float] = None,
            timeout: float = 5.0) -> Dict[str, Any]:
    """The status document, from the memo and (unless proxy is None) Squid's counters."""
    now = time.time() if now is None else now
    counters: Union[SquidCounters, str, None] = None
    if proxy is not None:
        try:
            counters = fetch_counters(proxy, timeout)
        except SquidUnreachable as exc:
            counters = str(exc)
    return build_status(config, read_memo(config, now), squid_section(proxy, counters), now)


# -- pure: the table -----------------------------------------------------------------------------
def _ago(seconds: float) -> str:
    return f"{_duration(seconds)} ago"


def _duration(seconds: float) -> str:
    whole = int(round(max(0.0, seconds)))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def human_bytes(count: Optional[float]) -> str:
    if count is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"  # not reached


def _percent(ratio: Optional[float]) -> str:
    return "-" if ratio is None else f"{ratio * 100:.1f}%"


def _health_text(mirror: Dict[str, Any], now: float) -> str:
    state = mirror["health"]
    if state in (UNHEALTHY, BACKOFF):
        until = time.strftime("%H:%M:%S", time.localtime(mirror["until"]))
        text = f"{'unhealthy' if state == UNHEALTHY else 'backing off'} until {until} " \
               f"(in {_duration(mirror['until'] - now)})"
        return text + (f": {mirror['reason']}" if state == UNHEALTHY and mirror["reason"]
                       else "")
    if state == PROBATION:
        return "on probation"
    return "healthy"


def _last_probe_text(probe: Optional[Dict[str, Any]]) -> str:
    if probe is None:
        return "-"
    seconds = probe.get("seconds")
    took = f" ({seconds:.2f}s)" if isinstance(seconds, (int, float)) else ""
    return f"{_ago(probe['age_seconds'])}: {probe.get('detail') or probe.get('outcome')}{took}"


def _columns(rows: List[List[str]], indent: str) -> List[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
            for row in rows]


def render_table(status: Dict[str, Any]) -> str:
    """The status document as an operator reads it on a terminal."""
    now = status["time"]
    memo = status["memo"]
    lines = [f"squid-helper status at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))}"
             f" (config {status['config']}, memo {memo['store']})", ""]
    squid = status["squid"]
    if squid["proxy"] is None:
        pass
    elif squid["reachable"]:
        lines.append(
            f"Squid {squid['proxy']} (since it started): {squid['requests']} requests, "
            f"{squid['hits']} hits ({_percent(squid['hit_ratio'])}); "
            f"{human_bytes(squid['bytes_sent'])} sent, {human_bytes(squid['hit_bytes_sent'])} "
            f"from cache ({_percent(squid['byte_hit_ratio'])})")
    else:
        lines.append(f"Squid: {squid['problem']}")
    if memo["state"] == UNREADABLE:
        lines.append(f"Memo: unreadable: {memo['problem']}")
    elif memo["state"] == NO_TRAFFIC:
        lines.append("Memo: no traffic yet (the helpers have answered no repo request)")
    for repo in status["repos"]:
        if not repo["trees"]:
            continue
        for tree in repo["trees"]:
            lines.append("")
            source = tree["source"]
            lines.append(f"{repo['name']}/{tree['releasever']}/{tree['arch']}  "
                         f"{source['kind']}" + (f" {source['url']}" if source["url"] else ""))
            facts = []
            if source["kind"] == "mirrors":
                facts.append("mirrors from repos.yaml")
            elif source["fetched"] is not None:
                facts.append(f"list fetched {_ago(source['age_seconds'])}"
                             + ("" if source["fresh"] else " (due for a refetch)"))
            else:
                facts.append("list never fetched")
            if source["problem"]:
                facts.append(f"source failing: {source['problem']}")
            facts.append(f"{tree['answers']} answers memoised, {tree['not_found']} not found")
            survey = tree["survey"]
            if survey is not None:
                facts.append(f"surveyed {_ago(survey['age_seconds'])}"
                             f"{'' if survey['complete'] else ' (still running)'}, "
                             f"{survey['fresh_mirrors']} fresh")
            lines.append("  " + "; ".join(facts))
            if tree["mirrors"]:
                rows = [["MIRROR", "HEALTH", "SURVEY", "LATENCY", "LAST ANSWER"]]
                for mirror in tree["mirrors"]:
                    latency = mirror["latency_seconds"]
                    rows.append([mirror["url"], _health_text(mirror, now),
                                 mirror["verdict"] or "-",
                                 "-" if latency is None else f"{latency * 1000:.0f} ms",
                                 _last_probe_text(mirror["last_probe"])])
                lines.extend(_columns(rows, "  "))
    lines.extend(integrity_lines(status.get("integrity", []), now))
    quiet = [r for r in status["repos"] if not r["trees"]]
    if quiet:
        lines.append("")
        lines.append(f"No traffic yet: {', '.join(r['name'] for r in quiet)}")
        # A source that failed before any list arrived leaves no tree: say so here.
        for repo in quiet:
            source = repo["source_host"]
            if source is not None and (source["health"] != HEALTHY or source["last_probe"]):
                lines.append(f"  {repo['name']}: its {repo['kind']} host {source['host']} is "
                             f"{_health_text(source, now)}; last answer "
                             f"{_last_probe_text(source['last_probe'])}")
    if "fetches" in status:
        lines.extend(fetch_lines(status["fetches"], human_bytes))
    return "\n".join(lines) + "\n"
