"""What Squid's own fetches showed (the fetch log daemon's facts), for status and metrics.

Pure: the status document's `fetches` section (from the facts status.read_memo read through
the shared memo), its lines in the table and its metrics.

Section (status schema, field `fetches`):

    repos      {repo: {hits, misses, bytes_from_cache, bytes_fetched}}  (every proxy's,
               since the memo last lost them; bytes_from_cache is the bandwidth saved)
    mirrors    {host: {throughput_bytes_per_second (recent moving average, null before a
               download), downloads (measured), failed_fetches, last_failure, last_failure_at}}
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..facts.memo import Stored

TRAFFIC_FIELDS = ("hits", "misses", "bytes_from_cache", "bytes_fetched")


def fetch_section(traffic: Dict[str, Stored], throughput: Dict[str, Stored],
                  failures: Dict[str, Stored]) -> Dict[str, Any]:
    """The status document's `fetches` section (schema above), from the fetch log daemon's
    facts by repo (traffic) and by host (throughput, failures)."""
    traffic, throughput, failures = (
        {name: stored for name, stored in facts.items() if isinstance(stored.value, dict)}
        for facts in (traffic, throughput, failures))
    repos = {repo: {name: int(stored.value.get(name, 0)) for name in TRAFFIC_FIELDS}
             for repo, stored in sorted(traffic.items())}
    mirrors: Dict[str, Dict[str, Any]] = {}
    for host in sorted(set(throughput) | set(failures)):
        speed = throughput.get(host)
        failed = failures.get(host)
        mirrors[host] = {
            "throughput_bytes_per_second": speed.value["rate"] if speed else None,
            "downloads": speed.value["samples"] if speed else 0,
            "failed_fetches": failed.value["count"] if failed else 0,
            "last_failure": failed.value["last"] if failed else None,
            "last_failure_at": failed.value["at"] if failed else None}
    return {"repos": repos, "mirrors": mirrors}


def fetch_lines(section: Dict[str, Any],
                human_bytes: Callable[[Optional[float]], str]) -> List[str]:
    """The section as lines of the status table (none when Squid reported nothing yet)."""
    lines = []
    for repo, counts in section["repos"].items():
        lines.append(f"{repo}: {counts['hits']} hits, {counts['misses']} misses; "
                     f"{human_bytes(counts['bytes_from_cache'])} served from the cache, "
                     f"{human_bytes(counts['bytes_fetched'])} fetched from mirrors")
    for host, mirror in section["mirrors"].items():
        speed = mirror["throughput_bytes_per_second"]
        text = (f"{host}: downloads at {human_bytes(speed)}/s ({mirror['downloads']} measured)"
                if speed is not None else f"{host}: no download measured")
        if mirror["failed_fetches"]:
            text += f"; {mirror['failed_fetches']} failed fetches, last: {mirror['last_failure']}"
        lines.append(text)
    return ["", "Squid's fetches (from its log):", *("  " + line for line in lines)] \
        if lines else []


def fetch_metric_families(section: Dict[str, Any]) -> List[Metric]:
    """The section's metrics (pure)."""
    counters = {name: CounterMetricFamily(f"squid_helper_repo_{name}", text, labels=["repo"])
                for name, text in (
                    ("hits", "Repo requests Squid served from its cache"),
                    ("misses", "Repo requests Squid fetched from a mirror"),
                    ("bytes_from_cache", "Bytes of repo files Squid served from its cache "
                     "(bandwidth saved)"),
                    ("bytes_fetched", "Bytes of repo files Squid fetched from mirrors"))}
    for repo, counts in section["repos"].items():
        for name, family in counters.items():
            family.add_metric([repo], counts[name])
    throughput = GaugeMetricFamily("squid_helper_mirror_download_bytes_per_second",
                                   "Moving average of Squid's download speed from the host",
                                   labels=["host"])
    failed = CounterMetricFamily("squid_helper_mirror_failed_fetches",
                                 "Squid's fetches from the host that failed (5xx, refused, "
                                 "timed out, cut short)", labels=["host"])
    for host, mirror in section["mirrors"].items():
        if mirror["throughput_bytes_per_second"] is not None:
            throughput.add_metric([host], mirror["throughput_bytes_per_second"])
        failed.add_metric([host], mirror["failed_fetches"])
    return [*counters.values(), throughput, failed]
