"""Which user Squid runs its helpers as (its cache_effective_user), found rather than assumed.

Debian and Ubuntu build Squid with `--with-default-user=proxy`, EL and Fedora with
`--with-default-user=squid`; each package creates that user. The helpers, their config, memo
and log file must all be usable by it, so `serve` (which sets cache_effective_user), the
permission checks of `check` and the installers need the right name.

The order: an explicit choice (--user, --squid-user) if that user exists; else the build's
default from `squid -v`, if that user exists; else whichever of `proxy`/`squid` exists. The
pure part (parse_default_user, choose_squid_user) is separate from the I/O (running
`squid -v`, looking users up).
"""

from __future__ import annotations

import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

# The users the distributions' squid packages create: Debian/Ubuntu, then EL/Fedora.
CANDIDATE_USERS = ("proxy", "squid")
SQUID_LOCATIONS = ("/usr/sbin/squid", "/usr/local/sbin/squid", "/usr/local/squid/sbin/squid")
# `squid -v` repeats configure's options, each quoted by autoconf: '--with-default-user=proxy'.
# A hand-written configure line may have double quotes or none.
_DEFAULT_USER_RE = re.compile(r"""--with-default-user=["']?([A-Za-z_][A-Za-z0-9_.-]*)""")


class SquidUserError(Exception):
    """No usable user for Squid's helpers; the message says how to name one."""


@dataclass(frozen=True)
class SquidUser:
    name: str
    source: str  # how it was found, for messages: "--user", "squid -v", "the only candidate"


def parse_default_user(version_text: str) -> Optional[str]:
    """The --with-default-user of a `squid -v` output, or None (Squid then defaults to
    `nobody`, which no distribution uses for Squid)."""
    found = _DEFAULT_USER_RE.findall(version_text or "")
    return found[-1] if found else None  # configure honours the last one given


def choose_squid_user(exists: Callable[[str], bool], explicit: Optional[str] = None,
                      build_default: Optional[str] = None, squid: str = "squid",
                      option: str = "--user",
                      candidates: Sequence[str] = CANDIDATE_USERS) -> SquidUser:
    """Pick Squid's user. exists(name) says whether a user exists; squid and option only word
    the errors (the binary asked, the option that overrides)."""
    if explicit:
        if not exists(explicit):
            raise SquidUserError(f"there is no user {explicit!r} ({option} {explicit}); create "
                                 f"it, or name Squid's cache_effective_user with {option}")
        return SquidUser(explicit, option)
    if build_default and exists(build_default):
        return SquidUser(build_default, f"{squid} -v")
    present = [name for name in candidates if exists(name)]
    if len(present) == 1:
        return SquidUser(present[0], "the only one of " + "/".join(candidates) + " that exists")
    told = (f"{squid} -v names {build_default!r}, which does not exist" if build_default
            else f"{squid} -v does not name a default user (--with-default-user)")
    if not present:
        names = " or ".join(repr(name) for name in candidates)
        raise SquidUserError(
            f"no user {names} for Squid's helpers, and {told}: install Squid "
            "(apt-get install squid, or dnf install squid, creates it), or pass "
            f"{option} NAME")
    both = " and ".join(repr(name) for name in present)
    raise SquidUserError(f"users {both} both exist and {told}: pass {option} NAME to say "
                         "which one Squid runs as")


# -- I/O -----------------------------------------------------------------------------------------
def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def find_squid_binary() -> Optional[str]:
    """squid on PATH, else where the packages and a source build put it; None if absent."""
    found = shutil.which("squid")
    if found:
        return found
    return next((p for p in SQUID_LOCATIONS if Path(p).is_file()), None)


def squid_version_text(squid: Optional[str]) -> str:
    """`squid -v`, or "" when it cannot be run: detection then falls back to the users."""
    if not squid:
        return ""
    try:
        result = subprocess.run([squid, "-v"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout if result.returncode == 0 else ""


def detect_squid_user(explicit: Optional[str] = None, squid: Optional[str] = None,
                      option: str = "--user") -> SquidUser:
    """Squid's user on this host: explicit if given, else from `squid -v` of squid (default:
    the installed one), else the one of proxy/squid that exists."""
    if explicit:
        return choose_squid_user(user_exists, explicit=explicit, option=option)
    binary = squid or find_squid_binary()
    return choose_squid_user(user_exists, build_default=parse_default_user(
        squid_version_text(binary)), squid=binary or "squid", option=option)


if __name__ == "__main__":  # python -m squid_helper.ops.squiduser: the name, for install scripts
    import sys

    try:
        print(detect_squid_user(sys.argv[1] if len(sys.argv) > 1 else None).name)
    except SquidUserError as exc:
        print(f"squid-helper: {exc}", file=sys.stderr)
        sys.exit(1)
