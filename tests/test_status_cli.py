"""`squid-helper status` and `metrics` as commands, without Squid: a corrupt memo, no Squid, JSON
and the exposition, a bad config, a reader that stops early (the pure parts:
tests/unit/test_status.py)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import diskcache
import pytest
from prometheus_client.parser import text_string_to_metric_families
from unit.test_status import populate, status_config

from lab.helper import helper_command
from lab.mirrors import free_port
from squid_helper.ops.squidstats import SquidUnreachable, fetch_counters
from squid_helper.ops.status import UNREADABLE, read_memo


@pytest.fixture
def config(tmp_path: Path):
    return status_config(tmp_path)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*helper_command(), *args], capture_output=True, text=True,
                          timeout=60)


def test_a_corrupt_memo_is_reported_not_raised(config):
    os.makedirs(config.cache_dir)
    Path(config.cache_dir, "cache.db").write_bytes(b"this is not a database" * 100)
    facts = read_memo(config)
    assert facts.state == UNREADABLE and "cache.db" in facts.problem
    result = run("status", "--config", config.path, "--no-squid")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert "Memo: unreadable" in result.stdout


def test_squid_not_running_is_a_clear_message():
    with pytest.raises(SquidUnreachable, match=r"^Squid at 127\.0\.0\.1:\d+: connection "
                                               r"failed \(refused\); is it running\?"):
        fetch_counters(f"127.0.0.1:{free_port()}", timeout=2)


def test_status_json_and_metrics_commands(config):
    populate(config)
    result = run("status", "--config", config.path, "--json", "--proxy",
                 f"127.0.0.1:{free_port()}")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["schema"] == 1 and status["squid"]["reachable"] is False
    assert "connection failed (refused)" in status["squid"]["problem"]
    assert {r["name"]: len(r["trees"]) for r in status["repos"]} == \
        {"listed": 1, "static": 1, "quiet": 0}
    metrics = run("metrics", "--config", config.path, "--no-squid")
    assert metrics.returncode == 0, metrics.stderr
    names = {f.name for f in text_string_to_metric_families(metrics.stdout)}
    assert {"squid_helper_memo_answers", "squid_helper_mirror_health"} <= names
    assert "squid_helper_squid_up" not in names


def test_status_on_a_bad_config_says_so(tmp_path):
    config = tmp_path / "repos.yaml"
    config.write_text("repos: [\n")
    for command in ("status", "metrics"):
        result = run(command, "--config", str(config))
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "configuration error" in result.stderr


def test_status_piped_to_head_exits_quietly(config):
    """A table far longer than a pipe holds, cut short by its reader."""
    cache = diskcache.Cache(config.cache_dir)
    for index in range(3000):
        cache.set(f"path:static/{index}/x86_64/Packages/a.rpm", 1)
    cache.close()
    for flag in ("", "--json"):
        result = subprocess.run(
            ["bash", "-c", f"{helper_command()[0]} status --config {config.path} --no-squid "
             f"{flag} | head -n 2; exit ${{PIPESTATUS[0]}}"],
            capture_output=True, text=True, timeout=60)
        assert len(result.stdout.splitlines()) == 2
        assert result.stderr == "", result.stderr
        assert result.returncode == 141  # it did write into the closed pipe, as SIGPIPE would
