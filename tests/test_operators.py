"""Every operator command finds the running proxy: status, check and purge with serve's --dir or
with the file serve was started from (a real `serve`, its Squid and helpers), the serve record
in serve.lock, and a purge that creates no memo file, even as root.

Fails (never skips) with CI=true when squid or the RPM tools are missing.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Dict

import pytest
import yaml
from test_serve import write_repos

from lab.helper import helper_command
from lab.httpclient import http_get
from lab.mirrors import MirrorServer, free_port
from lab.rpmrepo import PACKAGES_URL, REPO, TEMPLATE_PATH
from lab.serve import ServeProcess
from lab.squid import WorldReadableDir
from squid_helper.config.files import parse_config
from squid_helper.facts.lifetimes import Lifetimes
from squid_helper.facts.memo import Memo
from squid_helper.ops.purge import local_memo_refusal, memo_for_purge
from squid_helper.ops.running import (
    DEFAULT_CONFIG,
    PRIVATE_HEADER,
    ServeDirectory,
    ServeRecord,
    TargetError,
    choose_target,
    private_config_source,
    running_serves,
)
from squid_helper.ops.serve import DirectoryLock
from squid_helper.resolve.urls import map_url

from conftest import require

RPM = "alpha-1.0-1.noarch.rpm"


def command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*helper_command(), *args], capture_output=True, text=True,
                          timeout=120)


def status_json(*args: str) -> Dict:
    result = command("status", "--json", *args)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result
    return json.loads(result.stdout)


def test_status_check_and_purge_find_the_running_serve(rpm_snapshots):
    """The issue as a new admin met it: status with the file given to serve said "no traffic
    yet", check judged paths serve never uses, purge missed serve's memo."""
    require("squid", "runuser")
    mirror = MirrorServer(rpm_snapshots["new"]).start()
    try:
        with WorldReadableDir("squid-helper-operators-") as world:
            config = write_repos(world, {REPO: {"mirrors": [mirror.url + TEMPLATE_PATH]}})
            directory = world / "serve"
            with ServeProcess(config, directory, free_port(), free_port()) as serve:
                url = PACKAGES_URL + RPM
                assert http_get("127.0.0.1", serve.port, url)[0] == 200
                assert http_get("127.0.0.1", serve.port, url)[0] == 200
                proxy = f"127.0.0.1:{serve.port}"

                # --config with the file serve was started from: serve's copy, memo and port.
                given = command("status", "--json", "--config", str(config))
                assert given.returncode == 0, given
                assert f"using its private copy {directory / 'repos.yaml'}" in given.stderr
                document = json.loads(given.stdout)
                assert document["config"] == str(directory / "repos.yaml")
                assert document["memo"]["directory"] == str(directory / "memo")
                assert document["memo"]["state"] == "ok", document["memo"]
                assert document["squid"]["proxy"] == proxy and document["squid"]["reachable"]

                # --dir: the same, and status's own reads of the cache manager do not count.
                first = status_json("--dir", str(directory))["squid"]
                assert first["hits"] >= 1 and first["proxy"] == proxy, first
                again = status_json("--dir", str(directory))["squid"]
                assert (again["requests"], again["hits"], again["hit_ratio"]) == (
                    first["requests"], first["hits"], first["hit_ratio"]), (first, again)

                # check judges what serve uses (run as root: with Squid's user's eyes).
                checked = command("check", "--config", str(config))
                assert checked.returncode == 0, checked
                assert str(directory / "memo") in checked.stdout, checked.stdout
                assert "/var/cache/squid-helper" not in checked.stdout, checked.stdout
                # An edit not reloaded yet is what check judges, with serve's paths.
                data = yaml.safe_load(config.read_text())
                data["repos"]["later"] = {"mirrors": [mirror.url + TEMPLATE_PATH]}
                config.write_text(yaml.safe_dump(data))
                edited = command("check", "--dir", str(directory))
                assert edited.returncode == 0, edited
                assert f"{config} (as serve on {directory} uses it): OK" in edited.stdout
                assert "    later: mirrors" in edited.stdout and \
                    str(directory / "memo") in edited.stdout, edited.stdout

                # purge by --dir: Squid's copy and serve's memo entry, no other memo.
                purged = command("purge", "--dir", str(directory), url)
                assert purged.returncode == 0, purged
                assert "purged from Squid" in purged.stdout, purged.stdout
                assert "memo: 1 entry dropped" in purged.stdout, purged.stdout
                assert "warning" not in purged.stderr, purged.stderr
                # Another file's memo: the hint names this serve (the one at --proxy), not
                # whichever helpers run elsewhere on the host.
                other = world / "other.yaml"
                other.write_text(yaml.safe_dump({
                    "virtual_hosts": ["repoproxy"], "cache_dir": str(world / "other-memo"),
                    "repos": {REPO: {"mirrors": [mirror.url + TEMPLATE_PATH]}}}))
                stray = command("purge", "--config", str(other), "--proxy", proxy, url)
                assert stray.returncode == 1, stray
                assert f"run it again with --dir {directory} --proxy {proxy}" in stray.stderr, \
                    stray.stderr
            # serve gone: --dir still names its files, and says nothing runs there.
            after = command("status", "--no-squid", "--dir", str(directory))
            assert after.returncode == 0 and "no serve is running" in after.stderr, after
    finally:
        mirror.stop()


