"""Squid's user is found, not assumed: the build's default (`squid -v`), else whichever of
proxy/squid exists, and --user/--squid-user to say it."""

from __future__ import annotations

import subprocess

import pytest

from lab.helper import helper_command, write_config
from lab.mirrors import free_port
from squid_helper.ops.squiduser import (
    SquidUserError,
    choose_squid_user,
    detect_squid_user,
    parse_default_user,
)

from conftest import require

# The start and the user option of this host's `squid -v` (Debian 12, Squid 5.7).
DEBIAN_SQUID_V = """Squid Cache: Version 5.7
Service Name: squid
Debian linux
configure options:  '--build=x86_64-linux-gnu' '--prefix=/usr' '--with-logdir=/var/log/squid' \
'--with-pidfile=/run/squid.pid' '--with-filedescriptors=65536' '--with-large-files' \
'--with-default-user=proxy' '--disable-esi' '--enable-linux-netfilter' '--with-systemd'
"""
# EL 9 / Fedora build Squid with --with-default-user="squid" (their squid.spec); autoconf
# prints each option in single quotes, the shell having removed the double ones. Written in
# that form from the spec's configure line, abridged: not captured on an EL host.
EL_SQUID_V = """Squid Cache: Version 5.5
Service Name: squid

This binary uses OpenSSL 3.0.7 1 Nov 2022. For legal restrictions on distribution see \
https://www.openssl.org/source/license.html

configure options:  '--build=x86_64-redhat-linux-gnu' '--host=x86_64-redhat-linux-gnu' \
'--program-prefix=' '--prefix=/usr' '--exec-prefix=/usr' '--bindir=/usr/bin' \
'--sbindir=/usr/sbin' '--sysconfdir=/etc' '--datadir=/usr/share' '--libexecdir=/usr/lib64/squid' \
'--localstatedir=/var' '--with-logdir=/var/log/squid' '--with-pidfile=/run/squid.pid' \
'--disable-dependency-tracking' '--enable-eui' '--with-aio' '--with-default-user=squid' \
'--with-dl' '--with-openssl' '--with-pthreads' '--disable-arch-native' \
'--with-swapdir=/var/spool/squid'
"""


def users(*names: str):
    return lambda name: name in names


def test_the_builds_default_user_is_read_from_squid_v():
    assert parse_default_user(DEBIAN_SQUID_V) == "proxy"
    assert parse_default_user(EL_SQUID_V) == "squid"
    # a configure line typed by hand: double quotes, or none; the last one given counts
    assert parse_default_user("configure options: --with-default-user=\"cache\"") == "cache"
    assert parse_default_user("'--with-default-user=a' '--with-default-user=b_2'") == "b_2"
    # no option: Squid's compiled default is `nobody`, which tells nothing
    assert parse_default_user("Squid 6.6\nconfigure options: '--prefix=/usr'") is None
    assert parse_default_user("") is None


def test_the_builds_default_wins_when_that_user_exists():
    both = users("proxy", "squid")
    assert choose_squid_user(both, build_default="squid").name == "squid"
    assert choose_squid_user(both, build_default="proxy").name == "proxy"
    chosen = choose_squid_user(users("squid"), build_default="squid", squid="/usr/sbin/squid")
    assert chosen.source == "/usr/sbin/squid -v"


def test_without_a_usable_build_default_the_one_existing_candidate_is_taken():
    assert choose_squid_user(users("squid")).name == "squid"
    assert choose_squid_user(users("proxy", "other")).name == "proxy"
    # the build names a user that is not there (a copied binary): fall back to what exists
    assert choose_squid_user(users("squid"), build_default="proxy").name == "squid"


def test_ambiguity_or_absence_is_an_error_that_says_what_to_pass():
    with pytest.raises(SquidUserError, match=r"'proxy' and 'squid' both exist .*does not name a "
                       r"default user.*pass --user NAME"):
        choose_squid_user(users("proxy", "squid"))
    with pytest.raises(SquidUserError, match=r"no user 'proxy' or 'squid' for Squid's helpers.*"
                       r"dnf install squid.*pass --squid-user NAME"):
        choose_squid_user(users(), option="--squid-user")
    with pytest.raises(SquidUserError, match=r"names 'squid', which does not exist"):
        choose_squid_user(users(), build_default="squid")


def test_an_explicit_user_overrides_everything_but_must_exist():
    assert choose_squid_user(users("proxy", "squid", "cache"), explicit="cache",
                             build_default="squid").name == "cache"
    assert choose_squid_user(users("cache"), explicit="cache").source == "--user"
    with pytest.raises(SquidUserError, match=r"there is no user 'nosuch' \(--user nosuch\)"):
        choose_squid_user(users("proxy", "squid"), explicit="nosuch")


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
