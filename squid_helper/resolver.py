"""Resolve a repo path to a verified mirror URL: memo, mirror sources, freshness, probes.

This is where the pure pieces (urls, sources, selection) meet the I/O ones (probe, memo).
The rules, in order:
  1. a fresh memoised answer is reused, whichever helper process found it;
  2. otherwise one process (single-flight, across processes) probes the mirrors, freshest
     first, skipping those marked unhealthy, and publishes the answer for everybody;
  3. when nothing can be verified, the last-known answer is reused so that Squid can serve
     the copy it holds; only without one does the client get an error.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from .config import Config
from .memo import Memo
from .probe import FAILED, FOUND, MISSING, Prober, ProbeResult
from .selection import (
    FRESH,
    Observation,
    digest_usable,
    drop_unhealthy,
    observe,
    rank_mirrors,
    verdicts,
)
from .sources import MirrorSet, SourceError, parse_metalink, parse_mirrorlist
from .urls import REPOMD_PATH, RepoPath, expand_template, join_under_base

log = logging.getLogger("squid_helper.resolver")

VERIFIED, MEMO, LAST_KNOWN, NOT_FOUND, UNAVAILABLE = (
    "verified", "memo", "last-known", "not-found", "unavailable")
# base URL -> "repo/releasever/arch" for every mirror a list ever named; the store_id helper
# uses it to give every mirror's copy of a path the same cache key.
BASE_INDEX_KEY = "base-index"
_WAIT_STEP = 0.02
_MAX_PARALLEL_PROBES = 4


@dataclass
class Resolution:
    url: Optional[str]
    status: str  # VERIFIED, MEMO, LAST_KNOWN, NOT_FOUND or UNAVAILABLE
    reason: str
    trace: List[str] = field(default_factory=list)
    elapsed: float = 0.0
    fresh_for: float = 0.0  # seconds this memoised answer stays fresh


def _host(url: str) -> str:
    return urlsplit(url).netloc


class Resolver:
    def __init__(self, config: Config, memo: Memo, prober: Optional[Prober] = None):
        self.config = config
        self.memo = memo
        self.prober = prober or Prober(config.probe_timeout)
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="probe")
        self._inflight: Dict[str, Future] = {}
        self._inflight_lock = threading.Lock()
        # Long enough to cover a survey plus a probe round, so a live holder is never
        # overtaken; short enough that a crashed holder blocks others only briefly.
        self.lock_hold = config.probe_timeout * 4 + 2

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.prober.close()

    # -- memo access --------------------------------------------------------------------------
    def _ttl(self, request: RepoPath) -> float:
        return self.config.metadata_ttl if request.is_metadata else self.config.path_ttl

    def _current(self, key: str, is_fresh: Callable[[dict], bool], front: bool) -> Optional[dict]:
        entry = (self.memo.get_front if front else self.memo.get)(key)
        if front and entry is not None and not is_fresh(entry):
            entry = self.memo.refresh(key)  # our copy may predate another process's answer
        return entry if entry is not None and is_fresh(entry) else None

    def cached(self, request: RepoPath, front: bool = True) -> Optional[Resolution]:
        """The memoised answer if it is still fresh; never probes (the per-request hot path).
        front=False reads the shared memo only, for waiters that need another's fresh answer."""
        now = time.time()
        ttl = self._ttl(request)
        answer = self._current(f"path:{request.key}", lambda e: now - e["at"] < ttl, front)
        if answer:
            return Resolution(answer["url"], MEMO, "memoised answer",
                              fresh_for=ttl - (now - answer["at"]))
        negative_ttl = self.config.negative_ttl
        miss = self._current(f"miss:{request.key}", lambda e: now - e["at"] < negative_ttl, front)
        if miss:
            return Resolution(None, NOT_FOUND, miss["reason"],
                              fresh_for=negative_ttl - (now - miss["at"]))
        return None

    def forget(self, request: RepoPath) -> int:
        """Drop what the memo knows about one path (used by purge), in every process."""
        dropped = sum(self.memo.delete(f"{kind}:{request.key}") for kind in ("path", "miss"))
        self.memo.bump_generation()
        return dropped

    def _unhealthy(self, bases: List[str]) -> List[str]:
        return [b for b in bases if self.memo.get(f"health:{_host(b)}") is not None]

    def _record_failure(self, result: ProbeResult) -> None:
        self.memo.set(f"health:{_host(result.url)}",
                      {"detail": result.detail, "at": time.time()},
                      expire=self.config.unhealthy_ttl)
        log.warning("mirror %s marked unhealthy for %gs: %s", _host(result.url),
                    self.config.unhealthy_ttl, result.detail)

    # -- single flight ------------------------------------------------------------------------
    def _single_flight(self, name: str, compute, ready):
        """Run compute() once across threads and processes; others wait for ready() to see
        the published answer. A waiter that outlives the lock computes by itself."""
        with self._inflight_lock:
            running = self._inflight.get(name)
            if running is None:
                running = Future()
                self._inflight[name] = running
                owner = True
            else:
                owner = False
        if not owner:
            return running.result()
        try:
            result = self._across_processes(name, compute, ready)
            running.set_result(result)
            return result
        except BaseException as exc:
            running.set_exception(exc)
            raise
        finally:
            with self._inflight_lock:
                self._inflight.pop(name, None)

    def _across_processes(self, name: str, compute, ready):
        deadline = time.monotonic() + self.lock_hold
        while not self.memo.try_lock(name, self.lock_hold):
            time.sleep(_WAIT_STEP)
            answer = ready()
            if answer is not None:
                return answer
            if time.monotonic() > deadline:
                break  # the holder died or hangs: answer without it
        try:
            answer = ready()  # published while we were queueing for the lock
            return answer if answer is not None else compute()
        finally:
            self.memo.unlock(name)

    # -- mirror sources -----------------------------------------------------------------------
    def mirror_set(self, request: RepoPath, trace: List[str],
                   force: bool = False) -> Optional[MirrorSet]:
        """The repo's mirrors for this releasever/arch, memoised; stale when a refetch fails."""
        repo = self.config.repos[request.repo]
        if repo.kind == "mirrors":
            return MirrorSet(tuple(expand_template(t, request.releasever, request.arch)
                                   for t in repo.templates))
        key = f"mirrors:{request.triple}"
        entry = self.memo.get(key)
        fresh = entry and time.time() - entry["at"] < self.config.mirrorlist_ttl
        if fresh and not force:
            return entry["set"]
        if entry and self.memo.get(f"mirrors-retry:{request.triple}") and not force:
            return entry["set"]  # the source failed a moment ago; do not hammer it

        def fetch() -> Optional[MirrorSet]:
            url = expand_template(repo.templates[0], request.releasever, request.arch)
            result = self.prober.fetch(url)
            problem = None
            if result.outcome == FOUND:
                try:
                    mirrors = (parse_metalink(result.content) if repo.kind == "metalink"
                               else parse_mirrorlist(result.content.decode("utf-8", "replace")))
                    self.memo.set(key, {"set": mirrors, "at": time.time()},
                                  expire=self.config.last_known_ttl)
                    self.memo.add_to_dict(BASE_INDEX_KEY,
                                          dict.fromkeys(mirrors.bases, request.triple),
                                          expire=self.config.last_known_ttl)
                    trace.append(f"{repo.kind} {url}: {len(mirrors.bases)} mirrors")
                    return mirrors
                except SourceError as exc:
                    problem = str(exc)
            else:
                problem = result.detail
            self.memo.set(f"mirrors-retry:{request.triple}", True,
                          expire=min(self.config.unhealthy_ttl, self.config.mirrorlist_ttl))
            log.warning("%s %s unusable: %s%s", repo.kind, url, problem,
                        "; keeping the last good list" if entry else "")
            trace.append(f"{repo.kind} {url}: {problem}")
            return entry["set"] if entry else None

        def published() -> Optional[MirrorSet]:
            latest = self.memo.get(key)
            if latest and (entry is None or latest["at"] > entry["at"]):
                return latest["set"]
            return None

        return self._single_flight(key, fetch, published)

    # -- freshness survey ---------------------------------------------------------------------
    def _survey(self, bases: List[str]) -> Tuple[Dict[str, ProbeResult], List[str]]:
        healthy = drop_unhealthy(bases, self._unhealthy(bases))[: self.config.survey_limit]
        futures = {b: self._pool.submit(self.prober.fetch, join_under_base(b, REPOMD_PATH))
                   for b in healthy}
        results = {b: f.result() for b, f in futures.items()}
        for result in results.values():
            if result.outcome == FAILED:
                self._record_failure(result)
        return results, healthy

    def ranking(self, request: RepoPath, mirrors: MirrorSet, trace: List[str],
                force: bool = False) -> dict:
        """Mirrors in probing order for this repo, from a (memoised) repomd.xml survey."""
        key = f"survey:{request.triple}"
        entry = self.memo.get(key)
        if (entry and not force and entry["bases"] == mirrors.bases
                and time.time() - entry["at"] < self.config.metadata_ttl):
            return entry

        def survey() -> dict:
            nonlocal mirrors
            results, _ = self._survey(list(mirrors.bases))
            observations = self._observations(results, mirrors)
            use_digest = mirrors.expected is not None
            if use_digest and not digest_usable(observations) and any(
                    o.outcome == "ok" for o in observations.values()):
                # No mirror matches the metalink: our copy of it may predate the mirrors.
                refreshed = self.mirror_set(request, trace, force=True)
                if refreshed is not None and refreshed.expected != mirrors.expected:
                    mirrors = refreshed
                    observations = self._observations(results, mirrors)
                if not digest_usable(observations):
                    trace.append("no mirror matches the metalink's repomd.xml; ranking by age")
                    use_digest = False
            verdict = verdicts(mirrors.bases, observations, use_digest)
            for base in mirrors.bases:
                result = results.get(base)
                trace.append(f"survey {base}: {verdict[base] or 'excluded'}"
                             + (f" ({result.detail})" if result else ""))
            published = {
                "bases": mirrors.bases,
                "ranked": rank_mirrors(mirrors.bases, verdict),
                "verdicts": verdict,
                # Bases that just served the freshest repomd.xml: verified for that path.
                "repomd_ok": [b for b in mirrors.bases if verdict[b] == FRESH],
                "at": time.time(),
            }
            self.memo.set(key, published, expire=self.config.last_known_ttl)
            return published

        def published() -> Optional[dict]:
            latest = self.memo.get(key)
            if latest and (entry is None or latest["at"] > entry["at"]):
                return latest
            return None

        return self._single_flight(key, survey, published)

    @staticmethod
    def _observations(results: Dict[str, ProbeResult],
                      mirrors: MirrorSet) -> Dict[str, Observation]:
        observations = {}
        for base, result in results.items():
            if result.outcome == FOUND:
                observations[base] = observe(result.content or b"", mirrors)
            else:
                observations[base] = Observation("failed" if result.outcome == FAILED
                                                 else "missing")
        return observations

    # -- probing ------------------------------------------------------------------------------
    def _probe_task(self, url: str) -> ProbeResult:
        result = self.prober.probe(url)
        if result.outcome == FAILED:
            self._record_failure(result)
        return result

    def _probe_in_order(self, candidates: List[str], request: RepoPath, trace: List[str],
                        preverified: List[str]) -> Tuple[Optional[str], Dict[str, ProbeResult]]:
        """First mirror, in candidate order, that answers for the path. A slow mirror gets
        company after hedge_delay: the next one is probed in parallel, but an earlier mirror's
        good answer still wins over a later one's."""
        urls = [join_under_base(b, request.path) for b in candidates]
        results: Dict[int, ProbeResult] = {}
        running: Dict[Future, int] = {}
        started = 0
        last_start = 0.0
        while True:
            first_open = next((i for i in range(len(urls))
                               if i not in results or results[i].outcome == FOUND), None)
            if first_open is None:
                break
            if first_open in results:  # earlier mirrors all failed or lacked it: this one wins
                return candidates[first_open], {candidates[i]: r for i, r in results.items()}
            if candidates[first_open] in preverified:
                trace.append(f"{candidates[first_open]}: verified by the repomd.xml survey")
                return candidates[first_open], {candidates[i]: r for i, r in results.items()}
            now = time.monotonic()
            may_hedge = (now - last_start >= self.config.hedge_delay
                         and len(running) < _MAX_PARALLEL_PROBES)
            if started < len(urls) and (started <= first_open or may_hedge):
                running[self._pool.submit(self._probe_task, urls[started])] = started
                started += 1
                last_start = now
                continue
            timeout = None
            if started < len(urls) and len(running) < _MAX_PARALLEL_PROBES:
                timeout = max(0.0, self.config.hedge_delay - (now - last_start))
            done, _ = wait(list(running), timeout=timeout, return_when=FIRST_COMPLETED)
            for future in done:
                index = running.pop(future)
                results[index] = future.result()
        return None, {candidates[i]: r for i, r in results.items()}

    # -- the whole resolution -----------------------------------------------------------------
    def resolve(self, request: RepoPath) -> Resolution:
        """Answer for one path; probes only when no fresh answer is memoised."""
        started = time.monotonic()
        answer = self.cached(request)
        if answer is None:
            answer = self._single_flight(f"path:{request.key}",
                                         lambda: self._verify(request),
                                         lambda: self.cached(request, front=False))
        answer.elapsed = time.monotonic() - started
        return answer

    def _verify(self, request: RepoPath) -> Resolution:
        trace: List[str] = []
        mirrors = self.mirror_set(request, trace)
        if mirrors is None:
            return self._fallback(request, trace, "no mirror list is available "
                                  f"for {request.triple}")
        survey = self.ranking(request, mirrors, trace, force=request.is_metadata)
        ranked = survey["ranked"]
        unhealthy = self._unhealthy(ranked)
        candidates = drop_unhealthy(ranked, unhealthy)
        if unhealthy:
            trace.append("skipped unhealthy: " + ", ".join(unhealthy))
        preverified = survey["repomd_ok"] if request.is_metadata else []
        base, results = self._probe_in_order(candidates, request, trace, preverified)
        for probed, result in results.items():
            trace.append(f"{probed}: {result.detail} ({result.elapsed:.2f}s)")
        if base is not None:
            url = join_under_base(base, request.path)
            self.memo.set(f"path:{request.key}", {"url": url, "base": base, "at": time.time()},
                          expire=self.config.last_known_ttl)
            self.memo.delete(f"miss:{request.key}")
            return Resolution(url, VERIFIED, f"verified on {base}", trace)
        failures = [r for r in results.values() if r.outcome == FAILED]
        if results and not failures and all(r.outcome == MISSING for r in results.values()):
            reason = f"no mirror has {request.path} ({len(results)} answered 404)"
            self.memo.set(f"miss:{request.key}", {"reason": reason, "at": time.time()},
                          expire=max(self.config.negative_ttl, 1))
            return Resolution(None, NOT_FOUND, reason, trace)
        if not candidates:
            why = f"all {len(ranked)} usable mirrors are marked unhealthy" if ranked else \
                "no mirror is usable (none has current metadata)"
        else:
            why = f"no mirror answered for {request.path} ({len(failures)} failed)"
        return self._fallback(request, trace, why)

    def _fallback(self, request: RepoPath, trace: List[str], why: str) -> Resolution:
        entry = self.memo.get(f"path:{request.key}")
        if entry:
            trace.append(f"{why}; using the last-known answer")
            return Resolution(entry["url"], LAST_KNOWN, f"{why}; last-known mirror", trace)
        return Resolution(None, UNAVAILABLE, why, trace)