def test_a_directory_without_serves_copy_is_refused(tmp_path):
    result = command("status", "--dir", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result
    assert f"--dir {tmp_path}: there is no repos.yaml" in result.stderr, result.stderr
    write_repos(tmp_path, {REPO: {"mirrors": ["http://127.0.0.1:9/pub/"]}})
    result = command("check", "--dir", str(tmp_path))
    assert result.returncode == 2 and "was not written by serve" in result.stderr, result


# -- serve's record and the choice of a config -----------------------------------------------------
def test_serve_record_in_the_lock_file_is_found_while_held(tmp_path):
    record = ServeRecord(pid=os.getpid(), port=3129, accel_port=5001, listen="127.0.0.1",
                         source="/etc/squid-helper/repos.yaml")
    assert ServeRecord.from_text(record.to_text()) == record
    assert ServeRecord.from_text("pid 12, ports 1 and 2 on *") is None  # an older serve's
    lock = DirectoryLock(tmp_path)
    lock.acquire(record)
    try:
        (found,) = running_serves([str(tmp_path)])
        assert (found.directory, found.record, found.has_copy) == (str(tmp_path), record, False)
    finally:
        lock.release()
    assert running_serves([str(tmp_path)]) == []  # the file stays; nobody holds it


def test_the_config_a_command_uses():
    source = "/etc/squid-helper/repos.yaml"
    serve = ServeDirectory("/srv/a", True, ServeRecord(1, 3128, 5000, "0.0.0.0", source),
                           True, source)
    # The file serve started from means serve's copy; another file is itself.
    target = choose_target(None, source, [serve])
    assert target.config == "/srv/a/repos.yaml" and target.serve_dir == "/srv/a"
    assert "started from" in target.note
    assert choose_target(None, "/elsewhere.yaml", [serve]).config == "/elsewhere.yaml"
    # Nothing given: the running serve, else the default config.
    assert choose_target(None, None, [serve]).config == "/srv/a/repos.yaml"
    assert choose_target(None, None, []).config == DEFAULT_CONFIG
    # --dir: its copy, running or not (then said).
    assert choose_target(serve, None, []).note is None
    stopped = ServeDirectory("/srv/a", False, None, True, source)
    assert "no serve is running" in choose_target(stopped, None, []).note
    with pytest.raises(TargetError, match="there is no repos.yaml"):
        choose_target(ServeDirectory("/srv/none", False), None, [])
    with pytest.raises(TargetError, match="not written by serve"):
        choose_target(ServeDirectory("/srv/b", False, None, True, None), None, [])
    # An older serve's record has no source: the copy's first line names it.
    unnamed = ServeDirectory("/srv/a", True, None, True, source)
    assert choose_target(None, source, [unnamed]).config == "/srv/a/repos.yaml"


def test_the_copys_first_line_names_its_source(tmp_path):
    copy = tmp_path / "repos.yaml"
    copy.write_text(f"{PRIVATE_HEADER}/etc/r.yaml; edit that file, not this one\nrepos: {{}}\n")
    assert private_config_source(str(copy)) == "/etc/r.yaml"
    copy.write_text("repos: {}\n")
    assert private_config_source(str(copy)) is None


# -- purge never creates memo files ------------------------------------------------------------
def test_when_purge_leaves_the_memo_alone():
    assert "not created" in local_memo_refusal("/m", False, None, 0, "proxy")
    assert "belongs to root" in local_memo_refusal("/m", True, "root", 0, "proxy")
    assert local_memo_refusal("/m", True, "proxy", 0, "proxy") is None
    assert local_memo_refusal("/m", True, "alice", 1000, "proxy") is None  # not root: its own


def test_purge_as_root_creates_no_memo(tmp_path):
    require(root=True)
    memo = tmp_path / "memo"
    config = tmp_path / "repos.yaml"
    config.write_text(yaml.safe_dump({"virtual_hosts": ["repoproxy"], "cache_dir": str(memo),
                                      "repos": {REPO: {"mirrors": ["http://127.0.0.1:9/"]}}}))
    dead = f"127.0.0.1:{free_port()}"
    result = command("purge", "--config", str(config), "--proxy", dead, PACKAGES_URL + RPM)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result
    assert f"no memo at {memo} yet" in result.stdout, result.stdout
    assert not memo.exists()
    memo.mkdir()  # root's, as `mkdir` by hand leaves it: not the helpers' memo
    result = command("purge", "--config", str(config), "--proxy", dead, PACKAGES_URL + RPM)
    assert "not created" in result.stdout and list(memo.iterdir()) == [], result.stdout


def test_purge_forgets_in_the_fleets_redis_without_a_local_memo(tmp_path, redis_server):
    config = parse_config(yaml.safe_dump({
        "virtual_hosts": ["repoproxy"], "cache_dir": str(tmp_path / "memo"),
        "memo": redis_server.url, "repos": {REPO: {"mirrors": ["http://127.0.0.1:9/"]}}}))
    mapped = map_url(PACKAGES_URL + RPM, {}, config)
    answer, _miss = Lifetimes(config).purged(mapped)
    writer = Memo(str(tmp_path / "helpers"), shared=redis_server.url)
    try:
        assert writer.put(answer, {"url": "http://m/" + RPM})
        memo, untouched = memo_for_purge(config)
        assert memo is not None and untouched is None
        try:
            assert memo.forget(answer) == 1
        finally:
            memo.close()
        assert writer.get(answer.key) is None
    finally:
        writer.close()
    assert not (tmp_path / "memo").exists()
