"""`squid-helper metrics`: the status as a Prometheus text exposition.

Made from the same status document as `status --json` (status.py), by a prometheus_client
collector, so that every scrape (or every run, for node_exporter's textfile collector) reads
the memo and Squid's counters afresh. prometheus_client gives the format (escaping, TYPE and
HELP lines, `_total` for counters) and the HTTP server for --listen.
"""

from __future__ import annotations

import signal
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .fetchstats import fetch_metric_families
from .status import HEALTH_STATES, UNREADABLE

TREE = ["repo", "releasever", "arch"]
OUTCOME_OK = ("found", "missing", "unchanged")  # the mirror answered (a 404 is an answer)


def metric_families(status: Dict[str, Any]) -> List[Metric]:
    """The metrics of one status document (pure)."""
    memo = GaugeMetricFamily("squid_helper_memo_readable",
                             "1 when the helpers' memo could be read (0: unreadable; a memo "
                             "not created yet reads as empty)")
    memo.add_metric([], 0 if status["memo"]["state"] == UNREADABLE else 1)
    answers = GaugeMetricFamily("squid_helper_memo_answers",
                                "Path answers memoised for a repo tree (last-known included)",
                                labels=TREE)
    not_found = GaugeMetricFamily("squid_helper_memo_not_found",
                                  "Memoised answers that no mirror has a path", labels=TREE)
    list_age = GaugeMetricFamily("squid_helper_mirror_list_age_seconds",
                                 "Seconds since the repo tree's mirrorlist or metalink was "
                                 "fetched", labels=TREE)
    source_failing = GaugeMetricFamily("squid_helper_mirror_list_failing",
                                       "1 while the mirror list source is resting after a "
                                       "failure (the last good list is used)", labels=TREE)
    verdict = GaugeMetricFamily("squid_helper_mirror_fresh",
                                "1 when the latest survey found the mirror serving the "
                                "current repodata", labels=TREE + ["mirror"])
    health = GaugeMetricFamily("squid_helper_mirror_health",
                               "1 for the mirror host's current state (healthy, unhealthy, "
                               "probation, backoff), 0 for the others",
                               labels=["host", "state"])
    until = GaugeMetricFamily("squid_helper_mirror_unhealthy_until_timestamp_seconds",
                              "When an unhealthy or backing-off host is used again",
                              labels=["host"])
    latency = GaugeMetricFamily("squid_helper_mirror_latency_seconds",
                                "Moving average of the host's answer time", labels=["host"])
    probe_at = GaugeMetricFamily("squid_helper_mirror_last_probe_timestamp_seconds",
                                 "When the host last answered or failed a helper's request",
                                 labels=["host"])
    probe_ok = GaugeMetricFamily("squid_helper_mirror_last_probe_success",
                                 "1 when the host's last answer was an answer (a 404 too), 0 "
                                 "for a failure (refused, timeout, 5xx)", labels=["host"])
    hosts: Dict[str, Dict[str, Any]] = {}
    for repo in status["repos"]:
        for tree in repo["trees"]:
            labels = [repo["name"], tree["releasever"], tree["arch"]]
            answers.add_metric(labels, tree["answers"])
            not_found.add_metric(labels, tree["not_found"])
            source = tree["source"]
            if source["age_seconds"] is not None:
                list_age.add_metric(labels, source["age_seconds"])
            if source["kind"] != "mirrors":
                source_failing.add_metric(labels, 1 if source["problem"] else 0)
            for mirror in tree["mirrors"]:
                if mirror["verdict"] is not None:
                    verdict.add_metric(labels + [mirror["url"]],
                                       1 if mirror["verdict"] == "fresh" else 0)
                hosts.setdefault(mirror["host"], mirror)
    for host, mirror in sorted(hosts.items()):
        for state in HEALTH_STATES:
            health.add_metric([host, state], 1 if mirror["health"] == state else 0)
        if mirror["until"] is not None:
            until.add_metric([host], mirror["until"])
        if mirror["latency_seconds"] is not None:
            latency.add_metric([host], mirror["latency_seconds"])
        probe = mirror["last_probe"]
        if probe is not None:
            probe_at.add_metric([host], probe["at"])
            probe_ok.add_metric([host], 1 if probe["outcome"] in OUTCOME_OK else 0)

    squid = status["squid"]
    families: List[Metric] = [memo, answers, not_found, list_age, source_failing, verdict,
                              health, until, latency, probe_at, probe_ok,
                              integrity_family(status.get("integrity", []))]
    if squid["proxy"] is not None:
        up = GaugeMetricFamily("squid_helper_squid_up",
                               "1 when Squid's cache manager answered", labels=["proxy"])
        up.add_metric([squid["proxy"]], 1 if squid["reachable"] else 0)
        families.append(up)
    if squid["reachable"]:
        counters: Tuple[Tuple[str, str, str], ...] = (
            ("squid_helper_squid_requests", "requests", "Client requests Squid answered "
             "since it started"),
            ("squid_helper_squid_hits", "hits", "Client requests answered from Squid's cache "
             "since it started"),
            ("squid_helper_squid_sent_bytes", "bytes_sent", "Bytes Squid sent to clients "
             "since it started"),
            ("squid_helper_squid_hit_sent_bytes", "hit_bytes_sent", "Bytes Squid sent to "
             "clients from its cache since it started"))
        for name, field, text in counters:
            family = CounterMetricFamily(name, text, labels=["proxy"])
            family.add_metric([squid["proxy"]], squid[field])
            families.append(family)
        if squid["hit_ratio"] is not None:
            ratio = GaugeMetricFamily("squid_helper_squid_hit_ratio",
                                      "Hits per client request since Squid started",
                                      labels=["proxy"])
            ratio.add_metric([squid["proxy"]], squid["hit_ratio"])
            families.append(ratio)
    if "fetches" in status:
        families.extend(fetch_metric_families(status["fetches"]))
    return families


