"""Squid's user is found, not assumed: the build's default (`squid -v`), else whichever of
proxy/squid exists, and --user/--squid-user to say it."""

from __future__ import annotations

import pytest

from squid_helper.ops.squiduser import (
    SquidUserError,
    choose_squid_user,
    parse_default_user,
)

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
