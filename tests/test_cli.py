"""The operator-facing commands: check, resolve."""

from __future__ import annotations

import dataclasses
import os
import pwd
import subprocess

from lab.helper import helper_command, write_config
from lab.mirrors import MirrorServer
from squid_helper.config import load_config
from squid_helper.serve import write_private_config

from conftest import require


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*helper_command(), *args], capture_output=True, text=True, timeout=60)


def test_check_lists_repos_and_sources(tmp_path):
    config = write_config(tmp_path, {"a": {"mirrors": ["http://127.0.0.1:9/a/{releasever}/"]},
                                     "b": {"mirrorurl": "http://127.0.0.1:9/list"}})
    result = run("check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "a: mirrors" in result.stdout and "b: mirrorlist" in result.stdout
    assert "http://127.0.0.1:9/a/{releasever}/" in result.stdout


def test_check_reports_a_bad_config_without_a_traceback(tmp_path):
    config = tmp_path / "repos.yaml"
    config.write_text("repos:\n  fedora:\n    mirrorlist: http://m/{basearch}\n")
    result = run("check", "--config", str(config))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{config}:3: repos.fedora.mirrorlist:" in result.stderr
    assert "only {releasever} and {arch}" in result.stderr


def test_check_on_a_missing_file(tmp_path):
    result = run("check", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "cannot read the config file" in result.stderr


def test_resolve_explains_the_choice(tmp_path, fleet):
    good, error = fleet["good"], fleet["error"]
    config = write_config(tmp_path, {"test": {"mirrors": [fleet["dead"], error.url, good.url]}})
    url = "http://repoproxy/test/9/x86_64/Packages/new-2.0.rpm"
    result = run("resolve", "--config", str(config), url)
    assert result.returncode == 0, result.stderr
    assert f"answer: {good.url}Packages/new-2.0.rpm [verified" in result.stdout
    assert "connection failed" in result.stdout  # the dead mirror, and how it failed
    assert "GET 500" in result.stdout  # the broken one, seen by the survey
    missing = run("resolve", "--config", str(config),
                  "http://repoproxy/test/9/x86_64/Packages/none.rpm")
    assert missing.returncode == 2 and "answer: ERR" in missing.stdout
    outside = run("resolve", "--config", str(config), "http://example.org/x")
    assert outside.returncode == 1 and "not a repo URL" in outside.stdout


def test_resolve_as_root_leaves_the_memo_writable_for_squids_user(tmp_path, snapshots):
    require("runuser")  # root, and Squid's user: a failure in CI, never a silent skip
    proxy = pwd.getpwnam("proxy")
    with MirrorServer(snapshots["new"]) as good:
        config = write_config(tmp_path, {"test": {"mirrors": [good.url]}})
        memo = tmp_path / "memo"
        memo.mkdir()
        os.chown(memo, proxy.pw_uid, proxy.pw_gid)
        result = run("resolve", "--config", str(config),
                     "http://repoproxy/test/9/x86_64/Packages/common-1.0.rpm")
        assert result.returncode == 0, result.stdout + result.stderr
    owners = {entry.name: entry.stat().st_uid for entry in os.scandir(memo)}
    assert "cache.db" in owners
    assert set(owners.values()) == {proxy.pw_uid}, owners


ORIGINAL_INI = """\
# the original repoproxy's config, as its documentation wrote it
[myrepo]
mirrorurl=http://wherever.com/mirrorlist?repo=myrepo&ver={releasever}&arch={arch}

[koji]
baseurl=http://kojipkgs.example/repos/f{releasever}-build/latest/{arch}
  http://mirror.example/koji/%7Ef{releasever}/{arch}/
"""


def test_check_prints_the_equivalent_repos_yaml_of_an_ini_config(tmp_path):
    old = tmp_path / "old.ini"
    old.write_text(ORIGINAL_INI)
    result = run("check", "--config", str(old))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"# {old} (the original repoproxy's INI form): OK\n")
    assert f"#   squid-helper check --config {old} > repos.yaml" in result.stdout
    # The whole output is the repos.yaml to move to: it loads to the same configuration.
    moved = tmp_path / "repos.yaml"
    moved.write_text(result.stdout)
    before, after = load_config(str(old)), load_config(str(moved))
    assert dataclasses.replace(before, path="") == dataclasses.replace(after, path="")
    assert after.repos["myrepo"].kind == "mirrorlist" and len(after.repos["koji"].templates) == 2
    again = run("check", "--config", str(moved))
    assert again.returncode == 0 and again.stdout.startswith(f"{moved}: OK\n"), again


def test_check_reports_an_ini_error_with_file_line_section_and_key(tmp_path):
    old = tmp_path / "old.ini"
    old.write_text(ORIGINAL_INI + "[myrepo]\nbaseurl=http://m/\n")
    result = run("check", "--config", str(old))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{old}:8: [myrepo]: the section appears twice (first at line 2)" in result.stderr


def test_serve_runs_an_ini_config_as_its_equivalent_yaml(tmp_path):
    old = tmp_path / "old.ini"
    old.write_text(ORIGINAL_INI)
    (tmp_path / "serve").mkdir()
    private = write_private_config(str(old), tmp_path / "serve", 5123)
    config = load_config(str(private))
    assert config.accel_ports == frozenset({5123})
    assert config.cache_dir == str(tmp_path / "serve" / "memo")
    assert config.repos == load_config(str(old)).repos
