"""Squid's user as this host's Squid names it, and `serve`/`check` refusing a user that does not
exist (the choice itself: tests/unit/test_squiduser.py)."""

from __future__ import annotations

import subprocess

from lab.helper import helper_command, write_config
from lab.mirrors import free_port
from squid_helper.ops.squiduser import (
    detect_squid_user,
    parse_default_user,
)

from conftest import require

# The start and the user option of this host's `squid -v` (Debian 12, Squid 5.7).


def test_this_hosts_squid_names_its_own_user():
    """On this Debian host the installed Squid says proxy; the detection asks it."""
    require("squid", root=False)
    version = subprocess.run(["squid", "-v"], capture_output=True, text=True, timeout=30).stdout
    assert detect_squid_user().name == parse_default_user(version) == "proxy"


def test_serve_refuses_a_user_that_does_not_exist(tmp_path):
    require("squid")
    config = write_config(tmp_path, {"test": {"mirrors": ["http://127.0.0.1:9/"]}})
    result = subprocess.run(
        [*helper_command(), "serve", "--config", str(config), "--user", "no-such-user",
         "--port", str(free_port()), "--accel-port", str(free_port()), "--dir",
         str(tmp_path / "serve")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "there is no user 'no-such-user' (--user no-such-user)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "serve").exists()  # refused before anything was written


def test_check_names_the_detected_user_and_takes_another(tmp_path):
    require("squid")
    config = write_config(tmp_path, {"test": {"mirrors": ["http://127.0.0.1:9/"]}})
    detected = subprocess.run([*helper_command(), "check", "--config", str(config)],
                              capture_output=True, text=True, timeout=60)
    # tmp_path is under a 0700 directory: proxy, the detected user, can write nothing there
    assert detected.returncode == 1
    assert f"PROBLEM: proxy cannot write the memo directory (cache_dir) {tmp_path / 'memo'}" in (
        detected.stdout)
    missing = subprocess.run([*helper_command(), "check", "--config", str(config),
                              "--squid-user", "no-such-user"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1
    assert ("PROBLEM: there is no user 'no-such-user' (--squid-user no-such-user)"
            in missing.stdout)