def integrity_family(integrity: List[Dict[str, Any]]) -> Metric:
    """Integrity failures per mirror host (status' integrity[])."""
    family = CounterMetricFamily("squid_helper_mirror_integrity_failures",
                                 "Files from the mirror host whose bytes disagreed with the "
                                 "repo's metadata (purged from Squid)", labels=["host"])
    for entry in integrity:
        family.add_metric([entry["host"]], entry["failures"])
    return family


class StatusCollector:
    """A prometheus_client collector that takes a new status at every collection."""

    def __init__(self, take_status: Callable[[], Dict[str, Any]]):
        self.take_status = take_status

    def describe(self) -> List[Metric]:
        return []  # no I/O when registered; the names come with each collection

    def collect(self) -> Iterator[Metric]:
        yield from metric_families(self.take_status())


def registry_for(take_status: Callable[[], Dict[str, Any]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(take_status))
    return registry


def exposition(status: Dict[str, Any]) -> str:
    """The text exposition (format 0.0.4) of one status document."""
    return generate_latest(registry_for(lambda: status)).decode("utf-8")


# Where --listen PORT (or :PORT) serves: this host only. /metrics names the lab's repos, mirrors
# and their troubles; another address only when --listen names it.
DEFAULT_LISTEN_ADDRESS = "127.0.0.1"


def listen_address(text: str) -> Optional[Tuple[str, int]]:
    """(address, port) of --listen: ADDRESS:PORT, or PORT or :PORT on DEFAULT_LISTEN_ADDRESS;
    None when it is none of these."""
    address, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return (address.strip("[]") or DEFAULT_LISTEN_ADDRESS), int(port)


def serve_metrics(take_status: Callable[[], Dict[str, Any]], address: str, port: int,
                  ready: Optional[Callable[[str], None]] = None) -> None:
    """Serve /metrics on address:port until SIGTERM or SIGINT (OSError: cannot listen)."""
    server, thread = start_http_server(port, addr=address, registry=registry_for(take_status))
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set())
                for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if ready is not None:
            ready(f"http://{address}:{server.server_port}/metrics")
        while not stop.wait(1.0):
            pass
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
