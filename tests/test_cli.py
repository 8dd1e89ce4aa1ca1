"""The operator-facing commands: check, resolve."""

from __future__ import annotations

import dataclasses
import os
import pwd
import subprocess

from lab.helper import helper_command, write_config
from lab.mirrors import MirrorServer
from lab.squid import WorldReadableDir, chown_proxy
from squid_helper.config.files import load_config
from squid_helper.ops.running import helper_config_of
from squid_helper.ops.serve import write_private_config

from conftest import require


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*helper_command(), *args], capture_output=True, text=True, timeout=60)


def test_check_lists_repos_and_sources(tmp_path):
    config = write_config(tmp_path, {"a": {"mirrors": ["http://127.0.0.1:9/a/{releasever}/"]},
                                     "b": {"mirrorurl": "http://127.0.0.1:9/list"}})
    result = run("check", "--config", str(config), "--squid-user", current_user())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "a: mirrors" in result.stdout and "b: mirrorlist" in result.stdout
    assert "http://127.0.0.1:9/a/{releasever}/" in result.stdout


def current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def test_check_says_what_squids_user_cannot_do_and_how_to_fix_it():
    """Squid runs the helpers as proxy: check, run as root, looks with proxy's eyes (a
    directory under /root, or owned by root, is fine for root and useless to proxy)."""
    require(root=True)
    with WorldReadableDir("squid-helper-check-") as world:
        private = world / "private"
        private.mkdir(mode=0o700)
        config = write_config(world, {"a": {"mirrors": ["http://127.0.0.1:9/a/"]}})
        text = config.read_text().replace(str(world / "memo"), str(private / "memo"))
        config.write_text(text.replace(str(world / "helper.log"), str(private / "helper.log")))
        config.chmod(0o644)
        result = run("check", "--config", str(config))
        assert result.returncode == 1, result.stdout + result.stderr
        problems = [line for line in result.stdout.splitlines() if line.startswith("PROBLEM")]
        assert len(problems) == 2, result.stdout
        assert f"cannot write the memo directory (cache_dir) {private / 'memo'}" in problems[0]
        assert f"chown proxy: {private / 'memo'}" in problems[0]
        assert f"cannot write the log file (log_file) {private / 'helper.log'}" in problems[1]
        assert "Traceback" not in result.stderr
        chown_proxy(private)
        fixed = run("check", "--config", str(config))
        assert fixed.returncode == 0, fixed.stdout
        assert "proxy (Squid's user) can read the config and write the memo" in fixed.stdout
        config.chmod(0o600)
        unreadable = run("check", "--config", str(config))
        assert unreadable.returncode == 1 and f"proxy cannot read {config}" in unreadable.stdout


def test_check_piped_into_head_exits_quietly(tmp_path):
    config = write_config(tmp_path, {f"r{i}": {"mirrors": ["http://127.0.0.1:9/a/"]}
                                     for i in range(2000)})
    result = subprocess.run(f"{' '.join(helper_command())} check --config {config} "
                            f"--squid-user {current_user()} | head -1", shell=True,
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.endswith(": OK\n") and result.stderr == "", result.stderr


def test_helper_config_of_a_running_helpers_command_line():
    assert helper_config_of(["/opt/v/bin/squid-helper", "rewrite", "--config", "/a.yaml"]) == (
        "/a.yaml")
    assert helper_config_of(["/usr/bin/python3", "/opt/v/bin/squid-helper", "storeid",
                             "-c", "/b.yaml"]) == "/b.yaml"
    assert helper_config_of(["python", "-m", "squid_helper.cli", "rewrite",
                             "--config=/c.yaml"]) == "/c.yaml"
    assert helper_config_of(["/opt/v/bin/squid-helper", "rewrite"]) == (
        "/etc/squid-helper/repos.yaml")
    assert helper_config_of(["/opt/v/bin/squid-helper", "purge", "--config", "/a.yaml"]) is None
    assert helper_config_of(["vim", "rewrite", "--config", "/a.yaml"]) is None


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
    # (as root, proxy could not create the INI form's default memo here: not this test's point)
    result = run("check", "--config", str(old), "--squid-user", current_user())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"# {old} (the original repoproxy's INI form): OK\n")
    assert f"#   squid-helper check --config {old} > repos.yaml" in result.stdout
    # The whole output is the repos.yaml to move to: it loads to the same configuration.
    moved = tmp_path / "repos.yaml"
    moved.write_text(result.stdout)
    before, after = load_config(str(old)), load_config(str(moved))
    assert dataclasses.replace(before, path="") == dataclasses.replace(after, path="")
    assert after.repos["myrepo"].kind == "mirrorlist" and len(after.repos["koji"].templates) == 2
    again = run("check", "--config", str(moved), "--squid-user", current_user())
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
